"""Finding which on-disk layout a brain dataset uses, and reading the THINGS-EEG2 / THINGS-MEG file layouts.

Layouts (name: what is on disk):
  things-eeg2     sub-XX/preprocessed_eeg_{training,test}.npy: dicts saved with np.save (official files)
  things-pickle   the same names (or preprocessed_meg_*) written with pickle.dump (NICE, ATM; key
                  preprocessed_eeg_data or meg_data, 4-D or 5-D arrays)
  ubp             sub-XX/{train,test}.pt torch dicts: eeg (float16), img, label, ch_names, times
  neurobridge     sub-XX/{train,test}.npy (5-D float16) + info.json (ch_names, times or sfreq/tmin)
  things-meg-fif  preprocessed_P{n}-epo.fif (OpenNeuro ds004212) + image_concept_index.csv (layout_meg.py)
  array           a lab's own arrays + CSV/TSV tables of image ids (layout_array.py)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sa.errors import SAError
from sa.train.pickled import load_mapped
from sa.train.raw import RawSubject, array_split
from sa.train.things import concepts_of_ids, normalise_ids, split_ids

LAYOUTS = ("things-eeg2", "things-pickle", "ubp", "neurobridge", "things-meg-fif", "array")
_SUBJECT_DIR = re.compile(r"^(sub[-_]?\w+|P\d+)$", re.IGNORECASE)
_DATA_KEYS = ("preprocessed_eeg_data", "meg_data", "eeg_data", "preprocessed_meg_data", "data", "eeg")


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


# ---------------------------------------------------------------- detection


def detect(path: Path, layout: str = "auto") -> Layout:
    """Detect (or, with `layout`, force) the layout of the dataset at `path`."""
    from sa.train import layout_array, layout_meg

    if not path.exists():
        raise SAError(f"{path} does not exist; give the folder that holds the subjects' files.")
    if layout not in ("auto", *LAYOUTS):
        raise SAError(f"unknown layout {layout!r}; use auto or one of: {', '.join(LAYOUTS)}.")
    finders: dict[str, Callable[[Path], Layout | None]] = {
        "things-eeg2": lambda p: _find_things_files(p, official=True),
        "things-pickle": lambda p: _find_things_files(p, official=False),
        "ubp": _find_ubp,
        "neurobridge": _find_neurobridge,
        "things-meg-fif": layout_meg.find,
        "array": layout_array.find,
    }
    order = LAYOUTS if layout == "auto" else (layout,)
    for name in order:
        found = finders[name](path)
        if found is not None:
            return found
    if layout != "auto":
        raise SAError(f"{path} does not look like the {layout} layout; run `sa data check {path}` to detect it.")
    raise SAError(
        f"no known brain-data layout found in {path}; expected sub-XX/preprocessed_eeg_training.npy (THINGS-EEG2, "
        "NICE/ATM), sub-XX/train.pt (UBP), sub-XX/train.npy + info.json (NeuroBridge), *-epo.fif (THINGS-MEG) "
        "or arrays with CSV/TSV image tables (see `sa data check --help`)."
    )


def subject_dirs(path: Path) -> list[Path]:
    """Subject folders (sub-01, P1, ...) directly under `path` or under one of its child folders."""
    if not path.is_dir():
        return []
    direct = sorted(p for p in path.iterdir() if p.is_dir() and _SUBJECT_DIR.match(p.name))
    if direct:
        return direct
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        nested = sorted(p for p in child.iterdir() if p.is_dir() and _SUBJECT_DIR.match(p.name))
        if nested:
            return nested
    return []


def _first_match(folder: Path, patterns: tuple[str, ...]) -> Path | None:
    for pattern in patterns:
        hits = sorted(folder.glob(pattern))
        if hits:
            return hits[0]
    return None


_THINGS_TRAIN = ("preprocessed_eeg_training.npy", "preprocessed_eeg_training.pkl", "preprocessed_eeg_training*",
                 "preprocessed_meg_training*")
_THINGS_TEST = ("preprocessed_eeg_test.npy", "preprocessed_eeg_test.pkl", "preprocessed_eeg_test*", "preprocessed_meg_test*")


def _is_npy(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(6) == b"\x93NUMPY"


def _pair_subjects(dirs: list[Path], train_pat: tuple[str, ...], test_pat: tuple[str, ...]) -> tuple[dict, list[str]]:
    """Subject -> (train file, test file); a problem line for each subject folder missing one of them."""
    subjects, problems = {}, []
    for d in dirs:
        train, test = _first_match(d, train_pat), _first_match(d, test_pat)
        if train is None and test is None:
            continue
        if train is None or test is None:
            missing = "training" if train is None else "test"
            problems.append(f"{d.name}: no {missing} file in {d} (expected {(train_pat if train is None else test_pat)[0]}).")
        subjects[d.name] = (train, test)
    return subjects, problems


def _find_things_files(path: Path, official: bool) -> Layout | None:
    subjects, problems = _pair_subjects(subject_dirs(path), _THINGS_TRAIN, _THINGS_TEST)
    if not subjects:
        return None
    sample = next(f for pair in subjects.values() for f in pair if f is not None)
    if _is_npy(sample) != official:
        return None
    return Layout("things-eeg2" if official else "things-pickle", path, subjects, _read_things_dict, problems)


def _find_ubp(path: Path) -> Layout | None:
    subjects, problems = _pair_subjects(subject_dirs(path), ("train.pt",), ("test.pt",))
    return Layout("ubp", path, subjects, _read_ubp, problems) if subjects else None


def _find_neurobridge(path: Path) -> Layout | None:
    dirs = [d for d in subject_dirs(path) if not any(d.glob("train.csv")) and not any(d.glob("train.tsv"))]
    subjects, problems = _pair_subjects(dirs, ("train.npy",), ("test.npy",))
    return Layout("neurobridge", path, subjects, _read_neurobridge, problems) if subjects else None


# ---------------------------------------------------------------- readers


def _files(layout: Layout, subject: str) -> tuple[Path, Path]:
    train, test = layout.subjects[subject]
    for f, what in ((train, "training"), (test, "test")):
        if f is None:
            raise SAError(f"subject {subject} has no {what} file in {layout.root / subject}; add it or leave the subject out.")
    return train, test


def _default_times(n_times: int, notes: list[str], what: str) -> np.ndarray:
    """0..1 s epochs (the peers' re-preprocessed windows) when the file stores no time axis."""
    notes.append(f"{what} stores no time axis; assumed 0..1 s at {n_times} Hz.")
    return np.arange(n_times) / float(n_times)


def _default_channels(n: int, notes: list[str], what: str) -> list[str]:
    notes.append(f"{what} stores no channel names; named them ch001..ch{n:03d}.")
    return [f"ch{i + 1:03d}" for i in range(n)]


def things_ids(image_root: Path | None, split: str, n_rows: int, source: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Ids and concepts of a THINGS split from the image folder (None, None without one); SAError on a count mismatch."""
    if image_root is None:
        return None, None
    ids = split_ids(image_root, split)
    if len(ids) != n_rows:
        raise SAError(
            f"{source} has {n_rows} image rows but {image_root} has {len(ids)} {split} images; "
            "point --images at the image folder this dataset was recorded with."
        )
    return ids, concepts_of_ids(ids)


def _read_things_dict(layout: Layout, subject: str, image_root: Path | None) -> RawSubject:
    train_file, test_file = _files(layout, subject)
    notes: list[str] = []
    splits, meta = {}, {}
    for split, f in (("train", train_file), ("test", test_file)):
        d = load_mapped(f)
        if isinstance(d, np.ndarray) and d.dtype.hasobject and d.shape == ():
            d = d.item()
        if not isinstance(d, dict):
            raise SAError(f"{f} holds a {type(d).__name__}, not a dict with preprocessed_eeg_data/ch_names/times; check the layout.")
        key = next((k for k in _DATA_KEYS if k in d), None)
        if key is None:
            raise SAError(f"{f} has keys {sorted(d)} but none of {', '.join(_DATA_KEYS)}; it is not a THINGS data file.")
        raw = array_split(d[key], f"{f}:{key}")
        raw.image_ids, raw.concepts = things_ids(image_root, split, raw.n_images, str(f))
        splits[split], meta[split] = raw, d
    return _subject(subject, splits, meta, notes, layout.name)


def _subject(subject: str, splits: dict, meta: dict, notes: list[str], what: str) -> RawSubject:
    """Assemble a RawSubject from train/test splits and their metadata dicts (ch_names, times)."""
    d = meta["train"]
    n_ch, n_t = splits["train"].n_channels, splits["train"].n_times
    ch = d.get("ch_names")
    ch_names = [str(c) for c in ch] if ch is not None else _default_channels(n_ch, notes, what)
    times = np.asarray(d["times"], dtype=float) if d.get("times") is not None else _default_times(n_t, notes, what)
    return RawSubject(subject, ch_names, times, splits["train"], splits["test"], notes)


def _torch_load(path: Path) -> dict:
    """torch.load a UBP file memory-mapped where the file format allows it."""
    import torch

    for kwargs in ({"mmap": True, "weights_only": True}, {"mmap": True, "weights_only": False}, {"weights_only": False}):
        try:
            obj = torch.load(path, map_location="cpu", **kwargs)
            break
        except (RuntimeError, ValueError, Exception) as exc:  # old (non-zip) files cannot be mapped
            last = exc
    else:
        raise SAError(f"{path} could not be read with torch.load ({last}); is it a UBP train.pt/test.pt file?")
    if not isinstance(obj, dict):
        raise SAError(f"{path} holds a {type(obj).__name__}, not a dict with eeg/img/label; check the layout.")
    return obj


def _to_numpy(value: Any) -> Any:
    return value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray) else value


def _read_ubp(layout: Layout, subject: str, image_root: Path | None) -> RawSubject:
    train_file, test_file = _files(layout, subject)
    notes: list[str] = []
    splits, meta = {}, {}
    for split, f in (("train", train_file), ("test", test_file)):
        d = _torch_load(f)
        key = next((k for k in ("eeg", "meg", "data") if k in d), None)
        if key is None:
            raise SAError(f"{f} has keys {sorted(d)} but no eeg array; it is not a UBP data file.")
        raw = array_split(_to_numpy(d[key]), f"{f}:{key}")
        if d.get("img") is not None:
            raw.image_ids = normalise_ids(list(d["img"]), image_root)
            if len(raw.image_ids) != raw.n_images:
                raise SAError(f"{f}: img lists {len(raw.image_ids)} images for {raw.n_images} EEG rows; the file is inconsistent.")
            raw.concepts = concepts_of_ids(raw.image_ids)
        else:
            raw.image_ids, raw.concepts = things_ids(image_root, split, raw.n_images, str(f))
        splits[split], meta[split] = raw, {k: _to_numpy(v) for k, v in d.items() if k in ("ch_names", "times")}
    return _subject(subject, splits, meta, notes, layout.name)


def _neurobridge_info(layout: Layout, subject_dir: Path) -> dict:
    for cand in (subject_dir / "info.json", layout.root / "info.json", subject_dir.parent / "info.json"):
        if cand.is_file():
            try:
                return json.loads(cand.read_text())
            except json.JSONDecodeError as exc:
                raise SAError(f"{cand} is not valid JSON ({exc}); fix or remove it.") from None
    return {}


def _read_neurobridge(layout: Layout, subject: str, image_root: Path | None) -> RawSubject:
    train_file, test_file = _files(layout, subject)
    notes: list[str] = []
    info = _neurobridge_info(layout, train_file.parent)
    splits = {}
    for split, f in (("train", train_file), ("test", test_file)):
        raw = array_split(np.load(f, mmap_mode="r"), str(f))
        raw.image_ids, raw.concepts = things_ids(image_root, split, raw.n_images, str(f))
        splits[split] = raw
    meta = {"ch_names": info.get("ch_names")}
    if info.get("times") is not None:
        meta["times"] = info["times"]
    elif info.get("sfreq") is not None:
        meta["times"] = float(info.get("tmin", 0.0)) + np.arange(splits["train"].n_times) / float(info["sfreq"])
    return _subject(subject, splits, {"train": meta}, notes, layout.name)
