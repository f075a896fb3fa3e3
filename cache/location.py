"""Where a cache root lives: a local path or an fsspec URL, with its filesystem and zarr store.

Everything else in `sa.cache` goes through `Location`, so no code assumes a
local disk where fsspec works (memory://, s3://, ...). Local paths get zarr's
LocalStore (and a fast direct chunk reader); URLs get zarr's FsspecStore.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec

from sa.errors import SAError


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

    @classmethod
    def parse(cls, url_or_path: str | os.PathLike, read_only: bool = False) -> "Location":
        """Resolve `url_or_path` into a Location (expanding ~ and making local paths absolute)."""
        text = os.fspath(url_or_path)
        if not text:
            raise SAError("the cache root is empty; pass --root PATH or set SA_CACHE.")
        if _is_url(text):
            try:
                fs, base = fsspec.core.url_to_fs(text)
            except (ImportError, ValueError) as exc:
                raise SAError(f"cannot open cache root {text!r}: {exc}; install the fsspec backend for it or use a local path.") from None
            return cls(url=text.rstrip("/"), fs=fs, base=base.rstrip("/"), local=False, read_only=read_only)
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

        return FsspecStore.from_url(self.url, read_only=self.read_only)

    def require_writable(self, what: str) -> None:
        """Raise an SAError if this root was opened read-only."""
        if self.read_only:
            raise SAError(f"cannot {what}: cache root {self.url} was opened read-only; open it with read_only=False.")
