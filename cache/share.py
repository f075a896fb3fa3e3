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
4. every feature array's digest is recomputed from the bytes as they are
   read (copied chunks from the source, chunks an earlier run already copied
   from the destination), and the copy stops at the first array that does
   not match the manifest: that array's copy is deleted and the group stays
   partial, so corrupt data never travels further than one array. Arrays not
   stored as plain chunks (the ids) are checked at the destination after the
   copy;
5. only then the source's `zarr.json` (status "complete") is written, atomically,
   and the destination's lab index is updated.
"""

from __future__ import annotations

import collections
import itertools
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from sa.cache.lock import WriterLock
from sa.cache.manifest import IDS_ARRAY
from sa.cache.store import CacheRoot, FeatureGroup, open_root
from sa.cache.verify import BlockDigest, manifest_digests, mismatched_arrays
from sa.errors import DamagedError, SAError, writing

COPY_THREADS = 8
WINDOW = 4 * COPY_THREADS  # files in flight (bounds the memory of the ordered digest stream)
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
    array: str | None = None  # the array this chunk belongs to
    chunk: int | None = None  # its row-chunk index (plain 2-D feature arrays only)


@dataclass
class _StreamDigest:
    """The digest of one plain feature array, fed its chunk files in order as they are read."""

    name: str
    expected: Any
    rows: int
    row_bytes: int
    chunk_rows: int
    dtype: np.dtype
    hasher: BlockDigest = field(default_factory=BlockDigest)
    fed: int = 0
    why: str | None = None
    resumed: bool = False  # some chunks came from the destination (copied by an earlier run)

    @property
    def n_chunks(self) -> int:
        return -(-self.rows // self.chunk_rows)

    def feed(self, chunk: int, data: bytes) -> None:
        """Add chunk `chunk` (must come in order); a wrong size is noted as the reason it fails."""
        want = self.chunk_rows * self.row_bytes
        if self.why is None and len(data) != want:
            self.why = f"chunk {chunk} has {len(data)} bytes instead of {want}"
        if self.why is None:
            real = min(self.chunk_rows, self.rows - chunk * self.chunk_rows)
            self.hasher.update(np.frombuffer(data, dtype=self.dtype)[:real * self.row_bytes // self.dtype.itemsize])
        self.fed += 1

    def failure(self) -> str | None:
        """Why the array fails once every chunk was fed (None when it matches)."""
        if self.why is None and self.hasher.hexdigest() != self.expected:
            self.why = "digest differs"
        return self.why


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


def _stream_for(name: str, meta: dict[str, Any], info: dict[str, Any]) -> _StreamDigest | None:
    """A streamed digest for array `name` when its chunk files are its raw rows (plain 2-D float, one chunk column)."""
    if name == IDS_ARRAY or _plain_chunk_size(meta) is None:
        return None
    shape = [int(x) for x in meta.get("shape", [])]
    chunks = [int(x) for x in ((meta.get("chunk_grid") or {}).get("configuration") or {}).get("chunk_shape", [])]
    encoding = meta.get("chunk_key_encoding") or {}
    endian = (meta["codecs"][0].get("configuration") or {}).get("endian", "little")
    if len(shape) != 2 or chunks[1:] != shape[1:] or encoding.get("name", "default") != "default" or endian != "little":
        return None
    dtype = np.dtype(meta["data_type"]).newbyteorder("<")
    if dtype.kind != "f":
        return None
    return _StreamDigest(name, info.get("digest"), shape[0], shape[1] * dtype.itemsize, chunks[0], dtype)


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
        self._streams: dict[str, _StreamDigest] = {}  # set by _files
        self._files_cache: list[_File] = []

    # -- checks ---------------------------------------------------------------------------
    def _source_meta(self) -> tuple[bytes, dict]:
        """The source group's zarr.json bytes and manifest; SAError unless it is complete."""
        self.src._read_manifest(self.key)  # DamagedError (exit 1) when the source's zarr.json is lost or torn
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
                          f"there with `sa cache rm {self.key} --cache {self.dst.url}` first.")
        if not existing.get("copying_from"):
            raise SAError(f"cache group {self.key} under {self.dst.url} is a partial extraction, not an interrupted copy; "
                          f"finish it with `sa extract` or remove it with `sa cache rm {self.key} --cache {self.dst.url}`.")
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
            stream = _stream_for(name, meta, (manifest.get("arrays") or {}).get(name) or {})
            if stream is not None:
                self._streams[name] = stream
            streamed = stream is not None
            files.extend(_File(f"{name}/{ck}", None, size, name, i if streamed else None)
                         for i, ck in enumerate(chunk_keys(meta)))
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
    def _copy_one(self, f: _File) -> bytes:
        """Copy one file whole; returns its bytes (for the streamed digest)."""
        data = f.data
        if data is None:
            try:
                data = self.src.loc.fs.cat_file(f"{self.src_dir}/{f.rel}")
            except FileNotFoundError:
                raise DamagedError(f"cache group {self.key} under {self.src.url} is damaged: its file {f.rel} is missing; "
                                   f"the copy stays partial. Run `sa cache verify {self.key} --cache {self.src.url}` there.") from None
        self.dst.loc.put_atomic(f"{self.dst_dir}/{f.rel}", data, verify=False)
        return data

    def _read_done(self, f: _File) -> bytes:
        """The bytes of a chunk an earlier run copied (read back from the destination for the streamed digest)."""
        return self.dst.loc.fs.cat_file(f"{self.dst_dir}/{f.rel}")

    def _copy_all(self, files: list[_File], todo: list[_File], lock: WriterLock) -> int:
        """Copy `todo` with a thread pool and a bytes progress bar, feeding every chunk of a streamed array to its
        digest in order; stops at the first array that does not match. Returns bytes copied."""
        copy = {id(f) for f in todo}
        work = [f for f in files if id(f) in copy or f.chunk is not None]  # skipped chunks are still hashed
        known = sum(f.size or 0 for f in files)
        moved = 0
        last_refresh = time.monotonic()
        with _bytes_progress(not self.progress) as bar:
            task = bar.add_task(f"copy {self.key}", total=known or None)
            bar.advance(task, sum(f.size or 0 for f in files if id(f) not in copy))
            pool = ThreadPoolExecutor(max_workers=COPY_THREADS, thread_name_prefix="sa-cache-copy")
            try:
                fetch = lambda f: self._copy_one(f) if id(f) in copy else self._read_done(f)  # noqa: E731
                for f, data in _ordered(pool, fetch, work, WINDOW):
                    if f.chunk is not None:
                        self._feed(f, data, resumed=id(f) not in copy)
                    if id(f) not in copy:
                        continue
                    moved += len(data)
                    if f.size is None:
                        bar.update(task, total=(bar.tasks[0].total or 0) + len(data))
                    bar.advance(task, len(data))
                    if time.monotonic() - last_refresh > LOCK_REFRESH_S:
                        lock.refresh()
                        last_refresh = time.monotonic()
                    if self.on_file is not None:
                        self.on_file(f.rel)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        return moved

    def _feed(self, f: _File, data: bytes, *, resumed: bool) -> None:
        """Feed one chunk to its array's digest; after the array's last chunk, stop the copy if it does not match."""
        stream = self._streams[f.array]
        stream.resumed |= resumed
        stream.feed(f.chunk, data)
        if stream.fed == stream.n_chunks and stream.failure() is not None:
            self._drop_array(f.array, self._files_cache)
            where = (f"in what {self.src.url} sent and an earlier run copied to {self.dst.url}" if stream.resumed
                     else f"as read from {self.src.url}")
            raise DamagedError(f"while copying cache group {self.key}, array {f.array!r} did not match its digest "
                               f"({stream.why}) {where}, so the copy stopped and stays partial; its copied chunks were "
                               f"deleted, so rerunning the copy fetches it again (if that fails too, run "
                               f"`sa cache verify {self.key} --cache {self.src.url}` on the source).")

    def _drop_array(self, name: str, files: list[_File]) -> None:
        """Delete the destination's copies of array `name`'s chunks (so a rerun fetches them again)."""
        for f in files:
            if f.rel.startswith(f"{name}/") and f.data is None:
                try:
                    self.dst.loc.fs.rm_file(f"{self.dst_dir}/{f.rel}")
                except FileNotFoundError:
                    pass

    def _verify(self, manifest: dict, files: list[_File]) -> None:
        """Recompute at the destination the digests no stream checked (the ids); delete the copies of bad arrays and raise."""
        group = FeatureGroup(self.dst, self.key, manifest)
        expected = {n: d for n, d in manifest_digests(manifest).items() if n not in self._streams}
        bad = mismatched_arrays(group, expected, f"verify copy of {self.key}", self.progress)
        if bad:
            for name in bad:
                self._drop_array(name, files)
            raise DamagedError(f"after copying cache group {self.key} to {self.dst.url}, array(s) {', '.join(bad[:5])} do not match "
                          f"their digests; the copy stays partial. Run `sa cache verify {self.key} --cache {self.src.url}` on the "
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
            files = self._files_cache = self._files(manifest)
            todo, done = self._todo(files)
            needed = sum(f.size or 0 for f in todo)
            with writing(self.dst.loc.display(self.key), needed):
                moved = self._copy_all(files, todo, lock)
            self._clean_tmp()
            self._verify(manifest, files)
            lock.refresh()
            self.dst.loc.put_atomic(f"{self.dst_dir}/zarr.json", raw)
        finally:
            lock.release()
        index.record(self.dst, self.key)
        return CopyReport(self.key, self.src.url, self.dst.url, len(files) + 1, len(todo) + 1, len(done), moved + len(raw))


def _ordered(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any],
             window: int) -> Iterator[tuple[Any, Any]]:
    """(item, fn(item)) in the order of `items`, at most `window` running or waiting to be consumed."""
    it = iter(items)
    pending: collections.deque[tuple[Any, Future]] = collections.deque()
    for item in itertools.islice(it, window):
        pending.append((item, pool.submit(fn, item)))
    while pending:
        item, fut = pending.popleft()
        result = fut.result()
        for nxt in itertools.islice(it, 1):
            pending.append((nxt, pool.submit(fn, nxt)))
        yield item, result


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
