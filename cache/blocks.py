"""The per-block progress record of a partial group: one marker object per finished block.

Each finished block `b` gets an empty object `<group>/_progress/<b>`, written
after the block's data. Writers of different blocks never touch the same
object (no shared JSON rewritten by two processes), so concurrent writers
cannot lose each other's records, and a rerun after a crash skips exactly the
blocks whose markers exist (a block killed mid-write has none and is redone).
"""

from __future__ import annotations

from typing import Any

PROGRESS_DIR = "_progress"


class BlockRecord:
    """Markers of the finished blocks of one group."""

    def __init__(self, fs: Any, group_path: str) -> None:
        self.fs = fs
        self.dir = f"{group_path}/{PROGRESS_DIR}"

    def ensure(self) -> None:
        """Create the marker folder (local disks need it before the first marker)."""
        self.fs.makedirs(self.dir, exist_ok=True)

    def mark(self, block: int) -> None:
        """Record block `block` as fully written."""
        self.fs.pipe_file(f"{self.dir}/{block:06d}", b"")

    def done(self) -> set[int]:
        """Indices of the blocks recorded as finished."""
        try:
            self.fs.invalidate_cache(self.dir)  # s3fs/gcsfs cache listings; workers add markers meanwhile
            names = self.fs.ls(self.dir, detail=False)
        except FileNotFoundError:
            return set()
        out = set()
        for name in names:
            stem = name.rstrip("/").rsplit("/", 1)[-1]
            if stem.isdigit():
                out.add(int(stem))
        return out

    def clear(self) -> None:
        """Delete the record (after the group is complete)."""
        try:
            self.fs.rm(self.dir, recursive=True)
        except FileNotFoundError:
            pass
