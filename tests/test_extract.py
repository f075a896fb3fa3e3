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
            "--random-init", "--image-size", "32", "--dtype", "fp32", "--num-workers", "0", "--no-progress", "--pool", "gap"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "20 images" in res.output
    res = runner.invoke(app, args[:7] + ["--random-init", "--pool", "cls"])
    assert res.exit_code == 2 and "--pool cls does not apply" in res.output
    res = runner.invoke(app, ["backbones", "dinov2-b", "clip-vit-b32"])
    assert res.exit_code == 0 and "dinov2-b" in res.output and "12" in res.output
