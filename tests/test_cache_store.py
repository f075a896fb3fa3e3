"""Round trips, reading, listing and the clear errors of the cache API (local and memory:// roots)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from support_cache import BKEY, BLOCK, ISET, N, WIDTHS, block_data, full_data, ids, write_group

from sa.cache import GroupLocked, open_root
from sa.errors import SAError

KEY = f"{ISET}/{BKEY}"


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path):
    """A fresh cache root on disk or in fsspec's memory filesystem."""
    if request.param == "local":
        yield open_root(tmp_path / "cache")
        return
    url = f"memory://sa-test-{uuid.uuid4().hex}"
    yield open_root(url)
    import fsspec

    fsspec.filesystem("memory").rm(url.replace("memory://", "/"), recursive=True)


def test_round_trip_shapes_dtypes_and_values(root):
    group = write_group(root)
    expected = full_data()
    assert root.status(KEY) == "complete" and group.n_rows == N and N % BLOCK
    assert group.arrays == ["cls/01", "mean/00", "mean/01", "final"]
    assert group.layers("mean") == ["00", "01"] and group.layers("cls") == ["01"]
    assert list(group.ids) == ids()
    for name, arr in expected.items():
        got = group.read(name)
        assert got.dtype == np.float16 and got.shape == (N, WIDTHS[name])
        np.testing.assert_array_equal(got, arr)
    np.testing.assert_array_equal(group.read("cls/01", slice(100, 300)), expected["cls/01"][100:300])
    np.testing.assert_array_equal(group.read("mean/00", slice(650, None)), expected["mean/00"][650:])
    rows = np.array([699, 0, 5, 5, 400])
    np.testing.assert_array_equal(group.read("final", rows), expected["final"][rows])
    np.testing.assert_array_equal(group.read("final", np.arange(0, N, 97)), expected["final"][::97])
    mask = np.zeros(N, bool)
    mask[[3, 600]] = True
    np.testing.assert_array_equal(group.read("mean/01", mask), expected["mean/01"][[3, 600]])
    lazy = group.dask("cls/01")
    assert lazy.chunks[0][0] == BLOCK
    np.testing.assert_array_equal(lazy[10:20].compute(), expected["cls/01"][10:20])
    assert set(group.lazy("mean")) == {"mean/00", "mean/01"}


def test_manifest_has_provenance_and_digests(root):
    manifest = write_group(root).manifest
    assert manifest["status"] == "complete" and manifest["n"] == N and manifest["dtype"] == "float16"
    assert manifest["backbone"] == {"name": "tiny"} and manifest["pools"] == ["cls", "mean"]
    assert set(manifest["arrays"]) == {"ids", *WIDTHS}
    assert all(a["digest"].startswith("sha256:") for a in manifest["arrays"].values())
    assert {"time", "host", "user"} <= set(manifest["created"]) and "zarr" in manifest["libraries"]


def test_rows_for_ids_and_missing_ids(root):
    group = write_group(root)
    np.testing.assert_array_equal(group.rows_for_ids([ids()[7], ids()[0]]), [7, 0])
    with pytest.raises(SAError, match="1 image id.*'nope.jpg'"):
        group.rows_for_ids([ids()[1], "nope.jpg"])


def test_partial_group_is_refused_with_resume_hint(root):
    write_group(root, blocks=[0, 2], finalize=False).close()
    assert root.status(KEY) == "partial"
    with pytest.raises(SAError, match=r"partial \(2 of 6 blocks.*resume"):
        root.open(KEY)
    writer = root.create(ISET, BKEY, ids(), WIDTHS, {}, block_rows=BLOCK)
    assert writer.done_blocks() == {0, 2} and writer.pending_blocks() == [1, 3, 4, 5]
    with pytest.raises(SAError, match="4 of 6 blocks are not written"):
        writer.finalize()
    writer.close()


def test_create_refuses_complete_and_mismatched_groups(root):
    write_group(root, blocks=[0], finalize=False).close()
    with pytest.raises(SAError, match="other images, arrays or block size"):
        root.create(ISET, BKEY, ids()[::-1], WIDTHS, {}, block_rows=BLOCK)
    write_group(root)
    with pytest.raises(SAError, match="already complete"):
        root.create(ISET, BKEY, ids(), WIDTHS, {}, block_rows=BLOCK)


def test_write_block_checks_shapes_and_names(root):
    writer = root.create(ISET, BKEY, ids(), WIDTHS, {}, block_rows=BLOCK)
    data = block_data(5)
    assert data["final"].shape[0] == N - 5 * BLOCK
    with pytest.raises(SAError, match="must be"):
        writer.write_block(4, data)
    with pytest.raises(SAError, match="missing"):
        writer.write_block(5, {"final": data["final"]})
    with pytest.raises(SAError, match="out of range"):
        writer.write_block(6, data)
    writer.close()


def test_lock_in_process_and_bad_array_names(root):
    writer = root.create(ISET, BKEY, ids(), WIDTHS, {}, block_rows=BLOCK)
    with pytest.raises(GroupLocked, match=r"being written by pid \d+ on host"):
        root.create(ISET, BKEY, ids(), WIDTHS, {}, block_rows=BLOCK)
    with pytest.raises(GroupLocked):
        root.remove(KEY)
    writer.close()
    with pytest.raises(SAError, match="'pool/label'|<pool>/<label>"):
        root.create(ISET, "other-0000000000", ids(), {"max/01": 4}, {})


def test_resolve_list_and_remove(root):
    write_group(root)
    assert root.resolve(BKEY) == KEY and root.resolve("tiny-01") == KEY and root.resolve(ISET[:6]) == KEY
    with pytest.raises(SAError, match="did you mean 'tiny-0123456789'"):
        root.resolve("tinny")
    [info] = root.list()
    assert (info.key, info.n, info.status, info.layers, info.pools) == (KEY, N, "complete", ["00", "01"], ["cls", "mean"])
    assert info.nbytes >= N * sum(WIDTHS.values()) * 2
    root.remove(BKEY)
    assert root.list() == [] and root.status(KEY) == "missing"


def test_read_only_root_reads_but_never_writes(tmp_path):
    write_group(open_root(tmp_path))
    ro = open_root(tmp_path, read_only=True)
    assert ro.open(BKEY).read("final").shape == (N, 64)
    with pytest.raises(SAError, match="read-only"):
        ro.remove(BKEY)
    with pytest.raises(SAError, match="read-only"):
        ro.create(ISET, "x-0000000000", ids(), WIDTHS, {})


def test_paths_that_are_not_caches(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(SAError, match="is not a feature cache"):
        open_root(tmp_path / "notes").list()
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(SAError, match="is a file, not a feature cache"):
        open_root(tmp_path / "file.bin").list()
    with pytest.raises(SAError, match="cannot write to cache root"):
        write_group(open_root(tmp_path / "file.bin" / "sub"))
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me" and (tmp_path / "file.bin").read_bytes() == b"x"
    write_group(open_root(tmp_path / "c"))
    with pytest.raises(SAError, match="one cache group, not a cache root"):
        open_root(tmp_path / "c" / ISET / BKEY).list()
    with pytest.raises(SAError, match="no cache group 'nothere'"):
        open_root(tmp_path / "c").open("nothere")


def test_default_root_env(monkeypatch, tmp_path):
    from sa.cache import default_root

    monkeypatch.setenv("SA_CACHE", str(tmp_path))
    assert default_root() == str(tmp_path) and open_root().url == str(tmp_path)
    monkeypatch.delenv("SA_CACHE")
    assert default_root().endswith("/.cache/sa/features")
