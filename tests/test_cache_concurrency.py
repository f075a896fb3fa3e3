"""Crash resume, concurrent block writers and the writer lock, with real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support_cache import BKEY, BLOCK, ISET, N, WIDTHS, full_data, ids, write_group

from sa.cache import GroupLocked, open_root

SCRIPT = str(Path(__file__).with_name("support_cache.py"))
KEY = f"{ISET}/{BKEY}"


def _spawn(*args: str) -> subprocess.Popen:
    """Run the writer script with `args`, stdout piped line by line."""
    return subprocess.Popen([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _chunk_mtimes(root_dir: Path, block: int) -> dict[str, int]:
    """mtime_ns of every array's chunk file of `block`."""
    return {name: (root_dir / ISET / BKEY / name / "c" / str(block) / "0").stat().st_mtime_ns for name in WIDTHS}


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    proc = _spawn(str(tmp_path / "a"), "slow")
    written = []
    for line in proc.stdout:
        written.append(int(line.split()[1]))
        if len(written) == 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=30)
    root = open_root(tmp_path / "a")
    assert root.status(KEY) == "partial"
    writer = root.create(ISET, BKEY, ids(), WIDTHS, {}, block_rows=BLOCK)  # the dead writer's lock is stale
    done = writer.done_blocks()
    assert set(written) <= done and len(done) < writer.n_blocks
    before = {b: _chunk_mtimes(tmp_path / "a", b) for b in done}
    writer.close()
    resumed = write_group(root)
    assert {b: _chunk_mtimes(tmp_path / "a", b) for b in done} == before  # finished blocks were not rewritten
    clean = write_group(open_root(tmp_path / "b"))
    assert resumed.manifest["arrays"] == clean.manifest["arrays"]
    for name, arr in full_data().items():
        np.testing.assert_array_equal(resumed.read(name), arr)


def test_two_processes_writing_disjoint_blocks_lose_nothing(tmp_path):
    root = open_root(tmp_path)
    writer = root.create(ISET, BKEY, ids(), WIDTHS, {}, block_rows=BLOCK)
    procs = [_spawn(str(tmp_path), "blocks", *map(str, range(k, writer.n_blocks, 2))) for k in (0, 1)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert writer.pending_blocks() == []
    group = writer.finalize()
    for name, arr in full_data().items():
        np.testing.assert_array_equal(group.read(name), arr)
    assert root.verify(KEY, progress=False) == []


def test_second_process_gets_group_locked(tmp_path):
    root = open_root(tmp_path)
    writer = root.create(ISET, BKEY, ids(), WIDTHS, {}, block_rows=BLOCK)
    out, err = _spawn(str(tmp_path), "trylock").communicate(timeout=60)
    assert out.startswith("GroupLocked:") and f"pid {os.getpid()}" in out and "since" in out, (out, err)
    writer.close()
    out, err = _spawn(str(tmp_path), "trylock").communicate(timeout=60)
    assert out.strip() == "acquired", err


def test_lost_lock_stops_the_writer(tmp_path):
    root = open_root(tmp_path)
    writer = root.create(ISET, BKEY, ids(), WIDTHS, {}, block_rows=BLOCK)
    (tmp_path / ISET / BKEY / "writer.lock").unlink()
    with pytest.raises(GroupLocked, match="lost the writer lock"):
        writer.write_block(0, {n: np.zeros((BLOCK, w), np.float16) for n, w in WIDTHS.items()})
    assert writer.done_blocks() == set() and N > BLOCK


def test_lock_staleness_and_heartbeat(tmp_path):
    import json
    import socket

    import fsspec

    from sa.cache.lock import WriterLock

    fs = fsspec.filesystem("file")
    (tmp_path / "g").mkdir()
    lock = WriterLock(fs, str(tmp_path / "g"), "g", stale_after=0.4)
    old = time.time() - 3600
    # a live process on this host is never stale, however long since its last refresh
    assert not lock.is_stale({"host": socket.gethostname(), "pid": os.getpid(), "refreshed": old})
    # a holder on another host is stale once it stops refreshing
    assert lock.is_stale({"host": "elsewhere", "pid": 1, "refreshed": old})
    assert not lock.is_stale({"host": "elsewhere", "pid": 1, "refreshed": time.time()})
    lock.acquire()
    try:
        first = json.loads(fs.cat_file(lock.path))["refreshed"]
        time.sleep(0.6)
        assert json.loads(fs.cat_file(lock.path))["refreshed"] > first  # the heartbeat kept it fresh
    finally:
        lock.release()
    assert not fs.exists(lock.path)
