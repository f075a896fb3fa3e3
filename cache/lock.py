"""The writer lock of a cache group, so two processes starting the same extraction cannot corrupt it.

Choice: the lock is one object, `<group>/writer.lock`, created with an atomic
exclusive create (fsspec mode "xb": O_EXCL on local disks, conditional put on
object stores that support it; check-then-write plus reading the token back
on backends without it). It holds JSON {host, pid, user, since,
refreshed, token}. While held, a heartbeat thread rewrites it every
`stale_after / 4` seconds, and so does every `write_block` (refresh), each
checking that the token is still its own, so a writer whose lock was broken
stops instead of writing on; the heartbeat keeps the lock fresh through long
blocks and while dask workers write for a client that writes nothing itself.
A lock counts as stale, and is broken by the next writer, when its pid is
dead on this same host, or, for a holder on another host, when it has not
been refreshed for `stale_after` seconds (env SA_LOCK_STALE_S, default 900).
A live process on this host is never stale.
Helpers that write blocks of a group their client locked (dask workers) use
`CacheRoot.open_writer`, which takes no lock; blocks never share a chunk, so
they cannot lose each other's data.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from sa.errors import SAError

LOCK_NAME = "writer.lock"


class GroupLocked(SAError):
    """Another live writer holds the group's writer lock."""


def stale_after_default() -> float:
    """Seconds without a refresh after which a lock is considered abandoned (env SA_LOCK_STALE_S)."""
    return float(os.environ.get("SA_LOCK_STALE_S", "900"))


def _pid_alive(pid: int) -> bool:
    """True when `pid` runs on this host (zombies count as dead)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _iso(t: float) -> str:
    """A UTC ISO time for messages."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


class WriterLock:
    """The exclusive writer lock object of one group (see the module docstring)."""

    def __init__(self, fs: Any, group_path: str, display: str, stale_after: float | None = None) -> None:
        self.fs = fs
        self.path = f"{group_path}/{LOCK_NAME}"
        self.display = display
        self.stale_after = stale_after_default() if stale_after is None else stale_after
        self.token: str | None = None
        self._beat: tuple[threading.Thread, threading.Event] | None = None

    def _record(self, since: float) -> dict[str, Any]:
        """The JSON this process writes into the lock."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "user": getpass.getuser(),
                "since": since, "refreshed": time.time(), "token": self.token}

    def read(self) -> dict[str, Any] | None:
        """The current holder record, None when there is no lock, {} when it cannot be parsed."""
        try:
            raw = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
            return record if isinstance(record, dict) else {}
        except ValueError:
            return {}

    def is_stale(self, record: dict[str, Any]) -> bool:
        """True when the holder's pid is dead on this host, or a holder elsewhere has not refreshed it in time."""
        if not record:
            return True
        if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int):
            return not _pid_alive(record["pid"])
        return time.time() - float(record.get("refreshed", 0)) > self.stale_after

    def describe(self, record: dict[str, Any]) -> str:
        """'pid 123 on host h (user u) since <time>' for messages."""
        if not record:
            return "an unknown writer"
        return (f"pid {record.get('pid')} on host {record.get('host')} (user {record.get('user')}) "
                f"since {_iso(float(record.get('since', 0)))}")

    def _try_create(self) -> bool:
        """Atomically create the lock object; False if it already exists."""
        self.token = uuid.uuid4().hex
        payload = json.dumps(self._record(time.time())).encode()
        try:
            with self.fs.open(self.path, "xb") as f:
                f.write(payload)
        except FileExistsError:
            self.token = None
            return False
        except (NotImplementedError, ValueError):
            # A backend without exclusive create: check-then-write; acquire() reads the token back.
            if self.fs.exists(self.path):
                self.token = None
                return False
            self.fs.pipe_file(self.path, payload)
        return True

    def _read_settled(self) -> dict[str, Any] | None:
        """Read the lock, retrying briefly while a fresh lock is still empty (its creator is mid-write)."""
        record = self.read()
        for _ in range(10):
            if record != {}:
                return record
            time.sleep(0.1)
            record = self.read()
        return record

    def acquire(self) -> None:
        """Take the lock, breaking a stale one; GroupLocked says who holds it and since when."""
        for _ in range(3):
            if self._try_create():
                if (self.read() or {}).get("token") == self.token:
                    self._start_heartbeat()
                    return
                self.token = None
                continue
            holder = self._read_settled()
            if holder is None:
                continue
            if self.is_stale(holder):
                self.fs.rm_file(self.path)
                continue
            raise GroupLocked(
                f"cache group {self.display} is being written by {self.describe(holder)}; wait for it to finish, "
                f"or if that writer is gone delete {self.display}/{LOCK_NAME} (it expires after {self.stale_after:.0f} s without a write).")
        raise GroupLocked(f"could not take the writer lock of cache group {self.display}: other writers keep taking it; retry in a moment.")

    def refresh(self) -> None:
        """Rewrite the lock with a new refresh time; GroupLocked if it is no longer ours."""
        holder = self.read()
        if not holder or holder.get("token") != self.token:
            who = self.describe(holder) if holder else "nobody (it was deleted)"
            raise GroupLocked(f"lost the writer lock of cache group {self.display}: it is now held by {who}; stop this writer and rerun to resume.")
        record = dict(holder, refreshed=time.time())
        self.fs.pipe_file(self.path, json.dumps(record).encode())

    def _start_heartbeat(self) -> None:
        """Refresh the lock in the background while it is held (stops when released or lost)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.stale_after / 4):
                try:
                    self.refresh()
                except Exception:  # lost or unreachable: the next write_block/finalize reports it
                    return

        thread = threading.Thread(target=beat, name=f"sa-lock-heartbeat {self.display}", daemon=True)
        thread.start()
        self._beat = (thread, stop)

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours."""
        if self._beat is not None:
            self._beat[1].set()
            self._beat = None
        if self.token is None:
            return
        holder = self.read()
        if holder and holder.get("token") == self.token:
            try:
                self.fs.rm_file(self.path)
            except FileNotFoundError:
                pass
        self.token = None

    def held_by_other(self) -> dict[str, Any] | None:
        """The record of a live writer holding this lock (not us), else None."""
        holder = self.read()
        if holder is None or (holder and holder.get("token") == self.token):
            return None
        return None if self.is_stale(holder) else holder
