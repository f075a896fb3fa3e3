"""Digests catch corrupted chunks; HDF5 export/import restores an identical group."""

from __future__ import annotations

import inspect

import h5py
import numpy as np
import pytest
from support_cache import BKEY, ISET, full_data, write_group

from sa.cache import CacheRoot, CorruptChunk, export_group, import_group, open_root
from sa.cache.share import pull
from sa.errors import SAError

KEY = f"{ISET}/{BKEY}"


def _chunk(root_dir, name: str, block: int):
    return root_dir / ISET / BKEY / name / "c" / str(block) / "0"


def test_verify_names_flipped_and_undecodable_arrays(tmp_path):
    root = open_root(tmp_path)
    write_group(root)
    assert root.verify(KEY, progress=False) == []
    path = _chunk(tmp_path, "mean/01", 2)
    raw = bytearray(path.read_bytes())
    raw[1001] ^= 0x40
    path.write_bytes(bytes(raw))
    _chunk(tmp_path, "final", 5).write_bytes(b"\x00" * 10)  # truncated: no longer decodes
    assert root.verify(KEY, progress=False) == ["mean/01", "final"]
    assert root.problems(KEY, progress=False) == {"mean/01": "digest differs", "final": "chunk 5 has 10 bytes instead of 16384"}
    with pytest.raises(CorruptChunk, match=r"is damaged: chunk 5 \(c/5/0\) of array 'final' has 10 bytes.*sa cache verify"):
        root.open(KEY).read("final")
    assert path.exists()  # nothing deleted


def test_verify_refuses_partial_groups(tmp_path):
    root = open_root(tmp_path)
    write_group(root, blocks=[0], finalize=False).close()
    with pytest.raises(SAError, match="partial"):
        root.verify(KEY, progress=False)


def test_export_import_round_trip(tmp_path):
    group = write_group(open_root(tmp_path / "a"))
    out = export_group(tmp_path / "a", BKEY, tmp_path / "g.h5", progress=False)
    with h5py.File(out, "r") as h5:
        assert h5["cls/01"].dtype == np.float16 and h5["cls/01"].shape == group.read("cls/01").shape
        assert '"status": "complete"' in h5.attrs["sa_manifest"]
    restored = import_group(out, tmp_path / "b", progress=False)
    assert restored.key == group.key
    assert restored.manifest["arrays"] == group.manifest["arrays"]
    assert restored.manifest["created"] == group.manifest["created"]
    for name, arr in full_data().items():
        np.testing.assert_array_equal(restored.read(name), arr)
    assert import_group(out, tmp_path / "b", progress=False).key == group.key  # idempotent
    with pytest.raises(SAError, match="already exists"):
        export_group(tmp_path / "a", BKEY, out, progress=False)


def test_import_of_damaged_export_stays_partial(tmp_path):
    write_group(open_root(tmp_path / "a"))
    out = export_group(tmp_path / "a", BKEY, tmp_path / "g.h5", progress=False)
    with h5py.File(out, "r+") as h5:
        h5["final"][3, 3] = 7.0
    with pytest.raises(SAError, match="final.*stays partial"):
        import_group(out, tmp_path / "b", progress=False)
    assert open_root(tmp_path / "b").status(KEY) == "partial"
    (tmp_path / "plain.h5").write_bytes(b"not hdf5")
    with pytest.raises(SAError, match="not an HDF5 file"):
        import_group(tmp_path / "plain.h5", tmp_path / "b", progress=False)


def test_malformed_manifests_are_one_clear_error(tmp_path):
    root = open_root(tmp_path / "cache")
    write_group(root)
    out = tmp_path / "g.h5"
    export_group(root, f"{ISET}/{BKEY}", out, progress=False)
    with h5py.File(out, "r+") as h5:
        h5.attrs["sa_manifest"] = '{"image_set_id": "x"}'
    with pytest.raises(SAError, match=r"not a complete sa manifest.*sa cache export"):
        import_group(out, tmp_path / "other", progress=False)
    (tmp_path / "cache" / ISET / BKEY / "zarr.json").write_text("[1, 2]")
    with pytest.raises(SAError, match=r"zarr\.json is not a valid zarr\.json.*sa cache rm"):
        root.open(f"{ISET}/{BKEY}")


@pytest.mark.skipif("wide" not in inspect.signature(CacheRoot.create).parameters,
                    reason="float32 (widened) arrays need CacheRoot.create(wide=...)")
def test_float32_arrays_keep_their_dtype_and_values_through_export_import_and_pull(tmp_path):
    src = open_root(tmp_path / "a")
    widths = {"mean/00": 24, "final": 8}
    writer = src.create(ISET, "wide-0123456789", [f"i{k}" for k in range(150)], widths, {}, block_rows=64,
                        wide={"mean/00": "values beyond float16 (test)"})
    rng = np.random.default_rng(3)
    for b in writer.pending_blocks():
        rows = writer.block_rows_slice(b)
        n = rows.stop - rows.start
        writer.write_block(b, {"mean/00": rng.standard_normal((n, 24)) * 1e5, "final": rng.standard_normal((n, 8))})
    group = writer.finalize()
    key = group.key
    wide = group.read("mean/00")
    assert wide.dtype == np.float32 and np.abs(wide).max() > 65504 and np.isfinite(wide).all()
    assert group.read("final").dtype == np.float16 and src.problems(key, progress=False) == {}
    out = export_group(src, key, tmp_path / "w.h5", progress=False)
    with h5py.File(out, "r") as h5:
        assert h5["mean/00"].dtype == np.float32 and h5["final"].dtype == np.float16
        np.testing.assert_array_equal(h5["mean/00"][:], wide)
    for copy in (import_group(out, tmp_path / "b", progress=False),
                 (pull(key, src, root=tmp_path / "c", progress=False), open_root(tmp_path / "c").open(key))[1]):
        assert copy.manifest["arrays"] == group.manifest["arrays"]
        np.testing.assert_array_equal(copy.read("mean/00"), wide)
        assert copy.root.problems(key, progress=False) == {}
