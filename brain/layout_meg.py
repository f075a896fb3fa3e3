"""THINGS-MEG preprocessed epochs (OpenNeuro ds004212 `preprocessed_P{n}-epo.fif`), read through mne.

What the files and the peers' code fix (THINGS-data MEG/step1_preprocessing.py, ATM's pre_possess.ipynb, UBP's
preprocess/process_meg.py, NeuroBridge's preprocess_meg.py):
- An epoch's event code is the 1-based THINGS image number; 999999 marks catch trials, which are dropped.
- mne splits a large epochs file into `..._P1-epo.fif`, `..._P1-epo-1.fif`, ...; reading the first reads all.
- `image_concept_index.csv` (THINGS `Metadata/Concept-specific/`, no header) has one row per THINGS image, in
  image-number order: its 1-based concept number. `image_paths.csv` (`Metadata/Image-specific/`, same order)
  gives each image's path, e.g. `images/aardvark/aardvark_01b.jpg`. Both are searched next to the .fif files,
  in their parents, in the THINGS download beside them (`*/THINGS/Metadata/*/`), near the image folder, or in
  the folder given as `meta`.
- Test images are the images shown more than once; every other trial of a test concept is removed from training
  (the peers' 1654-concept x 12-image training split); rows are in image-number order, as the peers sort them.
- Image ids: with an image folder in the peers' layout (training_images/ + test_images/, as UBP, ATM and
  NeuroBridge copy the images) each image's id is its path there, matched by file name; otherwise the
  `image_paths.csv` path without its leading `images/` (relative to the THINGS folder holding the concept
  folders, `THINGS/Images/` or NeuroBridge's `object_images/`); without that file, `things_image_<number>`.
"""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import numpy as np

from sa.errors import DamagedError, SAError
from sa.brain.layout_base import Layout
from sa.brain.raw import RawSubject, group_repetitions, indexed_split, sorted_read
from sa.brain.things import is_image_root, split_ids

CATCH_EVENT = 999999
CONCEPT_INDEX = "image_concept_index.csv"
IMAGE_PATHS = "image_paths.csv"
_P_NUMBER = re.compile(r"(P\d+|sub-?\d+)", re.IGNORECASE)
_META_PATTERNS = ("{name}", "Metadata/*/{name}", "*/Metadata/*/{name}", "*/*/Metadata/*/{name}", "*/*/*/Metadata/*/{name}")
_SPLIT_PART = re.compile(r"-epo-\d+\.fif$")


def import_mne():
    """Import mne lazily with an install hint (it is the optional extra `meg`)."""
    try:
        import mne
    except ImportError:
        raise SAError("reading .fif epochs needs mne; install it with `pip install 'sa[meg]'` (or pip install mne).") from None
    return mne


def find(path: Path, meta: Path | None = None) -> Layout | None:
    """Detect *-epo.fif files (the path itself or up to three folders deep); split parts belong to their first file."""
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
    if meta is not None:
        layout.extra["meta"] = Path(meta).expanduser()
    return layout


# ---------------------------------------------------------------- the THINGS metadata CSVs


def find_meta(name: str, fif: Path, image_root: Path | None = None, meta: Path | None = None) -> Path | None:
    """A THINGS metadata file: in `meta` (any depth), else near the .fif, its parents, or the image folder."""
    if meta is not None:
        if not meta.is_dir():
            raise SAError(f"--meta {meta} is not a folder; give the THINGS Metadata folder (or the folder holding it).")
        hits = sorted(meta.rglob(name))
        return hits[0] if hits else None
    starts = [fif.parent, *list(fif.parent.parents)[:4]]
    if image_root is not None:
        starts += [image_root, *list(image_root.parents)[:3]]
    for folder in dict.fromkeys(starts):
        shallow = len(folder.parts) <= 2 or folder == Path.home()  # never walk / or /data or ~ three levels deep
        for pattern in _META_PATTERNS[:2] if shallow else _META_PATTERNS:
            hits = sorted(folder.glob(pattern.format(name=name)))
            if hits:
                return hits[0]
    return None


def _read_column(path: Path) -> list[str]:
    """First column of a CSV/TSV."""
    text = path.read_text().splitlines()
    delim = "\t" if text and "\t" in text[0] else ","
    return [r[0].strip() for r in csv.reader(text, delimiter=delim) if r]


def concept_index(path: Path) -> np.ndarray:
    """1-based concept number per THINGS image from image_concept_index.csv (a header row is skipped if present)."""
    rows = _read_column(path)
    if rows and not rows[0].lstrip("-").replace(".", "", 1).isdigit():
        rows = rows[1:]
    try:
        return np.asarray([int(float(r)) for r in rows], dtype=np.int64)
    except ValueError:
        raise SAError(f"{path} must hold one concept number per THINGS image (integers, one per row).") from None


def image_paths(path: Path) -> list[str]:
    """THINGS image path per image from image_paths.csv (a header row is skipped if present)."""
    rows = [r.replace("\\", "/") for r in _read_column(path)]
    if rows and not rows[0].lower().endswith((".jpg", ".jpeg", ".png")):
        rows = rows[1:]
    return rows


# ---------------------------------------------------------------- reading the epochs


def _truncation(caught: list) -> DamagedError | None:
    """mne's warning about a record cut short (a truncated file), as one sentence; None if there is none."""
    for w in caught:
        m = re.search(r"Invalid tag with only (\d+)/(\d+) bytes at position (\d+) in file (.+)$", str(w.message))
        if m:
            bad = Path(m.group(4).strip())
            size = bad.stat().st_size if bad.exists() else 0
            return DamagedError(f"{bad} is truncated (expected at least {int(m.group(3)) + int(m.group(2)):,} bytes, "
                                f"found {size:,}): an interrupted download or copy; download it again.")
    return None


def read_epochs(fif: Path):
    """mne.read_epochs (not preloaded), with a missing split part or a truncated file as one DamagedError sentence."""
    mne = import_mne()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            epochs = mne.read_epochs(fif, preload=False, verbose="warning")
        except FileNotFoundError as exc:
            missing = Path(exc.filename or "")
            if missing != fif and _SPLIT_PART.search(missing.name or ""):
                raise DamagedError(f"{fif} continues in {missing.name}, which is missing (mne splits large epochs files "
                                   f"into -epo.fif, -epo-1.fif, ...): download {missing.name} into {missing.parent}.") from None
            raise
        except Exception as exc:  # noqa: BLE001 - mne fails on a cut or damaged file in many ways
            if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno is not None):
                raise  # the environment, not the file: sa.errors.explain words it
            raise _truncation(caught) or DamagedError(
                f"{fif} could not be read by mne ({type(exc).__name__}: {exc}); it is truncated or damaged: "
                "download it again.") from None
    damaged = _truncation(caught)
    if damaged is not None:
        raise damaged
    return epochs


def _image_ids(nrs: np.ndarray, paths: list[str] | None, image_root: Path | None, where: Path) -> tuple[list[str], list[str]]:
    """Id and concept name of each THINGS image number (see the module docstring)."""
    if paths is None:
        return [f"things_image_{n:05d}" for n in nrs], []
    rel = [paths[n - 1] for n in nrs]
    concepts = [Path(p).parent.name for p in rel]
    if image_root is not None and is_image_root(image_root):
        by_name = {Path(i).name: i for split in ("train", "test") for i in split_ids(image_root, split).tolist()}
        missing = [p for p in rel if Path(p).name not in by_name]
        if missing:
            raise SAError(f"{len(missing)} image(s) of {where.name} are not in {image_root} (first: {missing[0]}); "
                          "point --images at the image folder copied for THINGS-MEG.")
        return [by_name[Path(p).name] for p in rel], concepts
    return ["/".join(p.split("/")[1:]) if p.lower().startswith("images/") else p for p in rel], concepts


def _read(layout: Layout, subject: str, image_root: Path | None) -> RawSubject:
    fif = layout.subjects[subject]
    meta = layout.extra.get("meta")
    index_file = find_meta(CONCEPT_INDEX, fif, image_root, meta)
    if index_file is None:
        where = f"in --meta {meta}" if meta is not None else f"next to {fif}, in its parents or in a THINGS download beside them"
        raise SAError(f"no {CONCEPT_INDEX} found {where}; pass --meta with the THINGS Metadata folder "
                      "(it holds Concept-specific/image_concept_index.csv).")
    concept_of_image = concept_index(index_file)
    paths_file = find_meta(IMAGE_PATHS, fif, image_root, meta)
    paths = image_paths(paths_file) if paths_file else None
    epochs = read_epochs(fif)
    codes = epochs.events[:, 2]
    keep = np.flatnonzero(codes != CATCH_EVENT)
    image_nr = codes[keep]
    if not len(image_nr) or image_nr.max() > len(concept_of_image) or image_nr.min() < 1:
        raise SAError(f"{fif}: event codes {int(image_nr.min()) if len(image_nr) else '-'}..{int(image_nr.max()) if len(image_nr) else '-'} "
                      f"are not THINGS image numbers of {index_file} ({len(concept_of_image)} images).")
    if paths is not None and len(paths) < len(concept_of_image):
        raise SAError(f"{paths_file} has {len(paths)} images but {index_file} {len(concept_of_image)}; use the two files of one THINGS download.")
    notes = [f"{fif.name}: dropped {len(codes) - len(keep)} catch trials (event {CATCH_EVENT}); metadata from {index_file.parent}."]
    if paths is None:
        notes.append(f"no {IMAGE_PATHS} found: image ids are things_image_<number>; add it (or --meta) to align with a cache.")

    nrs, counts = np.unique(image_nr, return_counts=True)
    test_nrs = set(nrs[counts > 1].tolist())
    test_concepts = {int(concept_of_image[n - 1]) for n in test_nrs}
    is_test = np.isin(image_nr, list(test_nrs))
    is_train = ~np.isin(concept_of_image[image_nr - 1], list(test_concepts))
    n_ch, n_t = len(epochs.ch_names), len(epochs.times)

    def read_trials(idx: np.ndarray, channels, window: slice) -> np.ndarray:
        def read_sorted(rows: np.ndarray) -> np.ndarray:
            try:
                data = epochs.get_data(picks=list(channels), item=keep[rows], verbose="error")
            except (ValueError, IndexError, OSError, EOFError) as exc:
                raise DamagedError(f"{fif} (or one of its split parts) could not be read ({type(exc).__name__}: {exc}); "
                                   "it is truncated or damaged: download it again.") from None
            return data[..., window].astype(np.float32)

        return sorted_read(read_sorted, idx)

    splits = {}
    for split, mask in (("train", is_train), ("test", is_test)):
        rows = np.flatnonzero(mask)
        order = rows[np.argsort(image_nr[rows], kind="stable")]  # image-number order
        _, index = group_repetitions(image_nr[order], f"{fif.name} {split}", notes)
        trial_rows = order[index]
        nr_per_image = image_nr[trial_rows[:, 0]].astype(int)
        ids, concepts = _image_ids(nr_per_image, paths, image_root, fif)
        if not concepts:
            concepts = [f"concept_{int(concept_of_image[n - 1]):04d}" for n in nr_per_image]
        splits[split] = indexed_split(read_trials, trial_rows, trial_rows.shape[1], n_ch, n_t, f"{fif}:{split}", ids, concepts)
    return RawSubject(subject, list(epochs.ch_names), np.asarray(epochs.times, dtype=float), splits["train"], splits["test"], notes)
