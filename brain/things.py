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


def _child_dirs(folder: Path, limit: int = 200) -> list[Path]:
    """Visible sub-folders of `folder`, sorted (at most `limit`, so a search never walks a huge tree)."""
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))[:limit]
    except OSError:
        return []


def _imageish(folder: Path) -> bool:
    name = folder.name.lower()
    return "image" in name or "stim" in name


def find_image_root(data_path: Path) -> Path | None:
    """The THINGS image folder that belongs to a dataset, nearest first.

    Looks at the dataset folder and its parent (each: itself, its sub-folders, and the sub-folders of those whose
    name says image/stimuli), then at the grandparent's `image_set/`. This finds the official OSF
    download (`image_set/` beside `preprocessed_data/`), eeg_encoding's `image_set/` beside
    `eeg_dataset/preprocessed_data/`, NICE's `Image_set/image_set/`, ATM's `images_set/`, UBP's
    `Image_set_Resize/` and NeuroBridge's `image_set/`.
    """
    base = data_path if data_path.is_dir() else data_path.parent
    for level, folder in enumerate([base, *list(base.parents)[:2]]):
        if level < 2 and is_image_root(folder):
            return folder
        children = [c for c in _child_dirs(folder) if level < 2 or c.name.lower() == "image_set"]
        for cand in children:
            if is_image_root(cand):
                return cand
        for child in (c for c in children if _imageish(c)):
            for cand in _child_dirs(child):
                if is_image_root(cand):
                    return cand
    return None


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def concept_parent(split_folder: Path) -> Path:
    """The folder holding a split's concept folders: the split folder, or its one wrapper folder.

    ATM's THINGS-MEG copy puts the images one level deeper (`training_images/images/00001_aardvark/...`).
    """
    subdirs = _child_dirs(split_folder)
    if len(subdirs) == 1 and not any(_is_image_file(f) for f in subdirs[0].iterdir()):
        inner = _child_dirs(subdirs[0])
        if inner and not any(_is_image_file(f) for f in split_folder.iterdir()):
            return subdirs[0]
    return split_folder


def split_ids(image_root: Path, split: str) -> np.ndarray:
    """Image ids of a THINGS split in the EEG row order: sorted concept folders, then sorted files."""
    folder = train_dir_name(image_root) if split == "train" else TEST_DIR
    if folder is None or not (image_root / folder).is_dir():
        raise SAError(f"{image_root} has no {'training_images/ (or train_images/)' if split == 'train' else 'test_images/'} folder; point --images at the THINGS image root.")
    parent = concept_parent(image_root / folder)
    prefix = parent.relative_to(image_root).as_posix()
    ids = []
    for concept_dir in _child_dirs(parent, limit=1 << 30):
        files = sorted(f.name for f in concept_dir.iterdir() if _is_image_file(f))
        ids += [f"{prefix}/{concept_dir.name}/{name}" for name in files]
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
