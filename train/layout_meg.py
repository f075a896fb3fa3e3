"""THINGS-MEG preprocessed epochs (OpenNeuro ds004212 `preprocessed_P{n}-epo.fif`), read through mne.

Documented choices (the metadata format is not fixed by the source):
- An epoch's event code is the 1-based THINGS image number; 999999 marks catch trials, which are dropped.
- `image_concept_index.csv` (THINGS metadata; next to the .fif files or in a parent folder) has one row per
  THINGS image, in image-number order: the 1-based concept number (a header row is skipped if present).
- Optional `image_paths.csv` (THINGS metadata, same order): the image path per THINGS image, e.g.
  `images/aardvark/aardvark_01b.jpg`; it gives the image ids (relative to the folder holding `images/`).
  Without it the ids are `things_image_<number>` and alignment with a cache needs that file.
- Test images are the images shown more than once; the test concepts are their concepts, and every other
  trial of a test concept is removed from training (the 1654-concept x 12-image split of the peers).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from sa.errors import SAError
from sa.train.layouts import Layout
from sa.train.raw import RawSubject, group_repetitions, indexed_split, sorted_read

CATCH_EVENT = 999999
_P_NUMBER = re.compile(r"(P\d+|sub-?\d+)", re.IGNORECASE)


def import_mne():
    """Import mne lazily with an install hint (it is the optional extra `meg`)."""
    try:
        import mne
    except ImportError:
        raise SAError("reading .fif epochs needs mne; install it with `pip install 'sa[meg]'` (or pip install mne).") from None
    return mne


def find(path: Path) -> Layout | None:
    """Detect *-epo.fif files (the path itself or up to three folders deep)."""
    if path.is_file():
        files = [path] if path.name.endswith("-epo.fif") else []
    else:
        files = sorted({f for depth in ("*-epo.fif", "*/*-epo.fif", "*/*/*-epo.fif") for f in path.glob(depth)})
    if not files:
        return None
    subjects = {}
    for f in files:
        m = _P_NUMBER.search(f.name)
        subjects[m.group(1) if m else f.name[: -len("-epo.fif")]] = f
    root = path if path.is_dir() else path.parent
    layout = Layout("things-meg-fif", root, subjects, _read)
    index = _find_meta(files[0].parent, "image_concept_index.csv")
    if index is None:
        layout.problems.append(f"no image_concept_index.csv next to {files[0].parent} or in its parents; "
                               "copy it from the THINGS metadata to map MEG trials to images.")
    return layout


def _find_meta(start: Path, name: str) -> Path | None:
    for folder in [start, *list(start.parents)[:4]]:
        if (folder / name).is_file():
            return folder / name
    return None


def _read_column(path: Path) -> list[str]:
    """First column of a CSV/TSV, without a non-numeric header row for numeric files."""
    text = path.read_text().splitlines()
    delim = "\t" if text and "\t" in text[0] else ","
    rows = [r[0].strip() for r in csv.reader(text, delimiter=delim) if r]
    return rows


def concept_index(path: Path) -> np.ndarray:
    """1-based concept number per THINGS image from image_concept_index.csv."""
    rows = _read_column(path)
    if rows and not rows[0].lstrip("-").isdigit():
        rows = rows[1:]
    try:
        return np.asarray([int(float(r)) for r in rows], dtype=np.int64)
    except ValueError:
        raise SAError(f"{path} must hold one concept number per THINGS image (integers, one per row).") from None


def _read(layout: Layout, subject: str, image_root: Path | None) -> RawSubject:
    mne = import_mne()
    fif = layout.subjects[subject]
    index_file = _find_meta(fif.parent, "image_concept_index.csv")
    if index_file is None:
        raise SAError(f"no image_concept_index.csv next to {fif} or in its parents; copy it from the THINGS metadata.")
    concept_of_image = concept_index(index_file)
    paths_file = _find_meta(fif.parent, "image_paths.csv")
    image_paths = _read_column(paths_file) if paths_file else None
    if image_paths and not image_paths[0].lower().endswith((".jpg", ".jpeg", ".png")):
        image_paths = image_paths[1:]
    epochs = mne.read_epochs(fif, preload=False, verbose="error")
    codes = epochs.events[:, 2]
    keep = np.flatnonzero(codes != CATCH_EVENT)
    image_nr = codes[keep]
    if image_nr.max() > len(concept_of_image) or image_nr.min() < 1:
        raise SAError(f"{fif}: event code {int(image_nr.max())} is not a THINGS image number in {index_file} "
                      f"({len(concept_of_image)} images).")
    notes = [f"{fif.name}: dropped {len(codes) - len(keep)} catch trials (event {CATCH_EVENT})."]
    if image_paths is None:
        notes.append("no image_paths.csv found: image ids are things_image_<number>; add it to align with a cache.")

    def image_id(nr: int) -> str:
        return image_paths[nr - 1].replace("\\", "/") if image_paths else f"things_image_{nr:05d}"

    def concept(nr: int) -> str:
        if image_paths:
            return Path(image_paths[nr - 1].replace("\\", "/")).parent.name
        return f"concept_{int(concept_of_image[nr - 1]):04d}"

    nrs, counts = np.unique(image_nr, return_counts=True)
    test_nrs = set(nrs[counts > 1].tolist())
    test_concepts = {int(concept_of_image[n - 1]) for n in test_nrs}
    is_test = np.isin(image_nr, list(test_nrs))
    is_train = ~np.isin(concept_of_image[image_nr - 1], list(test_concepts))
    n_ch, n_t = len(epochs.ch_names), len(epochs.times)

    def read_trials(idx: np.ndarray, channels, window: slice) -> np.ndarray:
        def read_sorted(rows: np.ndarray) -> np.ndarray:
            data = epochs.get_data(picks=list(channels), item=keep[rows], verbose="error")
            return data[..., window].astype(np.float32)

        return sorted_read(read_sorted, idx)

    splits = {}
    for split, mask in (("train", is_train), ("test", is_test)):
        rows = np.flatnonzero(mask)
        order = rows[np.argsort(image_nr[rows], kind="stable")]  # image-number order
        _, index = group_repetitions(image_nr[order], f"{fif.name} {split}", notes)
        trial_rows = order[index]
        nr_per_image = image_nr[trial_rows[:, 0]]
        splits[split] = indexed_split(
            read_trials, trial_rows, trial_rows.shape[1], n_ch, n_t, f"{fif}:{split}",
            [image_id(int(n)) for n in nr_per_image], [concept(int(n)) for n in nr_per_image],
        )
    return RawSubject(subject, list(epochs.ch_names), np.asarray(epochs.times, dtype=float), splits["train"], splits["test"], notes)
