"""The lab index: one small JSON object, `<root>/sa-index.json`, summarising every complete group.

Why: listing a remote root means one request per folder (and an HTTP static
server has no listing at all), so `sa cache ls` on a remote root reads this
one file instead. Each entry is what `ls` shows (the GroupInfo fields without
the full manifest).

Choice (concurrency): re-read-merge-write under a short lock. A writer that
completes or removes a group takes `<root>/sa-index.lock` (an exclusive
create, the same mechanism as the group writer lock; stale after 60 s or when
its pid is dead on this host), re-reads the index, changes only its own entry
and writes the whole file atomically (temp file + rename on local disks;
whole-object put + read-back on object stores). Two completions at once
therefore serialise on the lock and neither entry is lost. `sa cache reindex`
rebuilds the file from the groups themselves (a root that can be listed).
Readers never take the lock: they see the old or the new file.
"""

from __future__ import annotations

import json
import time
import warnings
from typing import Any, NamedTuple, Protocol

from sa.cache.location import Location
from sa.cache.lock import GroupLocked, WriterLock
from sa.cache.manifest import GroupInfo, now_iso
from sa.errors import SAError

class IndexedRoot(Protocol):
    """What the index reads of a cache root (sa.cache.store.CacheRoot is one; the store imports this module)."""

    loc: Location

    @property
    def url(self) -> str: ...
    def info(self, key: str) -> GroupInfo: ...
    def list(self, *, use_index: bool | None = None) -> list[GroupInfo]: ...
    def require_exists(self) -> None: ...

INDEX_NAME = "sa-index.json"
INDEX_LOCK = "sa-index.lock"
INDEX_FORMAT = "sa-feature-index"
LOCK_STALE_S = 60.0
LOCK_WAIT_S = 30.0
ENTRY_FIELDS = ("key", "image_set_id", "backbone_key", "backbone", "layers", "pools", "n", "nbytes", "status", "created")


class IndexStale(UserWarning):
    """The lab index could not be updated; `sa cache reindex` repairs it."""


class IndexLock(WriterLock):
    """The short exclusive lock around a read-merge-write of the index (polls instead of failing at once)."""

    def __init__(self, root: IndexedRoot) -> None:
        super().__init__(root.loc.fs, root.loc.base, root.loc.display(INDEX_NAME), stale_after=LOCK_STALE_S)
        self.path = root.loc.path(INDEX_LOCK)

    def acquire_waiting(self, timeout: float = LOCK_WAIT_S, poll: float = 0.05) -> None:
        """Take the lock, retrying while another live writer holds it, for at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.acquire()
                return
            except GroupLocked:
                if time.monotonic() >= deadline:
                    raise SAError(f"the index {self.display} stayed locked for {timeout:.0f} s; if no one is writing, delete "
                                  f"{self.path} and run `sa cache reindex`.") from None
                time.sleep(poll)


def entry_of(info: GroupInfo) -> dict[str, Any]:
    """The index entry of one group: the fields `sa cache ls` shows, plus when it completed."""
    entry = {f: getattr(info, f) for f in ENTRY_FIELDS}
    entry["completed"] = str(info.manifest.get("completed", ""))
    return entry


def info_of(entry: dict[str, Any]) -> GroupInfo:
    """A GroupInfo from an index entry (its `manifest` holds only the entry; `root.info` reads the full one)."""
    return GroupInfo(**{f: entry[f] for f in ENTRY_FIELDS}, manifest=dict(entry))


def read_index(root: IndexedRoot) -> dict[str, dict[str, Any]] | None:
    """Entries of the root's index by key, or None when the root has no index."""
    loc = root.loc
    try:
        raw = loc.fs.cat_file(loc.path(INDEX_NAME))
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        doc = json.loads(raw)
        groups = doc["groups"]
        if doc.get("format") != INDEX_FORMAT or not isinstance(groups, dict):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise SAError(f"the index {loc.display(INDEX_NAME)} is damaged; rebuild it with `sa cache reindex {root.url}` "
                      f"(on a writable copy of the root).") from None
    return groups


def _write(root: IndexedRoot, groups: dict[str, dict[str, Any]]) -> None:
    """Write the whole index atomically."""
    doc = {"format": INDEX_FORMAT, "version": 1, "updated": now_iso(), "groups": dict(sorted(groups.items()))}
    root.loc.put_atomic(root.loc.path(INDEX_NAME), json.dumps(doc, indent=1, sort_keys=True).encode())


def _update(root: IndexedRoot, key: str, entry: dict[str, Any] | None) -> None:
    """Set (or drop, entry=None) one key's entry by re-read-merge-write under the index lock."""
    lock = IndexLock(root)
    lock.acquire_waiting()
    try:
        groups = read_index(root)
        if groups is None and entry is None:
            return  # no index to drop the key from; do not create one
        groups = groups or {}
        if entry is None:
            groups.pop(key, None)
        else:
            groups[key] = entry
        _write(root, groups)
    finally:
        lock.release()


def record(root: IndexedRoot, key: str) -> None:
    """Add/refresh the entry of complete group `key` (called by finalize and by push/pull); warns instead of failing."""
    try:
        _update(root, key, entry_of(root.info(key)))
    except (SAError, OSError) as exc:
        warnings.warn(f"group {key} is complete but the index of {root.url} was not updated ({exc}); "
                      f"run `sa cache reindex {root.url}`.", IndexStale, stacklevel=2)


def forget(root: IndexedRoot, key: str) -> None:
    """Drop the entry of removed group `key`; warns instead of failing."""
    try:
        _update(root, key, None)
    except (SAError, OSError) as exc:
        warnings.warn(f"group {key} was removed but the index of {root.url} was not updated ({exc}); "
                      f"run `sa cache reindex {root.url}`.", IndexStale, stacklevel=2)


class Rebuilt(NamedTuple):
    """What `rebuild` found: the complete groups it indexed, and the damaged groups it left out (to be said)."""

    complete: list[GroupInfo]
    damaged: list[GroupInfo]


def rebuild(root: IndexedRoot) -> Rebuilt:
    """Rewrite the index from the groups on the root (which must exist and be listable and writable).

    Damaged groups (zarr.json lost or torn, or listed by the old index but gone) are left out and returned,
    so the caller says so instead of dropping them silently.
    """
    root.loc.require_writable("rebuild the index")
    if not root.loc.listable:
        raise SAError(f"cannot rebuild the index of {root.url}: it cannot be listed; run `sa cache reindex` on the "
                      f"folder or bucket the server publishes.")
    root.require_exists()
    lock = IndexLock(root)
    lock.acquire_waiting()
    try:
        infos = root.list(use_index=False)
        complete = [i for i in infos if i.status == "complete"]
        _write(root, {i.key: entry_of(i) for i in complete})
    finally:
        lock.release()
    return Rebuilt(complete, [i for i in infos if i.status == "damaged"])
