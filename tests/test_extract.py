"""sa extract end to end: the cache group, resume after SIGKILL, --skip-bad, locks, dask, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sa.errors import SAError
from sa.extract import ImageSet, extract, load_backbone
from sa.extract.layers import LayerTaps

TINY = "timm:vit_tiny_patch16_224"
KW = dict(random_init=True, image_size=32, dtype="fp32", num_workers=0, progress=False)


def _make_images(folder: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40 + i % 5, 36, 3), dtype=np.uint8)).save(folder / f"im{i:03d}.png")
    return folder


@pytest.fixture
def images(tmp_path):
    return _make_images(tmp_path / "imgs", 20)


def _arrays(group) -> dict:
    return {name: group.read(name) for name in group.arrays}


def test_group_holds_every_layer_in_image_order_with_provenance(images, tmp_path):
    (g,) = extract(images, TINY, tmp_path / "cache", batch_size=6, **KW)
    ids = ImageSet.from_path(images).ids
    assert list(g.ids) == list(ids) and g.n_rows == 20
    assert g.layers("cls") == [f"{i:02d}" for i in range(13)] and "final" in g.arrays
    m = g.manifest
    assert m["status"] == "complete" and m["backbone"]["weights_digest"] == "random:0"
    assert m["key_spec"]["dtype"] == "fp32" and m["key_spec"]["image_size"] == 32 and m["key_spec"]["pools"] == ["cls", "mean"]
    assert "timm" in m["key_spec"]["libraries"] and m["layers"][1]["module"] == "blocks.0"
    assert m["layers"][0]["module"] == "blocks.0:input" and m["layers"][1]["depth"] == 0.0
    # rows equal a direct forward of the same images through the library model
    bb = load_backbone(TINY, random_init=True, image_size=32, dtype="fp32")
    from sa.extract.runner import decode_image

    x = torch.stack([bb.transform(decode_image(images / i)) for i in ids[:4]])
    with torch.inference_mode(), LayerTaps(bb.model, bb.plan, bb.embed, ("cls", "mean")) as taps:
        ref = taps.run(x)
    for name in ("cls/05", "mean/12", "final"):
        np.testing.assert_allclose(g.read(name, slice(0, 4)).astype(np.float32), ref[name].numpy(), rtol=2e-3, atol=2e-3)


def test_complete_group_is_not_recomputed_and_lock_holder_is_named(images, tmp_path):
    cache = tmp_path / "cache"
    (g,) = extract(images, TINY, cache, **KW)
    said = []
    import sa.extract.runner as runner

    real_load = runner.load_backbone

    def weightless_only(name, *, device, **kw):
        assert device == "meta", "a complete group must be recognised without loading weights"
        return real_load(name, device=device, **kw)

    runner.load_backbone = weightless_only
    try:
        (again,) = extract(images, TINY, cache, log=said.append, **KW)
    finally:
        runner.load_backbone = real_load
    assert again.key == g.key and "already complete" in said[0]
    from sa.cache import open_root

    root = open_root(cache)
    ids = list(ImageSet.from_path(images).ids)
    holder = root.create(g.image_set_id, "other-0123456789", ids, {"final": 4}, {}, lock=True)
    try:
        from sa.extract.runner import open_group_writer

        with pytest.raises(SAError, match=rf"pid {os.getpid()}.*--wait"):
            open_group_writer(root, g.image_set_id, "other-0123456789", ids, {"final": 4}, {}, 256, False, print)
    finally:
        holder.close()


def test_wait_reuses_the_group_another_writer_completes(images, tmp_path):
    import threading

    from sa.cache import open_root
    from sa.extract.runner import open_group_writer

    root = open_root(tmp_path / "cache")
    ids = list(ImageSet.from_path(images).ids)
    isid = "0123456789abcdef"
    holder = root.create(isid, "other-0123456789", ids, {"final": 4}, {}, block_rows=4, lock=True)
    values = np.arange(len(ids) * 4, dtype=np.float16).reshape(len(ids), 4)

    def finish_later():
        for b in holder.pending_blocks():
            holder.write_block(b, {"final": values[holder.block_rows_slice(b)]})
        holder.finalize()
        holder.close()

    said: list[str] = []
    timer = threading.Timer(1.0, finish_later)
    timer.start()
    try:
        got = open_group_writer(root, isid, "other-0123456789", ids, {"final": 4}, {}, 4, True, said.append)
    finally:
        timer.join()
    assert got is None and "waiting" in said[0]
    np.testing.assert_array_equal(root.open(f"{isid}/other-0123456789").read("final"), values)


def test_skip_bad_fills_nan_rows_without_shifting(images, tmp_path):
    (images / "im005.png").write_bytes(b"not a png")
    with pytest.raises(SAError, match=r"im005\.png.*--skip-bad"):
        extract(images, TINY, tmp_path / "c1", **KW)
    (g,) = extract(images, TINY, tmp_path / "c1", skip_bad=True, batch_size=4, **KW)
    assert g.manifest["skipped"] == ["im005.png"]
    final = g.read("final")
    assert np.isnan(final[5]).all() and not np.isnan(np.delete(final, 5, axis=0)).any()
    (images / "im005.png").unlink()
    (clean,) = extract(images, TINY, tmp_path / "c2", batch_size=4, **KW)
    rows = g.rows_for_ids(list(clean.ids))
    np.testing.assert_array_equal(g.read("mean/07")[np.sort(rows)], clean.read("mean/07"))


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from sa.cache.store import FeatureWriter
    from sa.extract import extract

    real = FeatureWriter.write_block
    written = []

    def write_then_die(self, b, data):
        real(self, b, data)
        written.append(b)
        if len(written) == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    if __name__ == "__main__":
        FeatureWriter.write_block = write_then_die
        extract(sys.argv[1], "timm:vit_tiny_patch16_224", sys.argv[2], random_init=True, image_size=32,
                dtype="fp32", num_workers=0, progress=False, batch_size=4, block_rows=4)
    """
)


def test_resume_after_sigkill_equals_an_uninterrupted_run(images, tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    cache = tmp_path / "killed"
    proc = subprocess.run([sys.executable, str(script), str(images), str(cache)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    from sa.cache import open_root

    root = open_root(cache)
    (info,) = root.list()
    assert info.status == "partial"
    said = []
    (resumed,) = extract(images, TINY, cache, batch_size=4, block_rows=4, log=said.append, **KW)
    assert any("resuming" in s and "3 of 5 blocks" in s for s in said)
    (whole,) = extract(images, TINY, tmp_path / "whole", batch_size=4, block_rows=4, **KW)
    assert resumed.key == whole.key
    a, b = _arrays(resumed), _arrays(whole)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert resumed.manifest["arrays"]["final"]["digest"] == whole.manifest["arrays"]["final"]["digest"]


def test_dask_local_cluster_writes_the_same_group(images, tmp_path):
    (local,) = extract(images, TINY, tmp_path / "local", batch_size=4, block_rows=4, **KW)
    (dist,) = extract(images, TINY, tmp_path / "dist", batch_size=4, block_rows=4, n_workers=2, **KW)
    assert dist.key == local.key and dist.manifest["status"] == "complete"
    a, b = _arrays(local), _arrays(dist)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_cli_extract_and_backbones(images, tmp_path):
    from typer.testing import CliRunner

    from sa.cli import app

    runner = CliRunner()
    args = ["extract", "-b", "torchvision:mobilenet_v2", "--images", str(images), "--cache", str(tmp_path / "c"),
            "--random-init", "--image-size", "32", "--dtype", "fp32", "--num-workers", "0", "--quiet", "--pool", "gap"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "20 images" in res.output
    res = runner.invoke(app, args[:7] + ["--random-init", "--pool", "cls"])
    assert res.exit_code == 2 and "--pool cls does not apply" in res.output
    res = runner.invoke(app, ["backbones", "dinov2-b", "clip-vit-b32"])
    assert res.exit_code == 0 and "dinov2-b" in res.output and "12" in res.output


# ---------------------------------------------------------------- bad input: one sentence, nothing created


def _cli(args: list[str]):
    from typer.testing import CliRunner

    from sa.cli import app

    return CliRunner().invoke(app, args)


def _base(images: Path, cache: Path, backbone: str = TINY) -> list[str]:
    return ["extract", "-b", backbone, "--images", str(images), "--cache", str(cache), "--dtype", "fp32",
            "--num-workers", "0", "--quiet"]


@pytest.mark.parametrize("size,words", [("-3", "is not a positive number of pixels"), ("0", "is not a positive number of pixels"),
                                        ("7", "does not fit timm:vit_tiny_patch16_224")])
def test_bad_image_size_is_one_sentence_before_anything_is_created(images, tmp_path, size, words):
    res = _cli(_base(images, tmp_path / "c") + ["--random-init", "--image-size", size])
    assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output
    assert not (tmp_path / "c").exists()


def test_num_workers_below_zero_is_refused_before_a_group_exists(images, tmp_path):
    res = _cli(_base(images, tmp_path / "c") + ["--random-init", "--image-size", "32", "--num-workers", "-1"])
    assert res.exit_code == 2 and "--num-workers -1 must be 0" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "c").exists()


def _not_state_dicts(folder: Path) -> list[tuple[Path, int, str]]:
    import pickle

    folder.mkdir()
    listed = folder / "list.pt"
    torch.save([torch.zeros(3), torch.ones(2)], listed)
    pickled = folder / "plain.pkl"
    pickled.write_bytes(pickle.dumps([1, 2, 3]))
    corrupt = folder / "corrupt.safetensors"
    corrupt.write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00{this is not the json header}")
    truncated = folder / "trunc.pth"
    torch.save({"w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    return [(listed, 2, "holds a list, not a state dict"), (pickled, 2, "is not a tensor checkpoint"),
            (corrupt, 1, "is not a readable safetensors file"), (truncated, 1, "damaged or truncated")]


@pytest.mark.parametrize("backbone", [TINY, "torchvision:mobilenet_v2:IMAGENET1K_V1"])
def test_weights_files_that_are_not_state_dicts_are_one_sentence(images, tmp_path, backbone):
    for k, (path, code, words) in enumerate(_not_state_dicts(tmp_path / "w")):
        cache = tmp_path / f"c{k}"
        res = _cli(_base(images, cache, backbone) + ["--weights", str(path), "--image-size", "32"])
        assert res.exit_code == code and words in res.output and path.name in res.output, res.output
        assert "Traceback" not in res.output and not cache.exists()


def test_transform_is_for_torchvision_only(images, tmp_path):
    res = _cli(_base(images, tmp_path / "c") + ["--random-init", "--transform", "IMAGENET1K_V1"])
    assert res.exit_code == 2 and "--transform applies to torchvision backbones only" in res.output


def test_a_full_disk_leaves_the_group_partial_and_says_how_much_it_needs(images, tmp_path, monkeypatch):
    import errno

    from sa.cache.store import FeatureWriter

    def disk_full(self, b, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "c" / "chunk"))

    monkeypatch.setattr(FeatureWriter, "write_block", disk_full)
    res = _cli(_base(images, tmp_path / "c") + ["--random-init", "--image-size", "32", "--batch-size", "4"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "No space left" in res.output and "this needs about" in res.output, res.output
    from sa.cache import open_root

    (info,) = open_root(tmp_path / "c").list()
    assert info.status == "partial"


EFBIG_SCRIPT = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (48_000, 48_000))
    from sa.cli import app
    sys.argv = ["sa", "extract", "-b", "torchvision:mobilenet_v2", "--random-init", "--images", sys.argv[1], "--cache",
                sys.argv[2], "--image-size", "32", "--dtype", "fp32", "--num-workers", "0", "--quiet"]
    app()
    """
)


def test_a_file_size_limit_leaves_the_group_partial_and_says_how_much_it_needs(images, tmp_path):
    script = tmp_path / "efbig.py"
    script.write_text(EFBIG_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(images), str(tmp_path / "c")], capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out[-3000:]
    assert "file-size limit" in out and "this needs about" in out
    from sa.cache import open_root

    (info,) = open_root(tmp_path / "c").list()
    assert info.status == "partial"


def test_batch_size_is_part_of_the_key(images, tmp_path):
    (a,) = extract(images, TINY, tmp_path / "c", batch_size=4, **KW)
    (b,) = extract(images, TINY, tmp_path / "c", batch_size=8, **KW)
    (again,) = extract(images, TINY, tmp_path / "c", batch_size=4, **KW)
    assert a.key != b.key and again.key == a.key
    assert a.manifest["key_spec"]["batch_size"] == 4 and b.manifest["batch_size"] == 8


def test_the_default_precision_is_fp32():
    from sa.extract.runner import resolve_dtype

    assert resolve_dtype("auto", torch.device("cpu")) == "fp32"
    assert resolve_dtype("auto", torch.device("cuda")) == "fp32"
    assert resolve_dtype("bf16", torch.device("cpu")) == "bf16"


def test_batch_size_auto_takes_the_largest_batch_that_fits():
    from sa.errors import SAError
    from sa.extract.runner import fit_batch_size

    tried = []
    assert fit_batch_size(lambda n: tried.append(n) or n <= 48) == 32 and tried == [256, 128, 64, 32]
    with pytest.raises(SAError, match="not even one image fits"):
        fit_batch_size(lambda n: False)


def test_batch_size_auto_off_cuda_is_the_default_and_shares_its_key(images, tmp_path):
    (explicit,) = extract(images, TINY, tmp_path / "c", batch_size=32, **KW)
    (auto,) = extract(images, TINY, tmp_path / "c", batch_size="auto", **KW)
    assert auto.key == explicit.key and auto.manifest["key_spec"]["batch_size"] == 32


@pytest.mark.parametrize("value", ["0", "-2", "lots", "2.5"])
def test_bad_batch_size_is_one_sentence_before_anything_is_created(images, tmp_path, value):
    res = _cli(_base(images, tmp_path / "c") + ["--random-init", "--image-size", "32", "--batch-size", value])
    assert res.exit_code == 2 and "--batch-size" in res.output and "or auto" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "c").exists()
