"""Export a cache group to one HDF5 file and import it back, for collaborators outside Python.

The file holds the same arrays under the same names (`ids`, `mean/07`, ...,
`final`; float16 or the wider dtype the group stores, contiguous) and the
manifest as the root attribute `sa_manifest` (a JSON string). Export
recomputes every digest from the blocks as it reads them and writes nothing
under the final name unless all match (a damaged group never travels); import
recreates an identical group and refuses to mark it complete unless every
digest equals the one in the manifest.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np

from sa.cache.manifest import IDS_ARRAY
from sa.cache.store import CacheRoot, FeatureGroup, open_root
from sa.cache.verify import BlockDigest, digest_ids, manifest_digests
from sa.errors import DamagedError, SAError, explain, writing
from sa.progress import make_progress

MANIFEST_ATTR = "sa_manifest"
KEY_ATTR = "sa_key"


def export_group(root: CacheRoot | str, key: str, out: str | os.PathLike, *, overwrite: bool = False,
                 progress: bool = True) -> str:
    """Write complete group `key` to the HDF5 file `out` (DamagedError, and no file, if any digest fails); returns `out`."""
    group = open_root(root, read_only=True).open(key)
    out = os.fspath(out)
    if os.path.exists(out) and not overwrite:
        raise SAError(f"{out} already exists; choose another file name or pass --overwrite.")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise SAError(f"the folder {folder} for {out} does not exist; create it or choose another file name.")
    digests = manifest_digests(group.manifest)
    if digest_ids(group.ids.tolist()) != digests.get(IDS_ARRAY):
        raise _damaged(group, IDS_ARRAY, "digest differs")
    tmp = f"{out}.partial"
    try:
        with writing(out, _export_bytes(group), resumes=False):
            _write_h5(group, tmp, digests, progress)
        os.replace(tmp, out)
    except OSError as exc:  # h5py's own errors may carry no errno
        raise explain(exc, where=out, resumes=False) or SAError(f"cannot write {out} ({exc.strerror or exc}); choose a "
                                                                f"writable location.") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


class _GuardedFile(io.RawIOBase):
    """The file HDF5 writes through: the first OSError of a write (full disk, file-size limit) is kept, and later
    writes are pretended, so HDF5 closes cleanly and the caller raises the kept error.

    Why: an HDF5 file whose write failed cannot be closed, and the library then crashes the interpreter at exit
    (h5py 3, HDF5 1.14), after printing tracebacks.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self._f = open(path, "w+b")  # noqa: SIM115 - closed in close()
        self._pos = 0
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        end = self._f.seek(0, 2) if whence == 2 else 0
        self._pos = pos + (self._pos if whence == 1 else end if whence == 2 else 0)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf: Any) -> int:
        self._f.seek(self._pos)
        n = self._f.readinto(buf) or 0
        self._pos += n
        return n

    def _guard(self, op: Any) -> None:
        if self.error is None:
            try:
                op()
            except OSError as exc:
                self.error = exc

    def write(self, data: Any) -> int:
        at = self._pos
        self._guard(lambda: (self._f.seek(at), self._f.write(data)))
        self._pos += len(memoryview(data).cast("B"))
        return len(memoryview(data).cast("B"))

    def truncate(self, size: int | None = None) -> int:
        self._guard(lambda: self._f.truncate(self._pos if size is None else size))
        return self._pos if size is None else size

    def flush(self) -> None:
        if not self._f.closed:
            self._guard(self._f.flush)

    def close(self) -> None:
        self.flush()
        self._guard(self._f.close)
        super().close()

    def check(self) -> None:
        """Raise the kept write error, if any."""
        if self.error is not None:
            raise self.error


def _write_h5(group: FeatureGroup, path: str, digests: dict, progress: bool) -> None:
    """Write the export file `path`, checking digests as it reads; a full disk or file-size limit raises its OSError."""
    import h5py

    guarded = _GuardedFile(path)
    try:
        with h5py.File(guarded, "w") as h5, make_progress("array", disable=not progress, transient=True) as bar:
            h5.attrs[MANIFEST_ATTR] = json.dumps(group.manifest)
            h5.attrs[KEY_ATTR] = group.key
            h5.create_dataset(IDS_ARRAY, data=np.array(group.ids.tolist(), dtype=object), dtype=h5py.string_dtype("utf-8"))
            task = bar.add_task(f"export {group.key}", total=len(group.arrays))
            for name in group.arrays:
                _copy_to_h5(group, name, h5, digests.get(name), guarded)
                bar.advance(task)
    finally:
        guarded.close()
    guarded.check()


def _export_bytes(group: FeatureGroup) -> int:
    """Bytes the arrays of `group` take in an export (for a full-disk message)."""
    arrays = group.manifest.get("arrays") or {}
    return sum(int(np.prod(arrays[n]["shape"])) * np.dtype(arrays[n].get("dtype") or "float16").itemsize
               for n in group.arrays)


def _damaged(group: FeatureGroup, name: str, why: str) -> DamagedError:
    """The error for an array that fails its digest while being exported."""
    return DamagedError(f"cannot export cache group {group.key}: its array {name!r} is damaged ({why}), so no file was "
                        f"written; run `sa cache verify {group.key}` and extract or pull the group again.")


def _copy_to_h5(group: FeatureGroup, name: str, h5: Any, digest: Any, guarded: _GuardedFile) -> None:
    """Copy one array into dataset `name` block by block, checking its digest as it reads; DamagedError on a mismatch."""
    reader = group._reader(name)
    ds = h5.create_dataset(name, shape=reader.shape, dtype=reader.dtype.newbyteorder("<"))
    h = BlockDigest()
    try:
        for start, block in reader.iter_blocks():
            h.update(block)
            ds[start:start + block.shape[0]] = block
            guarded.check()  # stop at a full disk instead of pretending the rest
    except DamagedError as exc:
        raise _damaged(group, name, getattr(exc, "reason", "does not decode")) from None
    if h.hexdigest() != digest:
        raise _damaged(group, name, "digest differs")


def read_export_manifest(path: str | os.PathLike) -> dict:
    """The manifest stored in an exported HDF5 file (SAError if it is not one)."""
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SAError(f"{path} does not exist; pass the .h5 file written by `sa cache export`.")
    try:
        with h5py.File(path, "r") as h5:
            raw = h5.attrs.get(MANIFEST_ATTR)
    except OSError:
        raise SAError(f"{path} is not an HDF5 file; pass the .h5 file written by `sa cache export`.") from None
    if raw is None:
        raise SAError(f"{path} has no '{MANIFEST_ATTR}' attribute, so it is not an sa cache export; pass a file written by `sa cache export`.")
    try:
        manifest = json.loads(raw)
    except ValueError:
        manifest = None
    needed = ("image_set_id", "backbone_key", "arrays", "block_rows")
    if not isinstance(manifest, dict) or any(k not in manifest for k in needed):
        raise SAError(f"{path}: its '{MANIFEST_ATTR}' attribute is not a complete sa manifest (needs {', '.join(needed)}); "
                      f"re-export the group with `sa cache export`.")
    return manifest


def import_group(path: str | os.PathLike, root: CacheRoot | str | None = None, *, progress: bool = True) -> FeatureGroup:
    """Recreate the group stored in HDF5 file `path` under `root`, with digests equal to the exported ones."""
    import h5py

    manifest = read_export_manifest(path)
    cache = open_root(root)
    key = f"{manifest['image_set_id']}/{manifest['backbone_key']}"
    expected = manifest_digests(manifest)
    if cache.status(key) == "complete":
        existing = cache.open(key)
        if manifest_digests(existing.manifest) == expected:
            return existing
        raise SAError(f"cache group {key} already exists under {cache.url} with different data; remove it with `sa cache rm {key}` first.")
    widths = {n: int(m["shape"][1]) for n, m in manifest["arrays"].items() if n != IDS_ARRAY}
    with h5py.File(os.fspath(path), "r") as h5:
        missing = [n for n in [IDS_ARRAY, *widths] if n not in h5]
        if missing:
            raise SAError(f"{os.fspath(path)} lacks the dataset(s) {', '.join(missing[:5])} listed in its manifest; export the group again.")
        ids = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in h5[IDS_ARRAY][:]]
        carried = {k: v for k, v in manifest.items() if k not in ("status", "arrays", "completed", "ids_digest")}
        total = sum(len(ids) * w * np.dtype(manifest["arrays"][n].get("dtype") or "float16").itemsize for n, w in widths.items())
        wide = {n: str(m.get("wide_because") or "stored float32 in the export") for n, m in manifest["arrays"].items()
                if n != IDS_ARRAY and (m.get("dtype") or "float16") != "float16"}
        with writing(cache.loc.display(key), total):  # creating the group writes the ids and the array metadata
            writer = cache.create(manifest["image_set_id"], manifest["backbone_key"], ids, widths, carried,
                                  block_rows=int(manifest["block_rows"]), **({"wide": wide} if wide else {}))
        with writer, writer.writing(), make_progress("block", disable=not progress, transient=True) as bar:
            pending = writer.pending_blocks()
            task = bar.add_task(f"import {key}", total=len(pending))
            for b in pending:
                rows = writer.block_rows_slice(b)
                writer.write_block(b, {n: h5[n][rows] for n in widths})
                bar.advance(task)
            return writer.finalize(expect=expected)
