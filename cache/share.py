"""Copying complete groups between cache roots: `sa cache push KEY DEST` and `sa cache pull KEY SRC`.

A copy never leaves a group that looks complete before it is:

1. only complete source groups are copied (partial ones are refused);
2. the destination takes the group's writer lock and first gets the group's
   `zarr.json` with status "partial" (and `copying_from`), so readers refuse it;
3. every other file is copied: the files are named by the metadata (array
   `zarr.json` + every chunk key of its grid), so no listing of the source is
   needed (HTTP works). Each file lands whole (temp file + rename on local
   disks, one whole-object put on object stores), so a file present with the
   source's size is done and an interrupted copy resumes by skipping it;
4. every array's digest is recomputed at the destination and compared with
   the manifest (a mismatch deletes that array's copy and keeps the group partial);
5. only then the source's `zarr.json` (status "complete") is written, atomically,
   and the destination's lab index is updated.
"""

from __future__ import annotations

import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from sa.cache.lock import WriterLock
from sa.cache.manifest import IDS_ARRAY
from sa.cache.store import CacheRoot, FeatureGroup, open_root
from sa.cache.verify import manifest_digests, mismatched_arrays
from sa.errors import SAError

COPY_THREADS = 8
LOCK_REFRESH_S = 30.0
TMP_PREFIX = ".sa-tmp-"


@dataclass
class CopyReport:
    """What a push/pull did: files copied vs already there (resume), bytes moved."""

    key: str
    source: str
    dest: str
    files: int
    copied: int
    skipped: int
    nbytes: int
    already_complete: bool = False


@dataclass
class _File:
    """One file of a group: path relative to the group, bytes already fetched (metadata), expected size."""

    rel: str
    data: bytes | None = None
    size: int | None = None


def chunk_keys(meta: dict[str, Any]) -> Iterator[str]:
    """Every chunk key of a zarr v3 array with a regular grid (e.g. 'c/3/0'), from its zarr.json."""
    shape = [int(x) for x in meta["shape"]]
    grid = meta.get("chunk_grid") or {}
    if grid.get("name") != "regular":
        raise SAError(f"array metadata with chunk grid {grid.get('name')!r} is not supported for copying; only regular grids are.")
    chunks = [int(x) for x in grid["configuration"]["chunk_shape"]]
    enc = meta.get("chunk_key_encoding") or {"name": "default"}
    sep = (enc.get("configuration") or {}).get("separator", "/" if enc.get("name") == "default" else ".")
    counts = [-(-s // c) for s, c in zip(shape, chunks)]
    for idx in itertools.product(*(range(n) for n in counts)):
        body = sep.join(str(i) for i in idx)
        if enc.get("name") == "default":
            yield "c" + (sep + body if body else "")
        else:
            yield body or "0"


def _plain_chunk_size(meta: dict[str, Any]) -> int | None:
    """Bytes of each chunk file of an uncompressed fixed-size array (bytes codec only), else None."""
    import numpy as np

    codecs = meta.get("codecs") or []
    if len(codecs) != 1 or codecs[0].get("name") != "bytes":
        return None
    try:
        itemsize = np.dtype(meta["data_type"]).itemsize
    except TypeError:
        return None
    return int(np.prod(meta["chunk_grid"]["configuration"]["chunk_shape"])) * itemsize


class GroupCopy:
    """One copy of complete group `key` from `src` to `dst` (see the module docstring for the steps)."""

    def __init__(self, src: CacheRoot, dst: CacheRoot, key: str, *, progress: bool = True,
                 on_file: Callable[[str], None] | None = None) -> None:
        self.src, self.dst = src, dst
        self.key = src.resolve(key)
        self.progress = progress
        self.on_file = on_file
        self.src_dir = src._group_path(self.key)
        self.dst_dir = dst._group_path(self.key)

    # -- checks ---------------------------------------------------------------------------
    def _source_meta(self) -> tuple[bytes, dict]:
        """The source group's zarr.json bytes and manifest; SAError unless it is complete."""
        raw = self.src.loc.fs.cat_file(f"{self.src_dir}/zarr.json")
        manifest = (json.loads(raw).get("attributes") or {}).get("sa") or {}
        if manifest.get("status") != "complete":
            raise SAError(f"cache group {self.key} under {self.src.url} is partial; only complete groups can be pushed or "
                          f"pulled, so finish it first (rerun `sa extract`).")
        return raw, manifest

    def _dest_state(self, manifest: dict) -> bool:
        """True when the destination already holds this group complete with the same digests; SAError on a conflict."""
        existing = self.dst._manifest(self.key)
        if existing is None:
            return False
        if existing.get("status") == "complete":
            if manifest_digests(existing) == manifest_digests(manifest):
                return True
            raise SAError(f"cache group {self.key} already exists under {self.dst.url} with different data; remove it "
                          f"there with `sa cache rm {self.key} --root {self.dst.url}` first.")
        if not existing.get("copying_from"):
            raise SAError(f"cache group {self.key} under {self.dst.url} is a partial extraction, not an interrupted copy; "
                          f"finish it with `sa extract` or remove it with `sa cache rm {self.key} --root {self.dst.url}`.")
        return False

    # -- file list --------------------------------------------------------------------------
    def _files(self, manifest: dict) -> list[_File]:
        """Every file of the group except its own zarr.json: pool groups, array metadata and chunks."""
        fs = self.src.loc.fs
        names = [n for n in manifest.get("arrays") or {}]
        if IDS_ARRAY not in names:
            names.insert(0, IDS_ARRAY)
        files: list[_File] = []
        for pool in sorted({n.split("/", 1)[0] for n in names if "/" in n}):
            try:
                data = fs.cat_file(f"{self.src_dir}/{pool}/zarr.json")
            except FileNotFoundError:
                continue
            files.append(_File(f"{pool}/zarr.json", data, len(data)))
        for name in names:
            try:
                data = fs.cat_file(f"{self.src_dir}/{name}/zarr.json")
            except FileNotFoundError:
                raise SAError(f"array {name!r} of cache group {self.key} under {self.src.url} has no metadata; run "
                              f"`sa cache verify {self.key}` there.") from None
            files.append(_File(f"{name}/zarr.json", data, len(data)))
            meta = json.loads(data)
            size = _plain_chunk_size(meta)
            files.extend(_File(f"{name}/{ck}", None, size) for ck in chunk_keys(meta))
        return files

    def _sizes(self, root: CacheRoot, base: str) -> dict[str, int] | None:
        """Sizes of the files under `base` (relative paths), None when the root cannot be listed."""
        if not root.loc.listable:
            return None
        try:
            found = root.loc.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        prefix = base.rstrip("/") + "/"
        return {p[len(prefix):]: int(d.get("size") or 0) for p, d in found.items() if p.startswith(prefix)}

    def _todo(self, files: list[_File]) -> tuple[list[_File], list[_File]]:
        """Split files into (to copy, already at the destination with the source's size)."""
        src_sizes = self._sizes(self.src, self.src_dir)
        dst_sizes = self._sizes(self.dst, self.dst_dir) or {}
        todo, done = [], []
        for f in files:
            if src_sizes is not None and f.rel in src_sizes:
                f.size = src_sizes[f.rel]
            if f.data is not None or f.rel not in dst_sizes:
                todo.append(f)
                continue
            size = f.size if f.size is not None else self.src.loc.fs.size(f"{self.src_dir}/{f.rel}")
            (done if dst_sizes[f.rel] == size else todo).append(f)
        return todo, done

    # -- copying ------------------------------------------------------------------------------
    def _copy_one(self, f: _File) -> int:
        """Copy one file whole; returns its size."""
        data = f.data
        if data is None:
            try:
                data = self.src.loc.fs.cat_file(f"{self.src_dir}/{f.rel}")
            except FileNotFoundError:
                raise SAError(f"file {f.rel} of cache group {self.key} is missing under {self.src.url}; run "
                              f"`sa cache verify {self.key} --root {self.src.url}` there.") from None
        self.dst.loc.put_atomic(f"{self.dst_dir}/{f.rel}", data, verify=False)
        return len(data)

    def _copy_all(self, todo: list[_File], done: list[_File], lock: WriterLock) -> int:
        """Copy `todo` with a thread pool and a bytes progress bar; returns bytes copied."""
        known = sum(f.size or 0 for f in todo + done)
        moved = 0
        last_refresh = time.monotonic()
        with _bytes_progress(not self.progress) as bar:
            task = bar.add_task(f"copy {self.key}", total=known or None)
            bar.advance(task, sum(f.size or 0 for f in done))
            pool = ThreadPoolExecutor(max_workers=COPY_THREADS, thread_name_prefix="sa-cache-copy")
            try:
                for f, n in zip(todo, pool.map(self._copy_one, todo)):
                    moved += n
                    if f.size is None:
                        bar.update(task, total=(bar.tasks[0].total or 0) + n)
                    bar.advance(task, n)
                    if time.monotonic() - last_refresh > LOCK_REFRESH_S:
                        lock.refresh()
                        last_refresh = time.monotonic()
                    if self.on_file is not None:
                        self.on_file(f.rel)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        return moved

    def _verify(self, manifest: dict, files: list[_File]) -> None:
        """Recompute every digest at the destination; delete the copies of bad arrays and raise."""
        group = FeatureGroup(self.dst, self.key, manifest)
        bad = mismatched_arrays(group, manifest_digests(manifest), f"verify copy of {self.key}", self.progress)
        if bad:
            for name in bad:
                for f in files:
                    if f.rel.startswith(f"{name}/") and f.data is None:
                        try:
                            self.dst.loc.fs.rm_file(f"{self.dst_dir}/{f.rel}")
                        except FileNotFoundError:
                            pass
            raise SAError(f"after copying cache group {self.key} to {self.dst.url}, array(s) {', '.join(bad[:5])} do not match "
                          f"their digests; the copy stays partial. Run `sa cache verify {self.key} --root {self.src.url}` on the "
                          f"source, then rerun the copy (the bad arrays are fetched again).")

    def _clean_tmp(self) -> None:
        """Remove temp files left by a killed copy (local destinations only)."""
        if not self.dst.loc.local:
            return
        for path in self.dst.loc.fs.find(self.dst_dir):
            if path.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
                self.dst.loc.fs.rm_file(path)

    def run(self) -> CopyReport:
        """Copy, verify, then mark complete (see the module docstring)."""
        from sa.cache import index

        self.dst.loc.require_writable(f"copy cache group {self.key} into it")
        raw, manifest = self._source_meta()
        self.dst._ensure_root()
        if self._dest_state(manifest):
            return CopyReport(self.key, self.src.url, self.dst.url, 0, 0, 0, 0, already_complete=True)
        self.dst.loc.fs.makedirs(self.dst_dir, exist_ok=True)
        lock = WriterLock(self.dst.loc.fs, self.dst_dir, self.dst.loc.display(self.key))
        lock.acquire()
        if self._dest_state(manifest):  # another copy finished while we waited for the lock
            lock.release()
            return CopyReport(self.key, self.src.url, self.dst.url, 0, 0, 0, 0, already_complete=True)
        try:
            partial = json.loads(raw)
            partial["attributes"]["sa"] = dict(manifest, status="partial", copying_from=f"{self.src.url}/{self.key}")
            self.dst.loc.put_atomic(f"{self.dst_dir}/zarr.json", json.dumps(partial, indent=2).encode())
            files = self._files(manifest)
            todo, done = self._todo(files)
            moved = self._copy_all(todo, done, lock)
            self._clean_tmp()
            self._verify(manifest, files)
            lock.refresh()
            self.dst.loc.put_atomic(f"{self.dst_dir}/zarr.json", raw)
        finally:
            lock.release()
        index.record(self.dst, self.key)
        return CopyReport(self.key, self.src.url, self.dst.url, len(files) + 1, len(todo) + 1, len(done), moved + len(raw))


def _bytes_progress(disable: bool) -> Any:
    """A rich progress bar in bytes (size done / total, speed, ETA)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TextColumn("ETA"), TimeRemainingColumn(), disable=disable, transient=True)


def copy_group(src: CacheRoot | str, dst: CacheRoot | str, key: str, *, progress: bool = True,
               on_file: Callable[[str], None] | None = None) -> CopyReport:
    """Copy complete group `key` from root `src` to root `dst`, verified, resumable; `on_file(rel)` runs after each file."""
    src_root = open_root(src, read_only=True)
    dst_root = open_root(dst)
    if src_root.url == dst_root.url:
        raise SAError(f"source and destination are the same cache root ({src_root.url}); pass another destination.")
    return GroupCopy(src_root, dst_root, key, progress=progress, on_file=on_file).run()


def push(key: str, dest: CacheRoot | str, *, root: CacheRoot | str | None = None, progress: bool = True,
         on_file: Callable[[str], None] | None = None) -> CopyReport:
    """Copy group `key` from the local cache `root` (default: default_root()) to the shared root `dest`."""
    return copy_group(open_root(root, read_only=True), dest, key, progress=progress, on_file=on_file)


def pull(key: str, src: CacheRoot | str, *, root: CacheRoot | str | None = None, progress: bool = True,
         on_file: Callable[[str], None] | None = None) -> CopyReport:
    """Copy group `key` from the shared root `src` into the local cache `root` (default: default_root())."""
    return copy_group(src, open_root(root), key, progress=progress, on_file=on_file)
