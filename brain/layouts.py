"""Finding which on-disk layout a brain dataset uses, and reading the THINGS-EEG2 / THINGS-MEG file layouts.

Layouts (name: what is on disk; docs/data-layouts.md says which peer writes each and what sa takes from it):
  things-eeg2     sub-XX/preprocessed_eeg_{training,test}.npy: dicts saved with np.save (official files; also
                  under the OSF download's preprocessed_data/ or eeg_encoding's eeg_dataset/preprocessed_data/)
  things-pickle   the same names (or preprocessed_meg_training.pkl / preprocessed_meg_zs_test.pkl) written with
                  pickle.dump (NICE, ATM; key preprocessed_eeg_data or meg_data, 4-D or 5-D arrays)
  ubp             sub-XX/{train,test}.pt torch.save dicts: eeg (float16), img ((N, reps) or a list), ch_names, times
  neurobridge     sub-XX/{train,test}.npy: 5-D arrays + info.json (since Nov 2025), or pickled dicts
                  {data, ch_names, times} (before)
  things-meg-fif  preprocessed_P{n}-epo.fif (OpenNeuro ds004212) + the THINGS metadata CSVs (layout_meg.py)
  array           a lab's own arrays + CSV/TSV tables of image ids (layout_array.py)

The 63-channel 250 Hz variants store 300 `times` for 250 samples; sa uses the last 250 (raw.fit_times).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sa.brain import layout_array, layout_meg
from sa.brain.layout_base import Layout, subject_dirs
from sa.brain.pickled import load_mapped, load_torch
from sa.brain.raw import RawSubject, array_split, default_times, fit_times
from sa.brain.things import concepts_of_ids, normalise_ids, split_ids
from sa.errors import SAError

LAYOUTS = ("things-eeg2", "things-pickle", "ubp", "neurobridge", "things-meg-fif", "array")
_DATA_KEYS = ("preprocessed_eeg_data", "meg_data", "eeg_data", "preprocessed_meg_data", "data", "eeg")


# ---------------------------------------------------------------- detection


def detect(path: Path, layout: str = "auto", meta: Path | None = None) -> Layout:
    """Detect (or, with `layout`, force) the layout of the dataset at `path` (`meta`: THINGS-MEG metadata folder)."""
    if not path.exists():
        raise SAError(f"{path} does not exist; give the folder that holds the subjects' files.")
    if layout not in ("auto", *LAYOUTS):
        raise SAError(f"unknown layout {layout!r}; use auto or one of: {', '.join(LAYOUTS)}.")
    finders: dict[str, Callable[[Path], Layout | None]] = {
        "things-eeg2": lambda p: _find_things_files(p, official=True),
        "things-pickle": lambda p: _find_things_files(p, official=False),
        "ubp": _find_ubp,
        "neurobridge": _find_neurobridge,
        "things-meg-fif": lambda p: layout_meg.find(p, meta),
        "array": layout_array.find,
    }
    order = LAYOUTS if layout == "auto" else (layout,)
    for name in order:
        found = finders[name](path)
        if found is not None:
            return found
    if layout != "auto":
        raise SAError(f"{path} does not look like the {layout} layout; run `sa data check {path}` to detect it.")
    dirs = subject_dirs(path)
    if dirs and path.is_dir():
        raise SAError(f"the subject folders in {path} ({', '.join(d.name for d in dirs[:3])}{', ...' if len(dirs) > 3 else ''}) "
                      "hold no data file of a known layout (sub-XX/preprocessed_eeg_training.npy, train.pt, train.npy, "
                      "*-epo.fif or arrays with CSV/TSV tables); download the subjects' files into them.")
    raise SAError(
        f"no known brain-data layout found in {path}; expected sub-XX/preprocessed_eeg_training.npy (THINGS-EEG2, "
        "NICE/ATM), sub-XX/train.pt (UBP), sub-XX/train.npy + info.json (NeuroBridge), *-epo.fif (THINGS-MEG) "
        "or arrays with CSV/TSV image tables (see `sa data check --help`)."
    )


def _first_match(folder: Path, patterns: tuple[str, ...]) -> Path | None:
    for pattern in patterns:
        hits = sorted(f for f in folder.glob(pattern) if f.is_file())
        if hits:
            return hits[0]
    return None


_THINGS_TRAIN = ("preprocessed_eeg_training.npy", "preprocessed_eeg_training.pkl", "preprocessed_eeg_training*",
                 "preprocessed_meg_training*")
_THINGS_TEST = ("preprocessed_eeg_test.npy", "preprocessed_eeg_test.pkl", "preprocessed_eeg_test*", "preprocessed_meg_test*",
                "preprocessed_meg_zs_test*", "preprocessed_eeg_zs_test*")


def _is_npy(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(6) == b"\x93NUMPY"


def _pair_subjects(dirs: list[Path], train_pat: tuple[str, ...], test_pat: tuple[str, ...]) -> tuple[dict, list[str], list[Path]]:
    """Subject -> (train file, test file); a problem line for each subject folder missing one of them; empty folders."""
    subjects, problems, empty = {}, [], []
    for d in dirs:
        train, test = _first_match(d, train_pat), _first_match(d, test_pat)
        if train is None and test is None:
            empty.append(d)
            continue
        if train is None or test is None:
            missing = "training" if train is None else "test"
            present = (test if train is None else train).name
            wanted = train_pat if train is None else test_pat
            kind = "_meg_" if "_meg_" in present else "_eeg_" if "_eeg_" in present else ""
            expected = next((p for p in wanted if kind in p and "*" not in p), wanted[0])
            if kind == "_meg_":
                expected = "preprocessed_meg_training.pkl" if train is None else "preprocessed_meg_zs_test.pkl"
            problems.append(f"{d.name}: no {missing} file in {d} (expected {expected}).")
        subjects[d.name] = (train, test)
    return subjects, problems, empty


def _empty_problems(empty: list[Path], train_pat: tuple[str, ...], test_pat: tuple[str, ...]) -> list[str]:
    """One line per subject folder that holds no data file of the detected layout (it is left out)."""
    return [f"{d.name}: {d} holds no {train_pat[0]} or {test_pat[0]}, so subject {d.name} was left out; download "
            "its files or remove the folder." for d in empty]


def _find_things_files(path: Path, official: bool) -> Layout | None:
    subjects, problems, empty = _pair_subjects(subject_dirs(path), _THINGS_TRAIN, _THINGS_TEST)
    if not subjects:
        return None
    files = [f for pair in subjects.values() for f in pair if f is not None]
    sized = [f for f in files if f.stat().st_size > 0] or files
    if any(_is_npy(f) for f in sized) != official:
        return None
    problems += _empty_problems(empty, _THINGS_TRAIN, _THINGS_TEST)
    return Layout("things-eeg2" if official else "things-pickle", path, subjects, _read_things_dict, problems)


def _find_ubp(path: Path) -> Layout | None:
    subjects, problems, empty = _pair_subjects(subject_dirs(path), ("train.pt",), ("test.pt",))
    if not subjects:
        return None
    return Layout("ubp", path, subjects, _read_ubp, problems + _empty_problems(empty, ("train.pt",), ("test.pt",)))


def _find_neurobridge(path: Path) -> Layout | None:
    dirs = [d for d in subject_dirs(path) if not any(d.glob("train.csv")) and not any(d.glob("train.tsv"))]
    subjects, problems, empty = _pair_subjects(dirs, ("train.npy",), ("test.npy",))
    if not subjects:
        return None
    return Layout("neurobridge", path, subjects, _read_neurobridge,
                  problems + _empty_problems(empty, ("train.npy",), ("test.npy",)))


# ---------------------------------------------------------------- readers


def _files(layout: Layout, subject: str) -> tuple[Path, Path]:
    train, test = layout.subjects[subject]
    for f, what in ((train, "training"), (test, "test")):
        if f is None:
            raise SAError(f"subject {subject} has no {what} file in {layout.root / subject}; add it or leave the subject out.")
    return train, test


def _default_channels(n: int, notes: list[str], what: str, empty: bool = False) -> list[str]:
    stored = "an empty channel list" if empty else "no channel names"
    notes.append(f"{what} stores {stored}; named the {n} channels ch001..ch{n:03d}.")
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


def _data_key(d: dict, f: Path) -> str:
    key = next((k for k in _DATA_KEYS if k in d), None)
    if key is None:
        raise SAError(f"{f} has keys {sorted(map(str, d))} but none of {', '.join(_DATA_KEYS)}; it is not a THINGS data file.")
    return key


def _read_things_dict(layout: Layout, subject: str, image_root: Path | None) -> RawSubject:
    train_file, test_file = _files(layout, subject)
    splits, meta = {}, {}
    for split, f in (("train", train_file), ("test", test_file)):
        d = load_mapped(f)
        if isinstance(d, np.ndarray) and d.dtype.hasobject and d.shape == ():
            d = d.item()
        if not isinstance(d, dict):
            raise SAError(f"{f} holds a {type(d).__name__}, not a dict with preprocessed_eeg_data/ch_names/times; check the layout.")
        key = _data_key(d, f)
        raw = array_split(d[key], f"{f}:{key}")
        raw.image_ids, raw.concepts = things_ids(image_root, split, raw.n_images, str(f))
        splits[split], meta[split] = raw, d
    return _subject(subject, splits, meta, [], f"{subject} ({train_file.name})")


def _subject(subject: str, splits: dict, meta: dict, notes: list[str], what: str) -> RawSubject:
    """Assemble a RawSubject from train/test splits and their metadata dicts (ch_names, times)."""
    d = meta["train"]
    n_ch, n_t = splits["train"].n_channels, splits["train"].n_times
    ch = d.get("ch_names")
    if ch is None or len(ch) == 0:
        ch_names = _default_channels(n_ch, notes, what, empty=ch is not None)
    else:
        ch_names = [str(c) for c in np.asarray(ch).reshape(-1).tolist()]
    times = d.get("times")
    times = default_times(n_t, notes, what) if times is None else fit_times(times, n_t, notes, what)
    return RawSubject(subject, ch_names, times, splits["train"], splits["test"], notes)


def _ubp_ids(img: Any, f: Path, n_rows: int, image_root: Path | None) -> np.ndarray:
    """Image ids from UBP's `img`: (N, reps) with the same path in every column (UBP reads img[:, 0]), or a list."""
    arr = np.asarray(img)
    if arr.ndim == 2:
        if arr.shape[1] and not (arr == arr[:, :1]).all():
            row = int(np.flatnonzero((arr != arr[:, :1]).any(axis=1))[0])
            raise SAError(f"{f}: img row {row} names different images in its repetition columns; each row must be one image.")
        arr = arr[:, 0] if arr.shape[1] else arr.reshape(-1)
    elif arr.ndim != 1:
        raise SAError(f"{f}: img has shape {arr.shape}; expected one image path per row (N,) or (N, reps).")
    ids = normalise_ids([str(v) for v in arr.tolist()], image_root)
    if len(ids) != n_rows:
        raise SAError(f"{f}: img lists {len(ids)} images for {n_rows} EEG rows; the file is inconsistent.")
    return ids


def _read_ubp(layout: Layout, subject: str, image_root: Path | None) -> RawSubject:
    train_file, test_file = _files(layout, subject)
    splits, meta = {}, {}
    for split, f in (("train", train_file), ("test", test_file)):
        d = load_torch(f)
        if not isinstance(d, dict):
            raise SAError(f"{f} holds a {type(d).__name__}, not a dict with eeg/img; check the layout.")
        key = next((k for k in ("eeg", "meg", "data") if k in d), None)
        if key is None:
            raise SAError(f"{f} has keys {sorted(map(str, d))} but no eeg array; it is not a UBP data file.")
        raw = array_split(d[key], f"{f}:{key}")
        if d.get("img") is not None:
            raw.image_ids = _ubp_ids(d["img"], f, raw.n_images, image_root)
            raw.concepts = concepts_of_ids(raw.image_ids)
        else:
            raw.image_ids, raw.concepts = things_ids(image_root, split, raw.n_images, str(f))
        splits[split], meta[split] = raw, {k: d[k] for k in ("ch_names", "times") if k in d}
    return _subject(subject, splits, meta, [], f"{subject} ({train_file.name})")


def _neurobridge_info(layout: Layout, subject_dir: Path) -> dict:
    for cand in (subject_dir / "info.json", subject_dir.parent / "info.json", layout.root / "info.json"):
        if cand.is_file():
            try:
                info = json.loads(cand.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise SAError(f"{cand} is not valid JSON ({exc}); fix or remove it.") from None
            if not isinstance(info, dict):
                raise SAError(f"{cand} holds a JSON {type(info).__name__}, not an object with ch_names and times; fix it.")
            return info
    return {}


def _read_neurobridge(layout: Layout, subject: str, image_root: Path | None) -> RawSubject:
    train_file, test_file = _files(layout, subject)
    info = _neurobridge_info(layout, train_file.parent)
    splits, stored = {}, {}
    for split, f in (("train", train_file), ("test", test_file)):
        obj = load_mapped(f)  # a plain array (since Nov 2025) or a pickled dict {data, ch_names, times} (before)
        if isinstance(obj, dict):
            key = _data_key(obj, f)
            stored = stored or {k: obj[k] for k in ("ch_names", "times") if k in obj}
            obj = obj[key]
        raw = array_split(obj, str(f))
        raw.image_ids, raw.concepts = things_ids(image_root, split, raw.n_images, str(f))
        splits[split] = raw
    meta: dict = {"ch_names": info.get("ch_names", stored.get("ch_names"))}
    if info.get("times") is not None:
        meta["times"] = info["times"]
    elif info.get("sfreq") is not None:
        meta["times"] = float(info.get("tmin", 0.0)) + np.arange(splits["train"].n_times) / float(info["sfreq"])
    elif stored.get("times") is not None:
        meta["times"] = stored["times"]
    return _subject(subject, splits, {"train": meta}, [], f"{subject} ({train_file.name})")
