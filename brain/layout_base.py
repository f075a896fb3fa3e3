"""What layout detection finds: the `Layout` record every layout module fills, and where subject folders are."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sa.brain.raw import RawSubject

_SUBJECT_DIR = re.compile(r"^(sub[-_]?\w+|P\d+)$", re.IGNORECASE)


@dataclass
class Layout:
    """A detected dataset: its layout name, subjects (name -> where its files are) and a reader."""

    name: str
    root: Path
    subjects: dict[str, Any]
    reader: Callable[["Layout", str, Path | None], RawSubject]
    problems: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def read(self, subject: str, image_root: Path | None) -> RawSubject:
        """Open one subject's stored recordings (lazily where the format allows)."""
        return self.reader(self, subject, image_root)


def _dirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def subject_dirs(path: Path, depth: int = 3) -> list[Path]:
    """Subject folders (sub-01, P1, ...) under `path`, at the shallowest of up to `depth` levels that has any.

    Three levels reach eeg_encoding's `eeg_dataset/preprocessed_data/sub-XX` from its project folder; image
    folders are not searched.
    """
    if not path.is_dir():
        return []
    level = [path]
    for _ in range(depth):
        children = [c for folder in level for c in _dirs(folder)]
        hits = sorted(c for c in children if _SUBJECT_DIR.match(c.name))
        if hits:
            return hits
        level = [c for c in children if "image" not in c.name.lower()][:200]
    return []
