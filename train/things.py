"""THINGS image folders: the row order of the EEG/MEG files, image ids and concept names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from sa.errors import SAError

TRAIN_DIRS = ("training_images", "train_images")
TEST_DIR = "test_images"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
_NUMBER_PREFIX = re.compile(r"^\d+_")


def concept_of_folder(folder: str) -> str:
    """Concept name of a THINGS folder: '00001_aardvark' -> 'aardvark' (train and test numberings differ)."""
    return _NUMBER_PREFIX.sub("", folder)


def concepts_of_ids(ids: Iterable[str]) -> np.ndarray:
    """Concept of each image id: its parent folder without the number prefix."""
    return np.asarray([concept_of_folder(Path(i).parent.name) for i in ids], dtype=str)


def train_dir_name(image_root: Path) -> str | None:
    """'training_images' or 'train_images', whichever the image root holds."""
    for name in TRAIN_DIRS:
        if (image_root / name).is_dir():
            return name
    return None


def is_image_root(path: Path) -> bool:
    """True when `path` holds a THINGS train folder and test_images/."""
    return path.is_dir() and train_dir_name(path) is not None and (path / TEST_DIR).is_dir()


def find_image_root(data_path: Path) -> Path | None:
    """The THINGS image folder next to a dataset: the folder itself, its images/, its parent (or its images/), or a sibling."""
    base = data_path if data_path.is_dir() else data_path.parent
    parent = base.parent
    candidates = [base, base / "images", parent, parent / "images"]
    candidates += sorted(p for p in parent.iterdir() if p.is_dir() and p != base)
    for cand in candidates:
        if is_image_root(cand):
            return cand
    return None


def split_ids(image_root: Path, split: str) -> np.ndarray:
    """Image ids of a THINGS split in the EEG row order: sorted concept folders, then sorted files."""
    folder = train_dir_name(image_root) if split == "train" else TEST_DIR
    if folder is None or not (image_root / folder).is_dir():
        raise SAError(f"{image_root} has no {'training_images/ (or train_images/)' if split == 'train' else 'test_images/'} folder; point --images at the THINGS image root.")
    ids = []
    for concept_dir in sorted(p for p in (image_root / folder).iterdir() if p.is_dir()):
        files = sorted(f.name for f in concept_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        ids += [f"{folder}/{concept_dir.name}/{name}" for name in files]
    return np.asarray(ids, dtype=str)


def normalise_ids(paths: Sequence[str], image_root: Path | None) -> np.ndarray:
    """Image paths stored by a dataset (absolute or relative, any separator) as ids relative to the image root.

    The path is cut at its THINGS split folder; 'training_images' and 'train_images'
    are mapped to whichever of the two the image root holds.
    """
    train_name = train_dir_name(image_root) if image_root is not None else None
    out = []
    for raw in paths:
        parts = str(raw).replace("\\", "/").split("/")
        cut = next((i for i, p in enumerate(parts) if p in TRAIN_DIRS + (TEST_DIR,)), None)
        if cut is None:
            out.append("/".join(p for p in parts if p not in ("", ".")))
            continue
        parts = parts[cut:]
        if parts[0] in TRAIN_DIRS and train_name is not None:
            parts[0] = train_name
        out.append("/".join(parts))
    return np.asarray(out, dtype=str)
