"""Where a cache root lives: a local path or an fsspec URL, with its filesystem and zarr store.

Everything else in `sa.cache` goes through `Location`, so no code assumes a
local disk where fsspec works (memory://, s3://, ...). Local paths get zarr's
LocalStore (and a fast direct chunk reader); URLs get zarr's FsspecStore.
HTTP(S) roots are always read-only and never listed (see sa.cache.remote).
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec

from sa.cache.remote import is_listable_protocol, is_read_only_protocol, url_to_fs
from sa.errors import SAError

ENV_VAR = "SA_CACHE"
DEFAULT_ROOT = "~/.cache/sa/features"


def default_root() -> str:
    """The cache root used when none is given: $SA_CACHE, else ~/.cache/sa/features (the one place this is defined)."""
    return os.environ.get(ENV_VAR) or os.path.expanduser(DEFAULT_ROOT)


def _is_url(text: str) -> bool:
    """True for 'proto://...' strings other than file://."""
    return "://" in text and not text.startswith("file://")


@dataclass
class Location:
    """A cache root: its display URL, fsspec filesystem, base path inside it, and read-only flag."""

    url: str
    fs: Any
    base: str
    local: bool
    read_only: bool
    listable: bool = True
    storage_options: dict | None = None

    @classmethod
    def parse(cls, url_or_path: str | os.PathLike, read_only: bool = False,
              storage_options: dict | None = None) -> "Location":
        """Resolve `url_or_path` into a Location (expanding ~, making local paths absolute; HTTP(S) forced read-only)."""
        text = os.fspath(url_or_path)
        if not text:
            raise SAError("the cache root is empty; pass --cache PATH or set SA_CACHE.")
        if _is_url(text):
            fs, base = url_to_fs(text, storage_options)
            return cls(url=text.rstrip("/"), fs=fs, base=base.rstrip("/"), local=False,
                       read_only=read_only or is_read_only_protocol(text), listable=is_listable_protocol(text),
                       storage_options=dict(storage_options or {}))
        if text.startswith("file://"):
            text = text[len("file://"):]
        path = os.path.abspath(os.path.expanduser(text))
        return cls(url=path, fs=fsspec.filesystem("file"), base=path, local=True, read_only=read_only)

    def path(self, *parts: str) -> str:
        """The filesystem path of `parts` under the root."""
        return posixpath.join(self.base, *parts) if parts else self.base

    def display(self, *parts: str) -> str:
        """A user-facing path/URL of `parts` under the root (for messages)."""
        return "/".join([self.url, *parts]) if parts else self.url

    def zarr_store(self) -> Any:
        """A zarr store rooted at the cache root (read-only when the root is)."""
        if self.local:
            from zarr.storage import LocalStore

            return LocalStore(self.base, read_only=self.read_only)
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(self.url, storage_options=self.storage_options or None, read_only=self.read_only)

    def require_writable(self, what: str) -> None:
        """Raise an SAError if this root was opened read-only."""
        if self.read_only and is_read_only_protocol(self.url):
            raise SAError(f"cannot {what}: cache root {self.url} is served over HTTP, which is read-only; write to the folder "
                          f"or bucket the server publishes (e.g. `sa cache push KEY /that/folder`).")
        if self.read_only:
            raise SAError(f"cannot {what}: cache root {self.url} was opened read-only; open it with read_only=False.")

    def put_atomic(self, path: str, data: bytes, *, verify: bool = True) -> None:
        """Write `data` to `path` so readers see the old or the new bytes, never a torn file.

        Local disks: a temp file in the same folder, then os.replace. Object
        stores (whole-object puts are atomic) have no cheap rename: put, then
        (verify=True) read back and compare (write-then-verify).
        """
        self.require_writable(f"write {path}")
        if self.local:
            import tempfile

            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".sa-tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            return
        self.fs.pipe_file(path, data)
        if not verify:
            return
        self.fs.invalidate_cache(path)
        if self.fs.cat_file(path) != data:
            raise SAError(f"writing {path} on {self.url} did not stick (another writer replaced it); retry.")
