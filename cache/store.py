"""The cache root, its groups and their writers: the zarr v3 layout of DESIGN.md ("The cache").

```
<root>/sa-cache.json                      marker: this folder is a feature cache
<root>/<image-set id>/<backbone key>/     one zarr group per (image set, backbone run)
    zarr.json  attrs["sa"] = manifest     status "partial" until finalize
    ids                                   (N,) strings
    <pool>/<label>, final                 (N, D) float16, chunks (block_rows, D), no compression, no sharding
    writer.lock                           see sa.cache.lock
    _progress/<block>                     see sa.cache.blocks (removed when complete)
<root>/sa-index.json                      the lab index of complete groups (sa.cache.index)
```

Readers open zarr with mode "r" and never write, so a read-only root (or a
read-only HTTP mirror) works the same. Roots that cannot be listed (HTTP) are
read by known paths only: groups by full key, `list()` from the index.
"""

from __future__ import annotations

import difflib
import json
from typing import Any, Mapping, Sequence

import numpy as np

from sa.cache.blocks import BlockRecord
from sa.cache import index
from sa.cache.index import INDEX_NAME, info_of, read_index
from sa.cache.keys import is_image_set_id
from sa.cache.location import Location, default_root
from sa.cache.lock import GroupLocked, WriterLock
from sa.cache.manifest import (
    FEATURE_DTYPE,
    IDS_ARRAY,
    POOLS,
    GroupInfo,
    base_manifest,
    check_array_name,
    label_key,
    layers_of,
    now_iso,
)
from sa.cache.read import ArrayReader
from sa.cache.verify import array_problems, digest_blocks, digest_ids, manifest_digests
from sa.errors import DamagedError, SAError, writing
from sa.progress import make_progress

ROOT_MARKER = "sa-cache.json"
DAMAGED = "damaged"
# files a group folder may hold before its zarr.json exists (a writer that just took the lock)
_PRE_METADATA = ("writer.lock", "_progress", ".sa-tmp-")


def open_root(url_or_path: Any = None, read_only: bool = False, *, storage_options: dict | None = None) -> "CacheRoot":
    """Open a cache root (local path or fsspec URL; None = `default_root()`); HTTP(S) roots are always read-only.

    `storage_options` go to the fsspec filesystem (e.g. s3 `client_kwargs`).
    """
    if url_or_path is None:
        url_or_path = default_root()
    if isinstance(url_or_path, CacheRoot):
        return url_or_path
    return CacheRoot(Location.parse(url_or_path, read_only=read_only, storage_options=storage_options))


def _sorted_arrays(names: Sequence[str]) -> list[str]:
    """Array names ordered pool by pool, layers by depth, 'final' last."""
    def key(name: str) -> tuple:
        if name == "final":
            return (len(POOLS) + 1, (0, 0))
        pool, _, label = name.partition("/")
        return (POOLS.index(pool) if pool in POOLS else len(POOLS), label_key(label))

    return sorted(names, key=key)


class CacheRoot:
    """A feature cache: groups keyed `<image-set id>/<backbone key>` under one root."""

    def __init__(self, location: Location) -> None:
        self.loc = location
        self._store = None

    @property
    def url(self) -> str:
        """The root as given (absolute path or URL)."""
        return self.loc.url

    @property
    def read_only(self) -> bool:
        """True when this root was opened read-only."""
        return self.loc.read_only

    def __repr__(self) -> str:
        return f"CacheRoot({self.url!r}, read_only={self.read_only})"

    # -- low-level helpers ---------------------------------------------------------------
    @property
    def store(self) -> Any:
        """The zarr store over the whole root (created on first use)."""
        if self._store is None:
            self._store = self.loc.zarr_store()
        return self._store

    def _group_path(self, key: str) -> str:
        return self.loc.path(key)

    def _manifest(self, key: str) -> dict | None:
        """The manifest of group `key` read straight from its zarr.json, None when there is no group."""
        try:
            raw = self.loc.fs.cat_file(f"{self._group_path(key)}/zarr.json")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError:
            raise SAError(f"cannot read {self.loc.display(key, 'zarr.json')} (permission denied); ask the cache's owner "
                          f"to make the group readable (e.g. chmod -R a+rX).") from None
        try:
            meta = json.loads(raw)
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            exc = DamagedError(f"cache group {key} is damaged: its metadata {self.loc.display(key, 'zarr.json')} is not a "
                               f"valid zarr.json; remove the group with `sa cache rm {key}` and extract or pull it again.")
            exc.reason = "its zarr.json is not valid JSON"
            raise exc
        manifest = (meta.get("attributes") or {}).get("sa")
        return manifest if isinstance(manifest, dict) else None

    def _lost_metadata(self, key: str) -> DamagedError:
        """The error for a group folder (or index entry) whose zarr.json is gone."""
        exc = DamagedError(f"cache group {key} under {self.url} is damaged: its metadata (zarr.json) is missing, so none of "
                           f"its arrays can be trusted; remove it with `sa cache rm {key}` and extract or pull it again.")
        exc.reason = "its zarr.json is missing"
        return exc

    def _read_manifest(self, key: str) -> dict:
        """The manifest of an existing group `key`; DamagedError when its zarr.json is missing or unreadable."""
        manifest = self._manifest(key)
        if manifest is None:
            raise self._lost_metadata(key)
        return manifest


    def _check_is_cache(self) -> bool:
        """False for a root that does not exist yet; True for a cache; SAError for anything else."""
        fs, base = self.loc.fs, self.loc.base
        if not self.loc.listable:
            return self._check_unlistable()
        try:
            if not fs.exists(base):
                return False
            if fs.isfile(base):
                raise SAError(f"{self.url} is a file, not a feature cache; pass the cache folder with --cache or set SA_CACHE.")
            if fs.exists(self.loc.path(ROOT_MARKER)):
                return True
            children = [c.rstrip("/").rsplit("/", 1)[-1] for c in fs.ls(base, detail=False)]
        except PermissionError:
            raise SAError(f"cannot read cache root {self.url} (permission denied); fix its permissions or pass another --cache.") from None
        if not children or any(is_image_set_id(c) for c in children):
            return True
        if "zarr.json" in children and self._manifest_at(base) is not None:
            raise SAError(f"{self.url} is one cache group, not a cache root; pass the folder two levels up "
                          f"(the one holding <image-set id>/<backbone key>) as --cache.")
        raise SAError(f"{self.url} is not a feature cache (no {ROOT_MARKER} and no <image-set id>/<backbone key> groups); "
                      f"pass the cache root with --cache or set SA_CACHE.")

    def _check_unlistable(self) -> bool:
        """A root without listing (HTTP) is a cache when its marker or index can be fetched; say so when it cannot be reached."""
        for name in (ROOT_MARKER, INDEX_NAME):
            try:  # cat_file, not exists/info: fsspec's HTTP info turns "no answer" into FileNotFoundError
                self.loc.fs.cat_file(self.loc.path(name))
                return True
            except FileNotFoundError:
                continue
            except Exception as exc:  # noqa: BLE001 - aiohttp/fsspec raise many types for "no answer"
                if getattr(exc, "status", None):  # it answered, with an HTTP error
                    raise SAError(f"cache root {self.url} answered HTTP {exc.status} ({getattr(exc, 'message', '')}) for "
                                  f"{name}; check the URL and that the server lets you read it.") from None
                raise SAError(f"cannot reach cache root {self.url} ({type(exc).__name__}: {exc}); check that the server "
                              f"is running and the URL is right.") from None
        raise SAError(f"{self.url} answers but serves no {ROOT_MARKER} or {INDEX_NAME}, so it is not a feature cache root; "
                      f"point the URL at the served cache folder.")

    def require_exists(self) -> None:
        """SAError when the root does not exist (commands that only read; writers create it)."""
        if not self._check_is_cache():
            raise SAError(f"cache root {self.url} does not exist; pass the cache folder with --cache or set SA_CACHE "
                          f"(`sa extract` creates a new one).")

    def _index_entries(self) -> dict[str, dict] | None:
        """The lab index entries (None when the root has none)."""
        return read_index(self)

    def _manifest_at(self, path: str) -> dict | None:
        """The sa manifest in the zarr.json at `path`, if any."""
        try:
            meta = json.loads(self.loc.fs.cat_file(f"{path}/zarr.json"))
        except (OSError, ValueError):
            return None
        return (meta.get("attributes") or {}).get("sa") if isinstance(meta, dict) else None

    def _keys(self) -> list[str]:
        """Keys of every group (complete, partial or damaged) under the root.

        A listable root also yields folders that hold group files but lost their zarr.json, and keys the lab
        index lists whose folder is gone, so that damage shows instead of silently vanishing.
        """
        if not self._check_is_cache():
            return []
        if not self.loc.listable:
            entries = self._index_entries()
            if entries is None:
                raise SAError(f"cache root {self.url} cannot be listed and has no index; run `sa cache reindex` on the "
                              f"folder it serves, or give full '<image-set id>/<backbone key>' keys.")
            return sorted(entries)
        fs = self.loc.fs
        try:
            keys = set(self._index_entries() or {})
        except SAError:
            keys = set()  # a torn index is what `reindex` repairs; the folders still list
        for iset in fs.ls(self.loc.base, detail=False):
            iset_name = iset.rstrip("/").rsplit("/", 1)[-1]
            if not is_image_set_id(iset_name) or not fs.isdir(iset):
                continue
            for grp in fs.ls(iset, detail=False):
                grp = grp.rstrip("/")
                if fs.exists(f"{grp}/zarr.json") or self._holds_group_files(grp):
                    keys.add(f"{iset_name}/{grp.rsplit('/', 1)[-1]}")
        return sorted(keys)

    def _holds_group_files(self, path: str) -> bool:
        """True for a folder holding array data or metadata (not just a fresh writer's lock and progress markers)."""
        fs = self.loc.fs
        try:
            if not fs.isdir(path):
                return False
            names = [c.rstrip("/").rsplit("/", 1)[-1] for c in fs.ls(path, detail=False)]
        except FileNotFoundError:
            return False
        return any(not n.startswith(_PRE_METADATA) for n in names)

    def _ensure_root(self) -> None:
        """Create the root and its marker, with one clear sentence if it cannot be written."""
        self.loc.require_writable("write features")
        self._check_is_cache()
        fs = self.loc.fs
        try:
            with writing(self.url):  # a full disk is said as such (with the resume promise), not as "not writable"
                fs.makedirs(self.loc.base, exist_ok=True)
                if not fs.exists(self.loc.path(ROOT_MARKER)):
                    fs.pipe_file(self.loc.path(ROOT_MARKER), json.dumps({"format": "sa-feature-cache", "version": 1}).encode())
        except OSError as exc:
            raise SAError(f"cannot write to cache root {self.url} ({exc.strerror or exc}); pass a writable --cache or set SA_CACHE.") from None

    # -- public API ----------------------------------------------------------------------
    def resolve(self, key: str) -> str:
        """The full '<image-set id>/<backbone key>' for a full key, a unique backbone key, or a unique prefix."""
        wanted = key.strip().strip("/")
        if wanted.count("/") == 1 and is_image_set_id(wanted.split("/")[0]) \
                and self.loc.fs.exists(f"{self._group_path(wanted)}/zarr.json"):
            return wanted  # a full key needs no listing (HTTP roots); a torn zarr.json still resolves (for `rm`)
        keys = self._keys()
        if not keys:
            self.require_exists()
        if wanted in keys:
            return wanted
        exact = [k for k in keys if k.split("/", 1)[1] == wanted]
        matches = exact or [k for k in keys if k.startswith(wanted) or k.split("/", 1)[1].startswith(wanted)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise SAError(f"cache key {key!r} matches {len(matches)} groups under {self.url} ({', '.join(matches[:5])}); "
                          f"give the full '<image-set id>/<backbone key>'.")
        by_name = {k: k for k in keys}
        for k in keys:
            bkey = k.split("/", 1)[1]
            by_name.setdefault(bkey, bkey)
            by_name.setdefault(bkey.rsplit("-", 1)[0], bkey)
        close = difflib.get_close_matches(wanted, list(by_name), n=3, cutoff=0.5)
        close = list(dict.fromkeys(by_name[c] for c in close))
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise SAError(f"no cache group {key!r} under {self.url}; {hint}`sa cache ls --cache {self.url}` lists the groups.")

    def status(self, key: str) -> str:
        """'missing', 'partial' or 'complete' for an exact '<image-set id>/<backbone key>'."""
        manifest = self._manifest(key.strip("/"))
        if manifest is None:
            return "missing"
        return "complete" if manifest.get("status") == "complete" else "partial"

    def info(self, key: str) -> GroupInfo:
        """The GroupInfo (manifest, size on disk) of one group; DamagedError when its metadata is lost or torn."""
        full = self.resolve(key)
        return GroupInfo.from_manifest(full, self._read_manifest(full), self._du(full))

    def _du(self, key: str) -> int:
        """Bytes on disk under group `key` (roots without listing: from the index, else the arrays' sizes)."""
        if not self.loc.listable:
            entry = (self._index_entries() or {}).get(key)
            if entry is not None:
                return int(entry.get("nbytes", 0))
            arrays = (self._manifest(key) or {}).get("arrays") or {}
            return sum(2 * int(np.prod(m.get("shape", [0]))) for n, m in arrays.items() if n != IDS_ARRAY)
        try:
            return int(self.loc.fs.du(self._group_path(key)))
        except (OSError, ValueError):
            return 0

    def list(self, *, use_index: bool | None = None) -> list[GroupInfo]:
        """Every group under the root, oldest first.

        use_index=None: remote roots read the lab index when there is one (one
        request; complete groups only) and local roots scan the folders (partial
        groups too); True/False force either way.
        """
        if use_index is None:
            use_index = not self.loc.local
        entries = self._index_entries() if use_index and self._check_is_cache() else None
        if entries is not None:
            infos = [info_of(e) for e in entries.values()]
        else:
            if use_index and not self.loc.listable:
                self._keys()  # raises the "no index" error
            infos = [self._scan_info(k) for k in self._keys()]
        return sorted(infos, key=lambda i: (i.created, i.key))

    def _scan_info(self, key: str) -> GroupInfo:
        """The GroupInfo of `key` from its own zarr.json, or one with status 'damaged' (the reason in its manifest)."""
        try:
            return GroupInfo.from_manifest(key, self._read_manifest(key), self._du(key))
        except DamagedError as exc:
            manifest = {"status": DAMAGED, "damage": str(exc), "damage_reason": getattr(exc, "reason", "damaged")}
            return GroupInfo.from_manifest(key, manifest, self._du(key))

    def create(self, image_set_id: str, backbone_key: str, ids: Sequence[str], arrays: Mapping[str, int],
               manifest: Mapping[str, Any], *, block_rows: int = 256, lock: bool = True,
               wide: Mapping[str, str] | None = None) -> "FeatureWriter":
        """Create (or reopen to resume) the partial group for (image set, backbone) and return its writer.

        `wide` names arrays to store as float32 (name -> why); a partial group's float16 array named there is
        widened in place, its finished blocks kept (see `_create_or_check`). Arrays are never narrowed again.
        """
        key = f"{image_set_id}/{backbone_key}"
        ids = [str(i) for i in ids]
        widths = self._check_create_args(key, ids, arrays, block_rows)
        self._ensure_root()
        if self.status(key) == "complete":
            raise SAError(f"cache group {key} under {self.url} is already complete; read it with root.open, or remove it "
                          f"with `sa cache rm {key}` to extract it again.")
        try:
            self.loc.fs.makedirs(self._group_path(key), exist_ok=True)
        except OSError as exc:
            raise SAError(f"cannot write to cache root {self.url} ({exc.strerror or exc}); pass a writable --cache or set SA_CACHE.") from None
        writer_lock = WriterLock(self.loc.fs, self._group_path(key), self.loc.display(key)) if lock else None
        if writer_lock is not None:
            writer_lock.acquire()
        try:
            self._create_or_check(key, ids, widths, dict(manifest), block_rows, dict(wide or {}))
            return FeatureWriter(self, key, writer_lock)
        except BaseException:
            if writer_lock is not None:
                writer_lock.release()
            raise

    def _check_create_args(self, key: str, ids: list[str], arrays: Mapping[str, int], block_rows: int) -> dict[str, int]:
        """Validate ids, array names/widths and block size; return {name: width}."""
        if not ids:
            raise SAError(f"cannot create cache group {key}: the image list is empty; pass at least one image id.")
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise SAError(f"cannot create cache group {key}: image id {dup!r} appears twice; image ids must be unique.")
        if not arrays:
            raise SAError(f"cannot create cache group {key}: no arrays given; pass e.g. {{'mean/07': 768}}.")
        if int(block_rows) <= 0:
            raise SAError(f"block_rows must be a positive number of rows, not {block_rows}.")
        widths = {}
        for name, width in arrays.items():
            check_array_name(name)
            if int(width) <= 0:
                raise SAError(f"array {name!r} has width {width}; widths must be positive.")
            widths[name] = int(width)
        return widths

    def _create_or_check(self, key: str, ids: list[str], widths: dict[str, int], manifest: dict, block_rows: int,
                         wide: dict[str, str] | None = None) -> None:
        """Under the lock: write a new group, or check a partial one matches and fill in anything missing.

        Widening a partial group's float16 array to float32 keeps its finished blocks: their progress markers are
        removed first (a crash from then on recomputes them), the manifest then says float32, the array is made
        anew, and the kept float16 values (finite, and exactly what the float32 rule stores) are written back.
        """
        import zarr

        from sa.cache.manifest import WIDE_DTYPE, array_entry

        wide = wide or {}
        existing = self._manifest(key)
        ids_digest = digest_ids(ids)
        record = BlockRecord(self.loc.fs, self._group_path(key))
        kept: dict[str, np.ndarray] = {}
        done: list[int] = []
        if existing is None:
            full = base_manifest(manifest, image_set_id=key.split("/")[0], backbone_key=key.split("/")[1], n=len(ids),
                                 arrays=widths, block_rows=block_rows, wide=wide)
            full["ids_digest"] = ids_digest
            group = zarr.create_group(self.store, path=key, attributes={"sa": full}, overwrite=False)
            entries = full["arrays"]
        else:
            if existing.get("status") == "complete":
                raise SAError(f"cache group {key} under {self.url} is already complete; remove it with `sa cache rm {key}` to extract it again.")
            old_widths = {n: int(m["shape"][1]) for n, m in (existing.get("arrays") or {}).items() if n != IDS_ARRAY}
            if existing.get("ids_digest") != ids_digest or old_widths != widths or int(existing.get("block_rows", -1)) != block_rows:
                raise SAError(f"partial cache group {key} under {self.url} was started with other images, arrays or block size; "
                              f"remove it with `sa cache rm {key}` and extract again.")
            group = zarr.open_group(self.store, path=key, mode="a")
            entries = dict(existing["arrays"])
            grow = {n: why for n, why in wide.items() if n in widths and entries[n].get("dtype", FEATURE_DTYPE) != WIDE_DTYPE}
            if grow:
                done = sorted(b for b in record.done() if b * block_rows < len(ids))
                kept = {n: group[n][:] for n in grow if done and n in group}
                record.clear()
                for n, why in grow.items():
                    entries[n] = array_entry(len(ids), widths[n], why)
                group.update_attributes({"sa": {**existing, "arrays": entries}})
        dtypes = {n: entries[n].get("dtype", FEATURE_DTYPE) for n in widths}
        self._ensure_arrays(group, ids, widths, block_rows, dtypes)
        record.ensure()
        for n, values in kept.items():
            for b in done:
                rows = slice(b * block_rows, min(len(ids), (b + 1) * block_rows))
                group[n][rows] = values[rows].astype(WIDE_DTYPE)
        for b in done:
            record.mark(b)

    def _ensure_arrays(self, group: Any, ids: list[str], widths: dict[str, int], block_rows: int,
                       dtypes: Mapping[str, str] | None = None) -> None:
        """Create the ids array and the empty feature arrays that do not exist yet, or exist in another dtype (resumes).

        `dtypes`: name -> storage dtype (default float16).
        """
        fs, base = self.loc.fs, self._group_path(group.path)
        dtypes = dtypes or {}
        n = len(ids)
        # The ids are rewritten unless they read back whole: a full disk can leave the array's zarr.json without
        # its chunk, which reads as empty strings.
        if not fs.exists(f"{base}/{IDS_ARRAY}/zarr.json") or [str(x) for x in group[IDS_ARRAY][:].tolist()] != ids:
            arr = group.create_array(IDS_ARRAY, shape=(n,), chunks=(n,), dtype=str, compressors=None, fill_value="", overwrite=True)
            arr[:] = np.array(ids, dtype=object)
        for name, width in widths.items():
            dtype = dtypes.get(name, FEATURE_DTYPE)
            if fs.exists(f"{base}/{name}/zarr.json") and (dtype == FEATURE_DTYPE or np.dtype(group[name].dtype) == np.dtype(dtype)):
                continue
            group.create_array(name, shape=(n, width), chunks=(block_rows, width), dtype=dtype, compressors=None,
                               filters=None, fill_value=np.nan, config={"write_empty_chunks": True}, overwrite=True)

    def open_writer(self, key: str) -> "FeatureWriter":
        """A writer for blocks of an existing partial group, without taking the lock (dask workers of a locked client)."""
        self.loc.require_writable("write features")
        full = self.resolve(key)
        if self.status(full) == "complete":
            raise SAError(f"cache group {full} under {self.url} is already complete; there is nothing left to write.")
        return FeatureWriter(self, full, None)

    def open(self, key: str) -> "FeatureGroup":
        """Open a complete group for reading; partial, missing or damaged groups raise an SAError saying what to do."""
        full = self.resolve(key)
        manifest = self._read_manifest(full)
        if manifest.get("status") != "complete" and manifest.get("copying_from"):
            raise SAError(f"cache group {full} under {self.url} is still being copied from {manifest['copying_from']}, so it "
                          f"cannot be read; rerun the same `sa cache push`/`pull` to finish it (copied files are kept).")
        if manifest.get("status") != "complete":
            done = len(BlockRecord(self.loc.fs, self._group_path(full)).done())
            total = -(-int(manifest.get("n", 0)) // max(1, int(manifest.get("block_rows", 1))))
            raise SAError(f"cache group {full} under {self.url} is partial ({done} of {total} blocks written), so it cannot be read; "
                          f"rerun the same `sa extract` command to resume it (finished blocks are kept), or remove it with `sa cache rm {full}`.")
        return FeatureGroup(self, full, manifest)

    def remove(self, key: str, *, force: bool = False) -> None:
        """Delete a group; refuses while a live writer holds its lock unless force=True."""
        self.loc.require_writable("remove a group")
        full = self.resolve(key)
        holder = WriterLock(self.loc.fs, self._group_path(full), self.loc.display(full)).held_by_other()
        if holder is not None and not force:
            lock = WriterLock(self.loc.fs, self._group_path(full), self.loc.display(full))
            raise GroupLocked(f"cache group {full} is being written by {lock.describe(holder)}; stop that writer first "
                              f"(or pass --force to delete it anyway).")
        fs = self.loc.fs
        try:
            if fs.exists(self._group_path(full)):  # a key only the index still lists has no folder left
                fs.rm(self._group_path(full), recursive=True)
            parent = self.loc.path(full.split("/")[0])
            if fs.exists(parent) and not fs.ls(parent, detail=False):
                fs.rm(parent, recursive=True)
        except OSError as exc:
            raise SAError(f"cannot remove cache group {full} under {self.url} ({exc.strerror or exc}); check the root is writable.") from None
        index.forget(self, full)

    def verify(self, key: str, *, progress: bool = True) -> list[str]:
        """Recompute every digest of a complete group and check its float arrays are finite; return the bad arrays."""
        return list(self.problems(key, progress=progress))

    def problems(self, key: str, *, progress: bool = True) -> dict[str, str]:
        """What `verify` finds, array by array: name -> why it fails (digest, missing chunk, NaN/Inf); {} when sound.

        DamagedError when the group's own metadata is lost or torn.
        """
        full = self.resolve(key)
        manifest = self._read_manifest(full)
        if manifest.get("status") != "complete":
            raise SAError(f"cache group {full} is partial, so it has no digests to verify yet; resume it by rerunning `sa extract`, "
                          f"or remove it with `sa cache rm {full}`.")
        return array_problems(FeatureGroup(self, full, manifest), manifest_digests(manifest), f"verify {full}", progress,
                              finite=True)


class FeatureGroup:
    """A complete group opened for reading: ids, manifest, and float16 arrays as numpy or dask."""

    def __init__(self, root: CacheRoot, key: str, manifest: dict) -> None:
        self.root = root
        self.key = key
        self.manifest = manifest
        self.image_set_id, self.backbone_key = key.split("/", 1)
        self.n_rows = int(manifest.get("n", 0))
        self._group = None
        self._readers: dict[str, ArrayReader] = {}
        self._ids: np.ndarray | None = None
        self._row_of: dict[str, int] | None = None

    def __repr__(self) -> str:
        return f"FeatureGroup({self.key!r}, n={self.n_rows}, arrays={len(self.arrays)})"

    @property
    def zgroup(self) -> Any:
        """The zarr group, opened read-only (mode 'r')."""
        if self._group is None:
            import zarr

            self._group = zarr.open_group(self.root.store, path=self.key, mode="r", zarr_format=3)
        return self._group

    @property
    def arrays(self) -> list[str]:
        """Feature array names (pool/label and final), ordered by pool then depth."""
        return _sorted_arrays([n for n in (self.manifest.get("arrays") or {}) if n != IDS_ARRAY])

    def layers(self, pool: str) -> list[str]:
        """Layer labels of `pool` in depth order (without 'final')."""
        return layers_of({n: None for n in self.arrays}, pool)

    @property
    def ids(self) -> np.ndarray:
        """The image ids, in row order."""
        if self._ids is None:
            try:
                raw = self.zgroup[IDS_ARRAY][:]
            except Exception as exc:  # noqa: BLE001
                raise SAError(f"the ids of cache group {self.key} cannot be read ({type(exc).__name__}); run "
                              f"`sa cache verify {self.key}`, then remove and extract the group again.") from None
            self._ids = np.array([str(x) for x in raw.tolist()], dtype=str)
        return self._ids

    def _reader(self, name: str) -> ArrayReader:
        """The (cached) reader of array `name`, with an SAError suggesting close names for unknown ones."""
        if name not in self._readers:
            if name not in self.arrays:
                close = difflib.get_close_matches(name, self.arrays, n=3, cutoff=0.5)
                hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else f"it has {', '.join(self.arrays[:8])}{' ...' if len(self.arrays) > 8 else ''}."
                raise SAError(f"cache group {self.key} has no array {name!r}; {hint}")
            try:
                zarray = self.zgroup[name]
            except Exception as exc:  # noqa: BLE001
                raise SAError(f"array {name!r} of cache group {self.key} cannot be opened ({type(exc).__name__}); run "
                              f"`sa cache verify {self.key}`, then remove and extract the group again.") from None
            folder = f"{self.root._group_path(self.key)}/{name}"
            local = self.root.loc.local
            self._readers[name] = ArrayReader(zarray, name, self.root.loc.display(self.key), folder if local else None,
                                              fs=None if local else self.root.loc.fs, remote_dir=None if local else folder)
        return self._readers[name]

    def read(self, name: str, rows: slice | np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """Array `name` (float16, rows x width): all rows, a slice, integer positions or a boolean mask."""
        reader = self._reader(name)
        if rows is None:
            return reader.read_range(0, self.n_rows)
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.n_rows)
            if step == 1:
                return reader.read_range(start, stop)
            return reader.read_rows(np.arange(start, stop, step))
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (self.n_rows,):
                raise SAError(f"a boolean row mask for cache group {self.key} must have {self.n_rows} entries, not {rows.shape}.")
            rows = np.flatnonzero(rows)
        return reader.read_rows(rows.astype(np.int64))

    def digest(self, name: str) -> str:
        """Recompute the digest of one array (or 'ids') block by block."""
        if name == IDS_ARRAY:
            return digest_ids(self.zgroup[IDS_ARRAY][:].tolist())
        return digest_blocks(block for _, block in self._reader(name).iter_blocks())

    def dask(self, name: str) -> Any:
        """Array `name` as a lazy dask array (one dask chunk per cache block), read through the checked reader."""
        import dask.array as da

        reader = self._reader(name)
        return da.from_array(_Rows(reader), chunks=(reader.chunk_rows, reader.shape[1]), asarray=True,
                             name=f"sa-{self.root.url}/{self.key}/{name}@{self.manifest.get('completed', '')}", lock=False)

    def lazy(self, pool: str | None = None) -> dict[str, Any]:
        """Every array (or those of one pool) as lazy dask arrays, by name."""
        names = [n for n in self.arrays if pool is None or n.startswith(f"{pool}/")]
        return {n: self.dask(n) for n in names}

    def rows_for_ids(self, ids: Sequence[str]) -> np.ndarray:
        """Row positions of `ids`; SAError naming the first missing ones (skipped images count as missing)."""
        if self._row_of is None:
            skipped = set(self.manifest.get("skipped") or [])
            self._row_of = {i: r for r, i in enumerate(self.ids.tolist()) if i not in skipped}
        row_of = self._row_of
        rows = np.fromiter((row_of.get(str(i), -1) for i in ids), dtype=np.int64, count=len(ids))
        missing = [str(i) for i, r in zip(ids, rows) if r < 0]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:3])
            raise SAError(f"{len(missing)} image id(s) are not in cache group {self.key} (or were skipped as unreadable), "
                          f"e.g. {shown}; extract features for the image set the brain data uses.")
        return rows


class _Rows:
    """An array-like over an ArrayReader for dask (so a missing chunk raises CorruptChunk instead of reading as NaN)."""

    def __init__(self, reader: ArrayReader) -> None:
        self.reader = reader
        self.shape = reader.shape
        self.dtype = reader.dtype
        self.ndim = 2

    def __getitem__(self, sel: Any) -> np.ndarray:
        rows, cols = sel if isinstance(sel, tuple) else (sel, slice(None))
        start, stop, step = rows.indices(self.shape[0])
        return self.reader.read_range(start, stop)[::step, cols]


class FeatureWriter:
    """Writes the blocks of one partial group and completes it; see sa.cache.lock and sa.cache.blocks."""

    def __init__(self, root: CacheRoot, key: str, lock: WriterLock | None) -> None:
        import zarr

        self.root = root
        self.key = key
        self._lock = lock
        self._group = zarr.open_group(root.store, path=key, mode="a")
        self.manifest: dict = dict(root._manifest(key) or {})
        self.n_rows = int(self.manifest["n"])
        self.block_rows = int(self.manifest["block_rows"])
        self.n_blocks = -(-self.n_rows // self.block_rows)
        self.arrays = _sorted_arrays([n for n in self.manifest["arrays"] if n != IDS_ARRAY])
        self._widths = {n: int(self.manifest["arrays"][n]["shape"][1]) for n in self.arrays}
        self._record = BlockRecord(root.loc.fs, root._group_path(key))
        self._zarrays: dict[str, Any] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"FeatureWriter({self.key!r}, {len(self.done_blocks())}/{self.n_blocks} blocks)"

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def done_blocks(self) -> set[int]:
        """Blocks already written (by this or any earlier or concurrent writer)."""
        return {b for b in self._record.done() if b < self.n_blocks}

    def pending_blocks(self) -> list[int]:
        """Blocks still to write, in order."""
        done = self.done_blocks()
        return [b for b in range(self.n_blocks) if b not in done]

    def bytes_pending(self) -> int:
        """Bytes the blocks still to write take on disk (every chunk is stored whole)."""
        per_row = sum(int(self.manifest["arrays"][n]["shape"][1]) * np.dtype(self.manifest["arrays"][n].get("dtype") or FEATURE_DTYPE).itemsize
                      for n in self.arrays)
        return len(self.pending_blocks()) * self.block_rows * per_row

    def writing(self) -> Any:
        """A context in which a full disk or file-size limit names this group and the space its pending blocks need."""
        return writing(self.root.loc.display(self.key), self.bytes_pending())

    def block_rows_slice(self, b: int) -> slice:
        """The rows of block `b`."""
        if not 0 <= b < self.n_blocks:
            raise SAError(f"block {b} is out of range for cache group {self.key} (it has {self.n_blocks} blocks).")
        return slice(b * self.block_rows, min(self.n_rows, (b + 1) * self.block_rows))

    def _zarray(self, name: str) -> Any:
        if name not in self._zarrays:
            self._zarrays[name] = self._group[name]
        return self._zarrays[name]

    def write_block(self, b: int, data: Mapping[str, np.ndarray]) -> None:
        """Write the rows of block `b` for every array, then record the block as done."""
        if self._closed:
            raise SAError(f"the writer of cache group {self.key} is closed; open a new one to write more blocks.")
        rows = self.block_rows_slice(b)
        n = rows.stop - rows.start
        if set(data) != set(self.arrays):
            missing = sorted(set(self.arrays) - set(data))
            extra = sorted(set(data) - set(self.arrays))
            raise SAError(f"block {b} of cache group {self.key} must give every array exactly once; "
                          f"missing {missing[:5]}, unexpected {extra[:5]}.")
        from sa.cache.manifest import Float16Overflow, storage_values

        blocks, overflow = {}, {}
        for name in self.arrays:
            arr = np.asarray(data[name])
            if arr.shape != (n, self._widths[name]):
                raise SAError(f"block {b} of array {name!r} in cache group {self.key} has shape {arr.shape}; "
                              f"it must be {(n, self._widths[name])}.")
            stored, peak = storage_values(arr, self.manifest["arrays"][name].get("dtype") or FEATURE_DTYPE)
            if peak is not None:
                overflow[name] = f"values up to {peak:.4g} in magnitude, beyond float16's largest finite value 65504"
            nan = np.isnan(arr)
            if np.isinf(arr).any() or (nan.any(axis=1) & ~nan.all(axis=1)).any():
                row = rows.start + int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
                raise SAError(f"array {name!r} of cache group {self.key} got Inf or NaN values in row {row} (not a whole "
                              f"NaN row of a skipped image); nothing non-finite is stored: fix what computed them.")
            blocks[name] = stored
        if overflow:
            names = ", ".join(sorted(overflow))
            raise Float16Overflow(f"block {b} of cache group {self.key} holds values float16 cannot store in {names} "
                                  f"({next(iter(overflow.values()))}); store those arrays as float32.", overflow)
        if self._lock is not None:
            self._lock.refresh()
        for name, arr in blocks.items():
            self._zarray(name)[rows] = arr
        self._record.mark(b)

    def finalize(self, extra_manifest: Mapping[str, Any] | None = None, *, expect: Mapping[str, str] | None = None,
                 progress: bool = False) -> FeatureGroup:
        """Digest every array and mark the group complete (all blocks must be written); `expect` checks digests first."""
        pending = self.pending_blocks()
        if pending:
            raise SAError(f"cannot complete cache group {self.key}: {len(pending)} of {self.n_blocks} blocks are not written yet "
                          f"(first: block {pending[0]}); write them, then finalize.")
        group = FeatureGroup(self.root, self.key, self.manifest)
        manifest = dict(self.manifest)
        for k, v in (extra_manifest or {}).items():
            if k not in ("status", "arrays", "n", "block_rows", "image_set_id", "backbone_key", "ids_digest"):
                manifest[k] = v
        arrays = {IDS_ARRAY: {"shape": [self.n_rows], "dtype": "str"}, **{n: dict(manifest["arrays"][n]) for n in self.arrays}}
        with make_progress("array", disable=not progress, transient=True) as bar:
            task = bar.add_task(f"digest {self.key}", total=len(arrays))
            for name in arrays:
                arrays[name]["digest"] = group.digest(name)
                bar.advance(task)
        if manifest.get("ids_digest") and arrays[IDS_ARRAY]["digest"] != manifest["ids_digest"]:
            raise DamagedError(f"cache group {self.key} cannot be completed: its ids array does not hold the image list it "
                               f"was created with (a write of it was cut short), so it stays partial; remove it with "
                               f"`sa cache rm {self.key}` and run the same command again.")
        if expect is not None:
            wrong = [n for n in arrays if expect.get(n) != arrays[n]["digest"]]
            if wrong:
                raise DamagedError(f"cache group {self.key} does not match the expected digests for {', '.join(wrong[:5])}"
                                   f"{' ...' if len(wrong) > 5 else ''}; the source is damaged, so the group stays partial.")
        manifest["arrays"] = arrays
        manifest["status"] = "complete"
        manifest["completed"] = now_iso()
        if self._lock is not None:
            self._lock.refresh()
        self._group.update_attributes({"sa": manifest})
        self.manifest = manifest
        self._record.clear()
        self.close()
        index.record(self.root, self.key)
        return self.root.open(self.key)

    def close(self) -> None:
        """Release the writer lock (a partial group stays resumable)."""
        if self._lock is not None:
            self._lock.release()
        self._closed = True

