"""sa extract writes blocks in a background thread: same bytes, in order, bounded, and faults stay honest.

Oracles: the stored bytes are compared, through zarr's own reader, with a direct forward of the library model
rounded to float16 by numpy; the faults are real (a file-size limit the OS enforces, a real SIGINT), and what
counts as done is read back from the group's own block markers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sa.cache import open_root
from sa.cache.store import FeatureWriter
from sa.extract import ImageSet, extract, load_backbone
from sa.extract.layers import LayerTaps
from sa.extract.runner import decode_image, one_torch_thread

TINY = "timm:vit_tiny_patch16_224"
KW = dict(random_init=True, image_size=32, dtype="fp32", progress=False, batch_size=4, block_rows=4)
N_IMAGES, N_BLOCKS = 20, 5


@pytest.fixture
def images(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 255, (40 + i % 5, 36, 3), dtype=np.uint8)).save(folder / f"im{i:03d}.png")
    return folder


def _zarr_arrays(cache: Path, key: str) -> dict[str, np.ndarray]:
    """Every feature array of a group as zarr itself reads it (not through sa's reader)."""
    import zarr

    group = zarr.open_group(str(cache), path=key, mode="r")
    names = [n for n in open_root(cache).open(key).arrays]
    return {n: np.asarray(group[n][:]) for n in names}


def _done_blocks(cache: Path) -> set[int]:
    """The blocks the only group of `cache` has recorded done (its own markers)."""
    root = open_root(cache)
    (info,) = root.list()
    writer = root.open_writer(info.key)
    try:
        return writer.done_blocks()
    finally:
        writer.close()


def test_async_writes_store_the_bytes_of_a_direct_forward(images, tmp_path):
    (g,) = extract(images, TINY, tmp_path / "c", num_workers=1, **KW)  # decoded by a DataLoader worker
    stored = _zarr_arrays(tmp_path / "c", g.key)
    bb = load_backbone(TINY, random_init=True, image_size=32, dtype="fp32")
    ids = ImageSet.from_path(images).ids
    with torch.inference_mode(), LayerTaps(bb.model, bb.plan, bb.embed, ("cls", "mean")) as taps:
        rows = [taps.run(torch.stack([bb.transform(decode_image(images / i)) for i in ids[s:s + 4]]))
                for s in range(0, N_IMAGES, 4)]
    assert set(stored) == set(rows[0])
    for name, got in stored.items():
        want = np.concatenate([r[name].numpy() for r in rows]).astype(np.float16)  # numpy's rounding
        assert got.dtype == np.float16 and np.array_equal(got.view(np.uint16), want.view(np.uint16)), name


def test_blocks_are_written_behind_the_forward_in_order_one_at_a_time_and_at_most_three_ahead(images, tmp_path, monkeypatch):
    real_write, real_run = FeatureWriter.write_block, LayerTaps.run
    writes: list[tuple[int, str, float, float]] = []
    forwards: list[tuple[float, int]] = []  # (time, writes finished) at each forward of a full batch
    active = []

    def slow_write(self, b, data):
        active.append(b)
        assert len(active) == 1, active  # never two writers at once
        start = time.perf_counter()
        time.sleep(0.3)
        real_write(self, b, data)
        writes.append((b, threading.current_thread().name, start, time.perf_counter()))
        active.remove(b)

    def run(self, x):
        if x.shape[0] == 4:  # not the one-image probe of the widths
            forwards.append((time.perf_counter(), len(writes)))
        return real_run(self, x)

    monkeypatch.setattr(FeatureWriter, "write_block", slow_write)
    monkeypatch.setattr(LayerTaps, "run", run)
    (g,) = extract(images, TINY, tmp_path / "c", num_workers=0, **KW)
    assert g.manifest["status"] == "complete"
    assert [w[0] for w in writes] == list(range(N_BLOCKS))
    assert {w[1] for w in writes} == {"sa-block-writer"}
    assert any(start < t < end for t, _ in forwards for _, _, start, end in writes)  # the forward went on meanwhile
    ahead = [k - done for k, (_, done) in enumerate(forwards)]  # blocks filled but not yet written
    # one being written, one waiting, and the batch whose forward is queued before the previous batch lands
    # (so a GPU computes while the host stores): never more
    assert max(ahead) == 3


EFBIG_SCRIPT = textwrap.dedent(
    """
    import resource, signal, sys
    import sa.extract.runner as runner
    from sa.cache.store import FeatureWriter

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    runner.aligned_block_rows = lambda batch_size, target=0: 4  # 5 blocks of 4 images
    real = FeatureWriter.write_block

    def write(self, b, data):
        real(self, b, data)
        if b == 1:  # from now on the OS refuses to grow any file past 64 bytes
            resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    FeatureWriter.write_block = write
    sys.argv = ["sa", "extract", "-b", "timm:vit_tiny_patch16_224", "--random-init", "--images", sys.argv[1],
                "--cache", sys.argv[2], "--image-size", "32", "--dtype", "fp32", "--batch-size", "4",
                "--num-workers", "0", "--quiet"]
    from sa.cli import main
    main()
    """
)


def _run_script(script: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "script.py"
    path.write_text(script)
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "COLUMNS": "200"})


def _error_line(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


def _resume_writes_exactly(images: Path, cache: Path, tmp_path: Path, monkeypatch, left: list[int]) -> None:
    """Rerun in this process: only the blocks in `left` are written, and the group equals an uninterrupted one."""
    real = FeatureWriter.write_block
    written: list[int] = []

    def record(self, b, data):
        real(self, b, data)
        written.append(b)

    said: list[str] = []
    with monkeypatch.context() as m:
        m.setattr(FeatureWriter, "write_block", record)
        (resumed,) = extract(images, TINY, cache, num_workers=0, log=said.append, **KW)
    assert written == left
    assert any(f"resuming {resumed.key} at {len(left)} of {N_BLOCKS} blocks left" in s for s in said), said
    (whole,) = extract(images, TINY, tmp_path / "whole", num_workers=0, **KW)
    assert resumed.key == whole.key and open_root(cache).verify(resumed.key, progress=False) == []
    a, b = _zarr_arrays(cache, resumed.key), _zarr_arrays(tmp_path / "whole", whole.key)
    assert all(np.array_equal(a[k].view(np.uint16), b[k].view(np.uint16)) for k in b)


def test_a_write_failing_in_the_writer_thread_is_one_sentence_and_the_rerun_redoes_exactly_the_rest(images, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    proc = _run_script(EFBIG_SCRIPT, tmp_path, str(images), str(cache))
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    line = _error_line(proc)
    assert "file-size limit (ulimit -f) while writing" in line and "resumes where it stopped" in line, line
    (info,) = open_root(cache).list()
    assert info.status == "partial"
    assert _done_blocks(cache) == {0, 1}  # blocks 2.. failed or were dropped: none is recorded done
    _resume_writes_exactly(images, cache, tmp_path, monkeypatch, [2, 3, 4])


CTRL_C_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    import sa.extract.runner as runner
    from sa.cache.store import FeatureWriter

    runner.aligned_block_rows = lambda batch_size, target=0: 4  # 5 blocks of 4 images
    real = FeatureWriter.write_block
    log = open(sys.argv[3], "a")

    def write(self, b, data):
        if b == 2:  # Ctrl-C arrives while block 2 is being written and block 3 waits in the queue
            time.sleep(0.5)  # the forward meanwhile queues block 3 and waits to queue block 4
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        real(self, b, data)
        log.write(f"{b}\\n")
        log.flush()

    FeatureWriter.write_block = write
    sys.argv = ["sa", "extract", "-b", "timm:vit_tiny_patch16_224", "--random-init", "--images", sys.argv[1],
                "--cache", sys.argv[2], "--image-size", "32", "--dtype", "fp32", "--batch-size", "4",
                "--num-workers", "0", "--quiet"]
    from sa.cli import main
    main()
    """
)


def test_ctrl_c_waits_for_the_block_being_written_and_marks_nothing_else_done(images, tmp_path, monkeypatch):
    cache, log = tmp_path / "c", tmp_path / "written.txt"
    proc = _run_script(CTRL_C_SCRIPT, tmp_path, str(images), str(cache), str(log))
    assert proc.returncode == 130, (proc.stdout + proc.stderr)[-3000:]
    assert "Interrupted: what was finished is kept" in _error_line(proc)
    finished = {int(x) for x in log.read_text().split()}
    assert finished == {0, 1, 2}  # the block being written was finished; the queued one was dropped
    assert _done_blocks(cache) == finished
    (info,) = open_root(cache).list()
    assert info.status == "partial" and not (cache / info.key / "writer.lock").exists()
    _resume_writes_exactly(images, cache, tmp_path, monkeypatch, [3, 4])


def test_in_process_decoding_runs_on_one_torch_thread_and_restores_the_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(ValueError):
            with one_torch_thread():
                assert torch.get_num_threads() == 1
                raise ValueError("a transform failed")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
