"""Waiting for another process to finish a group, so two people starting the same backbone extract it once.

The first writer holds the group's writer lock (sa.cache.lock); a second one
gets GroupLocked from `root.create` and may call `wait_for_complete`, which
polls the group's status until it is complete and returns it for reading. If
the group is partial and no live writer holds its lock (the first writer died
or gave up), waiting would never end, so it raises WriterGone: the caller can
then resume the group itself (finished blocks are kept).
"""

from __future__ import annotations

import time
from typing import Any

from sa.cache.keys import is_image_set_id
from sa.cache.lock import WriterLock
from sa.errors import SAError


class WriterGone(SAError):
    """The group is partial and nobody is writing it any more; resume it yourself."""


def _full_key(root: Any, key: str) -> str:
    """A full '<image-set id>/<backbone key>' as given, else resolved among existing groups."""
    wanted = key.strip().strip("/")
    if wanted.count("/") == 1 and is_image_set_id(wanted.split("/")[0]):
        return wanted
    return root.resolve(wanted)


def _writer_alive(root: Any, key: str) -> bool:
    """True when a live (non-stale) writer holds the group's lock."""
    lock = WriterLock(root.loc.fs, root._group_path(key), root.loc.display(key))
    holder = lock.read()
    return holder is not None and not lock.is_stale(holder)


def wait_for_complete(root: Any, key: str, timeout: float | None = 3600.0, poll: float = 2.0) -> Any:
    """Block until group `key` is complete and return it opened (FeatureGroup).

    Raises WriterGone when the group stays partial with no live writer for two
    polls in a row, and SAError after `timeout` seconds (None waits forever).
    A missing group is waited for too (its writer may not have started yet).
    """
    from sa.cache.store import open_root

    cache = open_root(root, read_only=True)
    full = _full_key(cache, key)
    deadline = None if timeout is None else time.monotonic() + timeout
    orphan_polls = 0
    while True:
        status = cache.status(full)
        if status == "complete":
            return cache.open(full)
        if status == "partial" and not _writer_alive(cache, full):
            orphan_polls += 1
            if orphan_polls >= 2:
                raise WriterGone(f"cache group {full} under {cache.url} is partial and no live writer holds its lock; "
                                 f"rerun the extraction to resume it (finished blocks are kept).")
        else:
            orphan_polls = 0
        if deadline is not None and time.monotonic() >= deadline:
            raise SAError(f"cache group {full} under {cache.url} is still {status} after waiting {timeout:.0f} s; "
                          f"check its writer (`sa cache ls`) or wait longer (a larger timeout).")
        time.sleep(poll)
