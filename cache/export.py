"""Export a cache group to one HDF5 file and import it back, for collaborators outside Python.

The file holds the same arrays under the same names (`ids`, `mean/07`, ...,
`final`; float16, contiguous) and the manifest as the root attribute
`sa_manifest` (a JSON string). Import recreates an identical group and refuses
to mark it complete unless every digest equals the one in the manifest.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from sa.cache.manifest import IDS_ARRAY
from sa.cache.store import CacheRoot, FeatureGroup, open_root
from sa.cache.verify import manifest_digests
from sa.errors import SAError
from sa.progress import make_progress

MANIFEST_ATTR = "sa_manifest"
KEY_ATTR = "sa_key"


def export_group(root: CacheRoot | str, key: str, out: str | os.PathLike, *, overwrite: bool = False,
                 progress: bool = True) -> str:
    """Write complete group `key` to the HDF5 file `out`; returns the path written."""
    import h5py

    group = open_root(root, read_only=True).open(key)
    out = os.fspath(out)
    if os.path.exists(out) and not overwrite:
        raise SAError(f"{out} already exists; choose another file name or pass --overwrite.")
    tmp = f"{out}.partial"
    try:
        with h5py.File(tmp, "w") as h5, make_progress("array", disable=not progress, transient=True) as bar:
            h5.attrs[MANIFEST_ATTR] = json.dumps(group.manifest)
            h5.attrs[KEY_ATTR] = group.key
            h5.create_dataset(IDS_ARRAY, data=np.array(group.ids.tolist(), dtype=object), dtype=h5py.string_dtype("utf-8"))
            task = bar.add_task(f"export {group.key}", total=len(group.arrays))
            for name in group.arrays:
                _copy_to_h5(group, name, h5)
                bar.advance(task)
        os.replace(tmp, out)
    except OSError as exc:
        raise SAError(f"cannot write {out} ({exc.strerror or exc}); choose a writable location.") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def _copy_to_h5(group: FeatureGroup, name: str, h5: Any) -> None:
    """Copy one array into dataset `name`, block by block."""
    width = int(group.manifest["arrays"][name]["shape"][1])
    ds = h5.create_dataset(name, shape=(group.n_rows, width), dtype="<f2")
    reader = group._reader(name)
    for start, block in reader.iter_blocks():
        ds[start:start + block.shape[0]] = block


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
        writer = cache.create(manifest["image_set_id"], manifest["backbone_key"], ids, widths, carried,
                              block_rows=int(manifest["block_rows"]))
        with writer, make_progress("block", disable=not progress, transient=True) as bar:
            pending = writer.pending_blocks()
            task = bar.add_task(f"import {key}", total=len(pending))
            for b in pending:
                rows = writer.block_rows_slice(b)
                writer.write_block(b, {n: h5[n][rows] for n in widths})
                bar.advance(task)
            return writer.finalize(expect=expected)
