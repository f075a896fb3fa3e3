"""A lab's own data: arrays plus tables of image ids, or mne.Epochs objects with image ids in their metadata.

On disk (layout `array`), either
  <root>/<subject>/train.<ext> + train.<csv|tsv>  and  test.<ext> + test.<csv|tsv>, or
  <root>/<subject>.<ext> + <subject>.<csv|tsv> with a `split` column (train/test),
where <ext> is npy, npz, h5 or hdf5. The array is (N, reps, C, T) or (N, C, T); npz/h5 files keep it under
`data` (or `eeg`, or their only array) and may add `ch_names` and `times`. The table has one row per array
row with a column `image` (the image id: a path relative to the image root; `image_id`, `img`, `path` and
`file` are accepted too), optionally `concept` (default: the image's folder name) and `split`. Rows of a
(N, C, T) array that share an image id within a split are repetitions of that image. Channel names and the
time axis come from the file or from `info.json` (`ch_names`; `times`, or `sfreq` and `tmin`) beside it.
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from sa.errors import DamagedError, SAError
from sa.brain.layout_base import Layout, subject_dirs
from sa.brain.pickled import describe_text, open_npy
from sa.brain.raw import RawSubject, check_numeric, default_times, fit_times, group_repetitions, indexed_split, sorted_read
from sa.brain.things import concepts_of_ids

ARRAY_EXTS = (".npy", ".npz", ".h5", ".hdf5")
TABLE_EXTS = (".csv", ".tsv")
ID_COLUMNS = ("image", "image_id", "img", "path", "file")


def _with_table(array_file: Path) -> Path | None:
    for ext in TABLE_EXTS:
        table = array_file.with_suffix(ext)
        if table.is_file():
            return table
    return None


def _array_files(folder: Path, stem: str | None = None) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in ARRAY_EXTS and (stem is None or f.stem == stem)
                  and _with_table(f) is not None)


def find(path: Path) -> Layout | None:
    """Detect own-data arrays with tables: per-subject train/test pairs, or one file per subject with a split column."""
    if path.is_file():
        if path.suffix.lower() in ARRAY_EXTS and _with_table(path):
            return Layout("array", path.parent, {path.stem: {"all": path}}, _read)
        return None
    subjects, problems = {}, []
    for d in subject_dirs(path):
        pair = {s: next(iter(_array_files(d, s)), None) for s in ("train", "test")}
        if pair["train"] is None and pair["test"] is None:
            continue
        if None in pair.values():
            problems.append(f"{d.name}: missing the {'train' if pair['train'] is None else 'test'} array or its table in {d}.")
        subjects[d.name] = pair
    if not subjects:
        subjects = {f.stem: {"all": f} for f in _array_files(path)}
    return Layout("array", path, subjects, _read, problems) if subjects else None


def read_table(path: Path) -> dict[str, np.ndarray]:
    """Columns of a CSV/TSV table as string arrays (header row required)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    if not rows:
        raise SAError(f"{path} has no rows; it needs a header and one row per array row.")
    return {k.strip().lower(): np.asarray([r[k].strip() for r in rows], dtype=str) for k in rows[0] if k}


def _open_array(path: Path) -> tuple[Any, dict]:
    """The data array (lazily where possible) and any ch_names/times stored with it."""
    suffix = path.suffix.lower()
    meta: dict = {}
    if suffix == ".npy":
        return open_npy(path), meta
    if path.stat().st_size == 0:
        raise DamagedError(f"{path} is empty (0 bytes): its download or copy did not finish; download it again.")
    try:
        return _open_container(path, suffix, meta)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # an environment fault (permission, missing file): sa.errors.explain words it
        text = describe_text(path.read_bytes()[:512])
        what = text or f"not a readable {suffix[1:]} file ({exc})"
        raise DamagedError(f"{path} is {what}: it is truncated or damaged; write or download it again.") from None


def _open_container(path: Path, suffix: str, meta: dict) -> tuple[Any, dict]:
    """The data array and metadata of an .npz or HDF5 file."""
    if suffix == ".npz":
        z = np.load(path)
        keys = list(z.keys())
        meta = {k: z[k] for k in ("ch_names", "times", "sfreq") if k in keys}
        key = next((k for k in ("data", "eeg", "meg") if k in keys), None) or next(
            (k for k in keys if z[k].ndim >= 3), None)
        if key is None:
            raise SAError(f"{path} has no 3-D or higher array (keys {keys}); store the trials under `data`.")
        return z[key], meta
    import h5py

    h = h5py.File(path, "r")
    keys = list(h.keys())
    for k in ("ch_names", "times", "sfreq"):
        if k in h:
            v = h[k][()]
            meta[k] = [c.decode() if isinstance(c, bytes) else str(c) for c in v] if k == "ch_names" else v
    key = next((k for k in ("data", "eeg", "meg") if k in keys), None) or next(
        (k for k in keys if isinstance(h[k], h5py.Dataset) and h[k].ndim >= 3), None)
    if key is None:
        raise SAError(f"{path} has no 3-D or higher dataset (keys {keys}); store the trials under `data`.")
    return h[key], meta


def _info(folder: Path, root: Path) -> dict:
    for cand in (folder / "info.json", root / "info.json"):
        if cand.is_file():
            try:
                info = json.loads(cand.read_text())
            except json.JSONDecodeError as exc:
                raise SAError(f"{cand} is not valid JSON ({exc}); fix or remove it.") from None
            if not isinstance(info, dict):
                raise SAError(f"{cand} holds a JSON {type(info).__name__}, not an object with ch_names and times; fix it.")
            return info
    return {}


def _read(layout: Layout, subject: str, image_root: Path | None) -> RawSubject:
    files = layout.subjects[subject]
    notes: list[str] = []
    splits, meta = {}, {}
    if "all" in files:
        data, meta = _open_array(files["all"])
        table = read_table(_with_table(files["all"]))
        if "split" not in table:
            raise SAError(f"{_with_table(files['all'])} needs a `split` column (train/test), or use separate train/test files.")
        for split in ("train", "test"):
            rows = np.flatnonzero(np.char.lower(table["split"]) == split)
            if not len(rows):
                raise SAError(f"{_with_table(files['all'])} has no rows with split={split}; mark the {split} rows.")
            splits[split] = _table_split(data, table, rows, f"{files['all']} ({split})", notes)
    else:
        for split in ("train", "test"):
            f = files.get(split)
            if f is None:
                raise SAError(f"subject {subject} has no {split} array with a table in {layout.root / subject}.")
            data, m = _open_array(f)
            meta = meta or m
            table = read_table(_with_table(f))
            splits[split] = _table_split(data, table, np.arange(len(next(iter(table.values())))), str(f), notes)
    folder = next(iter(files.values())).parent
    info = {**_info(folder, layout.root), **meta}
    return _assemble(subject, splits, info, notes)


def _table_split(data: Any, table: dict, rows: np.ndarray, where: str, notes: list[str]):
    """A RawSplit of the given array rows, grouped into repetitions by image id for 3-D arrays."""
    id_col = next((c for c in ID_COLUMNS if c in table), None)
    if id_col is None:
        raise SAError(f"the table for {where} has columns {sorted(table)}; add an `image` column with the image id of each row.")
    n_rows = len(table[id_col])
    if n_rows != data.shape[0]:
        raise SAError(f"{where}: the table has {n_rows} rows but the array has {data.shape[0]}; they must match row for row.")
    check_numeric(data, where)
    shape = tuple(data.shape)
    if len(shape) not in (3, 4):
        raise SAError(f"{where}: the array has shape {shape}; expected (N, reps, channels, times) or (N, channels, times).")
    ids = table[id_col][rows]
    if len(shape) == 3:
        image_ids, index = group_repetitions(ids, where, notes)
        trial_rows, n_reps = rows[index], index.shape[1]
    else:
        image_ids, trial_rows, n_reps = ids, rows[:, None], shape[1]
    concepts = table["concept"][trial_rows[:, 0]] if "concept" in table else concepts_of_ids(image_ids)

    def read_trials(idx: np.ndarray, channels, window: slice) -> np.ndarray:
        def read_sorted(r: np.ndarray) -> np.ndarray:
            block = np.asarray(data[r] if not hasattr(data, "id") else data[r.tolist()])  # h5py wants lists
            return block[..., list(channels), window]

        return sorted_read(read_sorted, idx)

    return indexed_split(read_trials, trial_rows, n_reps, shape[-2], shape[-1], where, image_ids, concepts, str(data.dtype))


def _assemble(subject: str, splits: dict, info: dict, notes: list[str]) -> RawSubject:
    n_ch, n_t = splits["train"].n_channels, splits["train"].n_times
    ch = info.get("ch_names")
    if ch is None:
        notes.append(f"no channel names stored for {subject}; named them ch001..ch{n_ch:03d} (add info.json with ch_names).")
        ch = [f"ch{i + 1:03d}" for i in range(n_ch)]
    if info.get("times") is not None:
        times = fit_times(info["times"], n_t, notes, subject)
    elif info.get("sfreq") is not None:
        times = float(info.get("tmin", 0.0)) + np.arange(n_t) / float(np.asarray(info["sfreq"]))
    else:
        times = default_times(n_t, notes, f"{subject} (add info.json with times, or sfreq and tmin)")
    return RawSubject(subject, [str(c) for c in ch], times, splits["train"], splits["test"], notes)


def epochs_layout(epochs: Any) -> Layout:
    """A Layout over mne.Epochs objects (one, or a dict subject -> Epochs) whose metadata has `image` and `split`."""
    items = epochs if isinstance(epochs, dict) else {"sub-01": epochs}
    return Layout("mne-epochs", Path("."), dict(items), _read_epochs)


def _read_epochs(layout: Layout, subject: str, image_root: Path | None) -> RawSubject:
    epochs = layout.subjects[subject]
    md = getattr(epochs, "metadata", None)
    if md is None:
        raise SAError(f"the mne.Epochs of {subject} have no metadata; add a DataFrame with `image` and `split` columns.")
    table = {str(c).lower(): np.asarray(md[c]).astype(str) for c in md.columns}
    if "split" not in table:
        raise SAError(f"the metadata of {subject}'s epochs needs a `split` column (train/test).")
    notes: list[str] = []
    n_ch, n_t = len(epochs.ch_names), len(epochs.times)
    splits = {}
    for split in ("train", "test"):
        rows = np.flatnonzero(np.char.lower(table["split"]) == split)
        if not len(rows):
            raise SAError(f"the metadata of {subject}'s epochs has no rows with split={split}.")
        id_col = next((c for c in ID_COLUMNS if c in table), None)
        if id_col is None:
            raise SAError(f"the metadata of {subject}'s epochs needs an `image` column with image ids.")
        image_ids, index = group_repetitions(table[id_col][rows], f"{subject} {split}", notes)
        trial_rows = rows[index]
        concepts = table["concept"][trial_rows[:, 0]] if "concept" in table else concepts_of_ids(image_ids)

        def read_trials(idx, channels, window, _e=epochs):
            return sorted_read(lambda r: _e.get_data(picks=list(channels), item=r, verbose="error")[..., window].astype(np.float32), idx)

        splits[split] = indexed_split(read_trials, trial_rows, trial_rows.shape[1], n_ch, n_t, f"{subject} epochs ({split})",
                                      image_ids, concepts)
    return RawSubject(subject, list(epochs.ch_names), np.asarray(epochs.times, dtype=float), splits["train"], splits["test"], notes)
