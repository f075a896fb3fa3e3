"""Sharing a cache across a lab: HTTP read-only roots, read-only local roots, push/pull with resume, the lab index."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support_share import ISET, N, bkey, full_data, http_server, ids, make_group, tree_snapshot
from typer.testing import CliRunner

from sa.cache import open_root
from sa.cache.index import INDEX_NAME, read_index
from sa.cache.share import copy_group, pull, push
from sa.cli import app
from sa.errors import SAError

SCRIPT = str(Path(__file__).with_name("support_share.py"))
KEY = f"{ISET}/{bkey(0)}"


def run(*args: str):
    """`sa cache ARGS` through typer's CliRunner."""
    return CliRunner().invoke(app, ["cache", *args])


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A local cache root holding one complete group (group 0)."""
    monkeypatch.setenv("COLUMNS", "200")
    root = open_root(tmp_path / "lab")
    make_group(root, 0)
    return tmp_path / "lab"


def _digests(root, key: str = KEY) -> dict:
    return {n: m["digest"] for n, m in root.open(key).manifest["arrays"].items()}


# -- HTTP -------------------------------------------------------------------------------------
def test_http_root_reads_ls_info_verify_and_training_rows_without_listing(lab):
    with http_server(lab) as (url, requests):
        root = open_root(url)
        assert root.read_only
        assert [i.key for i in root.list()] == [KEY]
        group = root.open(bkey(0))  # a backbone key resolves through the index
        for name, arr in full_data().items():
            np.testing.assert_array_equal(group.read(name), arr)
        want = ids()[5:300:7]
        rows = group.rows_for_ids(want)
        np.testing.assert_array_equal(group.read("mean/01", rows), full_data()["mean/01"][5:300:7])
        assert root.verify(KEY, progress=False) == []
        res = run("ls", url)
        assert res.exit_code == 0 and bkey(0) in res.output and "complete" in res.output, res.output
        res = run("info", KEY, "--cache", url, "--json")
        assert res.exit_code == 0 and json.loads(res.output)["arrays"]["final"]["digest"].startswith("sha256:")
        res = run("verify", "--cache", url)
        assert res.exit_code == 0 and "ok" in res.output, res.output
        # every request named a file: no directory listing was needed
        assert requests and all(not p.endswith("/") and (lab / p.lstrip("/")).is_file() for p in requests), requests
        for write in (lambda: root.remove(KEY), lambda: make_group(root, 1), lambda: root.open_writer(KEY)):
            with pytest.raises(SAError, match="served over HTTP, which is read-only"):
                write()


def test_http_root_without_index_reads_full_keys_and_explains_ls(lab):
    (lab / INDEX_NAME).unlink()
    with http_server(lab) as (url, _):
        root = open_root(url)
        np.testing.assert_array_equal(root.open(KEY).read("final"), full_data()["final"])
        with pytest.raises(SAError, match="reindex"):
            root.list()
    with http_server(lab / ISET) as (url, _):
        with pytest.raises(SAError, match="not a feature cache root"):
            open_root(url).list()


def test_http_verify_names_a_corrupted_array(lab):
    chunk = lab / ISET / bkey(0) / "cls" / "01" / "c" / "2" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[10] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with http_server(lab) as (url, _):
        assert open_root(url).verify(KEY, progress=False) == ["cls/01"]
        res = run("verify", KEY, "--cache", url)
        assert res.exit_code == 1 and "cls/01" in res.output


def test_missing_fsspec_package_names_the_extra(monkeypatch):
    import fsspec.core

    def no_gcsfs(url, **kw):
        raise ImportError("Install gcsfs to access Google Storage")

    monkeypatch.setattr(fsspec.core, "url_to_fs", no_gcsfs)
    with pytest.raises(SAError, match=r"gcsfs.*pip install 'sa\[gcs\]'"):
        open_root("gs://lab-bucket/features")


# -- read-only local roots ----------------------------------------------------------------------
def _chmod_tree(path: Path, writable: bool) -> None:
    """Add or remove write permission on every file and folder under `path`."""
    for p in [path, *path.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_read_only_local_root_reads_and_refuses_every_write(lab, tmp_path):
    other = open_root(tmp_path / "other")
    make_group(other, 1, seed=1)
    h5 = tmp_path / "g1.h5"
    from sa.cache.export import export_group, import_group

    export_group(other, bkey(1), h5, progress=False)
    _chmod_tree(lab, writable=False)
    try:
        before = tree_snapshot(lab)
        root = open_root(lab, read_only=True)
        assert [i.key for i in root.list()] == [KEY] and root.info(KEY).status == "complete"
        np.testing.assert_array_equal(root.open(KEY).read("mean/00", slice(3, 200)), full_data()["mean/00"][3:200])
        assert root.verify(KEY, progress=False) == []
        assert run("ls", str(lab)).exit_code == 0 and run("verify", "--cache", str(lab)).exit_code == 0
        writes = {
            "create": lambda: make_group(root, 2),
            "open_writer": lambda: root.open_writer(KEY),
            "remove": lambda: root.remove(KEY),
            "reindex": lambda: __import__("sa.cache.index", fromlist=["rebuild"]).rebuild(root),
            "copy into": lambda: copy_group(other, root, bkey(1), progress=False),
            "import": lambda: import_group(h5, root, progress=False),
        }
        for what, write in writes.items():
            with pytest.raises(SAError, match="read-only"):
                write()
        assert tree_snapshot(lab) == before  # nothing was written, not even a lock or index
    finally:
        _chmod_tree(lab, writable=True)


# -- push / pull ---------------------------------------------------------------------------------
def test_push_then_pull_roundtrip_and_refusals(lab, tmp_path):
    shared, mine = tmp_path / "shared", tmp_path / "mine"
    report = push(bkey(0), shared, root=lab, progress=False)
    assert report.copied == report.files and report.skipped == 0 and report.nbytes > 0
    assert open_root(shared).status(KEY) == "complete"
    assert list(read_index(open_root(shared))) == [KEY]
    assert push(bkey(0), shared, root=lab, progress=False).already_complete
    pull(bkey(0), shared, root=mine, progress=False)
    assert _digests(open_root(mine)) == _digests(open_root(lab))
    assert not list((mine / ISET / bkey(0)).rglob(".sa-tmp-*")) and not (mine / ISET / bkey(0) / "writer.lock").exists()
    assert (mine / ISET / bkey(0) / "zarr.json").read_bytes() == (lab / ISET / bkey(0) / "zarr.json").read_bytes()
    # a partial source is refused
    make_group(open_root(lab), 3, finalize=False).close()
    with pytest.raises(SAError, match="partial"):
        push(bkey(3), shared, root=lab, progress=False)
    # a destination holding different data under the same key is refused
    conflict = open_root(tmp_path / "conflict")
    make_group(conflict, 0, seed=9)
    with pytest.raises(SAError, match="different data"):
        push(bkey(0), conflict, root=lab, progress=False)


def test_push_pull_reindex_cli(lab, tmp_path):
    shared = tmp_path / "shared"
    res = run("push", bkey(0), str(shared), "--cache", str(lab))
    assert res.exit_code == 0 and "digests verified" in res.output, res.output
    res = run("pull", KEY, str(shared), "--cache", str(tmp_path / "mine"))
    assert res.exit_code == 0 and "Pulled" in res.output, res.output
    (shared / INDEX_NAME).unlink()
    res = run("reindex", str(shared))
    assert res.exit_code == 0 and "1 complete group" in res.output
    assert list(read_index(open_root(shared))) == [KEY]
    res = run("push", bkey(0), "http://127.0.0.1:9/cache", "--cache", str(lab))
    assert res.exit_code == 2 and "read-only" in res.output


class Interrupt(Exception):
    pass


def test_interrupted_pull_over_http_resumes_and_never_looks_complete(lab, tmp_path):
    dest = open_root(tmp_path / "mine")
    seen = []

    def stop_after_12(rel: str) -> None:
        seen.append(rel)
        assert dest.status(KEY) == "partial"
        if len(seen) == 12:
            raise Interrupt

    with http_server(lab) as (url, _):
        with pytest.raises(Interrupt):
            pull(KEY, url, root=dest, progress=False, on_file=stop_after_12)
        assert dest.status(KEY) == "partial"
        with pytest.raises(SAError, match="still being copied"):
            dest.open(KEY)
        assert read_index(dest) is None or KEY not in read_index(dest)
        assert KEY not in [i.key for i in dest.list() if i.status == "complete"]
        # a torn file (wrong size) is fetched again; a same-size corrupt one is caught by the digests
        group_dir = tmp_path / "mine" / ISET / bkey(0)
        chunks = sorted(p for p in group_dir.rglob("c/*/0"))
        chunks[0].write_bytes(chunks[0].read_bytes()[:-5])
        torn = chunks[0].relative_to(group_dir).as_posix()
        fetched: list[str] = []
        report = pull(KEY, url, root=dest, progress=False, on_file=fetched.append)
    assert report.skipped >= 5 and report.copied < report.files
    assert torn in fetched and len(fetched) < report.files  # the torn chunk was fetched again, whole files skipped
    assert _digests(dest) == _digests(open_root(lab))
    for name, arr in full_data().items():
        np.testing.assert_array_equal(dest.open(KEY).read(name), arr)
    assert KEY in read_index(dest)


def test_copy_with_a_corrupted_file_stays_partial_then_recovers(lab, tmp_path):
    dest = open_root(tmp_path / "mine")
    def stop_at_a_late_chunk(rel: str) -> None:
        if rel.endswith("c/4/0"):
            raise Interrupt

    with pytest.raises(Interrupt):
        copy_group(lab, dest, KEY, progress=False, on_file=stop_at_a_late_chunk)
    copied = [p for p in (tmp_path / "mine" / ISET / bkey(0)).rglob("c/*/0")]
    bad = copied[0]
    raw = bytearray(bad.read_bytes())
    raw[0] ^= 0xFF
    bad.write_bytes(bytes(raw))  # same size, so the resume trusts it; the digest check must not
    with pytest.raises(SAError, match=r"did not match its digest \(digest differs\) in what .* an earlier run copied"):
        copy_group(lab, dest, KEY, progress=False)
    assert dest.status(KEY) == "partial"
    copy_group(lab, dest, KEY, progress=False)
    assert dest.status(KEY) == "complete" and dest.verify(KEY, progress=False) == []


# -- the lab index -------------------------------------------------------------------------------
def test_index_follows_finalize_and_remove_and_reindex(lab):
    root = open_root(lab)
    make_group(root, 1, seed=1)
    entries = read_index(root)
    assert sorted(entries) == [KEY, f"{ISET}/{bkey(1)}"]
    assert entries[KEY]["n"] == N and entries[KEY]["layers"] == ["00", "01"] and entries[KEY]["nbytes"] > 0
    root.remove(bkey(1))
    assert list(read_index(root)) == [KEY]
    (lab / INDEX_NAME).write_text("{not json")
    with pytest.raises(SAError, match="reindex"):
        read_index(root)
    from sa.cache.index import rebuild

    assert [i.key for i in rebuild(root).complete] == [KEY] and rebuild(root).damaged == []
    assert list(read_index(root)) == [KEY]


def test_concurrent_completions_in_two_processes_lose_no_index_entry(tmp_path):
    root_dir = tmp_path / "lab"
    procs = [subprocess.Popen([sys.executable, SCRIPT, str(root_dir), "groups", str(a), str(a + 4)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in (0, 4)]
    reader, seen = open_root(root_dir, read_only=True), set()
    while any(p.poll() is None for p in procs):  # a reader meanwhile always sees a whole index that only grows
        if (root_dir / INDEX_NAME).exists():
            keys = set(read_index(reader))
            assert keys >= seen
            seen = keys
        time.sleep(0.01)
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "done" in out, err
    entries = read_index(open_root(root_dir))
    assert sorted(entries) == [f"{ISET}/{bkey(i)}" for i in range(8)]
    assert not (root_dir / "sa-index.lock").exists()


# -- two people starting the same backbone ---------------------------------------------------------
def test_second_process_waits_for_the_first_and_reuses_its_group(tmp_path):
    from sa.cache import GroupLocked, wait_for_complete

    root_dir = tmp_path / "lab"
    gate = tmp_path / "go"
    first = subprocess.Popen([sys.executable, SCRIPT, str(root_dir), "slow", "0", "0.05", str(gate)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert first.stdout.readline().startswith("wrote")
    second = subprocess.Popen([sys.executable, SCRIPT, str(root_dir), "wait", "0", "60"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert second.stdout.readline().strip() == "locked, waiting"  # the first still holds the lock here
    assert open_root(root_dir).status(KEY) == "partial"
    gate.touch()  # let the first finish
    out2, err2 = second.communicate(timeout=90)
    out1, err1 = first.communicate(timeout=90)
    assert first.returncode == 0 and "finalized" in out1, err1
    assert second.returncode == 0 and "extracted" not in out2, err2
    root = open_root(root_dir)
    assert out2.strip().splitlines()[-1] == f"reused {root.open(KEY).digest('final')}"
    with pytest.raises(GroupLocked):  # sanity: a held lock makes create fail at once
        writer = make_group(root, 5, finalize=False)
        make_group(open_root(root_dir), 5)
    assert wait_for_complete(root, KEY, timeout=1, poll=0.05).key == KEY
    writer.close()


def test_wait_for_complete_gives_up_on_a_dead_writer_and_on_timeout(tmp_path):
    from sa.cache import WriterGone, wait_for_complete

    root_dir = tmp_path / "lab"
    proc = subprocess.run([sys.executable, SCRIPT, str(root_dir), "die", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    root = open_root(root_dir)
    assert (root_dir / ISET / bkey(0) / "writer.lock").exists() and root.status(KEY) == "partial"
    with pytest.raises(WriterGone, match="resume"):
        wait_for_complete(root, KEY, timeout=10, poll=0.05)
    writer = make_group(root, 1, finalize=False)  # our own live lock: not gone, so it times out
    try:
        with pytest.raises(SAError, match="still partial after waiting"):
            wait_for_complete(root, f"{ISET}/{bkey(1)}", timeout=0.3, poll=0.05)
    finally:
        writer.close()
