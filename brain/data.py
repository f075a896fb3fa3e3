"""Brain datasets for training: open a folder in any supported layout, load a subject or a LOSO fold.

`open_dataset(path)` detects the layout (layouts.py); `ds.load(subject, ...)` selects channels and a time
window, averages repetitions (or keeps single training trials), holds out a seeded share of training
*concepts* as the validation split, z-scores every channel with statistics of the training rows only, and
returns float32 (or float16) arrays with one image id per row. Data are read block by block from memory-mapped
files where the format allows, into one preallocated array per split, so a full THINGS-EEG subject never
exists twice in memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sa.errors import SAError
from sa.brain.channels import pick_channels
from sa.brain.check import check_dataset
from sa.brain.layout_base import Layout
from sa.brain.layouts import detect
from sa.brain.raw import RawSplit, RawSubject, first_bad_trial
from sa.brain.things import find_image_root, is_image_root, train_dir_name

BLOCK_ROWS = 128  # images read per block: bounds the working memory of averaging and checks


@dataclass
class Split:
    """One split ready for training: x (n, C, T), the image id and concept of each row."""

    x: np.ndarray
    image_ids: np.ndarray
    concepts: np.ndarray
    subjects: np.ndarray | None = None  # the recorded subject of each row (LOSO training rows come from several)

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class SubjectData:
    """A subject (or a LOSO fold, named by its test subject) with train / val / test splits."""

    subject: str
    ch_names: list[str]
    sfreq: float
    times: np.ndarray
    train: Split
    val: Split
    test: Split
    fold: str = "intra"  # "intra" or "loso"
    options: dict = field(default_factory=dict)  # the load options, for provenance
    zscore_mean: np.ndarray | None = None  # per-channel statistics fitted on the training rows
    zscore_std: np.ndarray | None = None


@dataclass
class Selection:
    """Which channels and time points to keep, resolved against one subject's recording."""

    channels: list[int]
    window: slice
    ch_names: list[str]
    times: np.ndarray


def open_dataset(path: Any, layout: str = "auto", image_root: str | Path | None = None,
                 meta: str | Path | None = None) -> "BrainDataset":
    """Open a brain dataset: a folder/file in a supported layout, or mne.Epochs (one, or a dict subject -> Epochs).

    `meta`: the folder with the THINGS metadata CSVs (THINGS-MEG .fif only; default: searched near the data).
    """
    if not isinstance(path, (str, Path)):
        from sa.brain.layout_array import epochs_layout

        return BrainDataset(epochs_layout(path), Path(image_root) if image_root else None)
    path = Path(path).expanduser()
    found = detect(path, layout, Path(meta).expanduser() if meta is not None else None)
    if image_root is not None:
        root = Path(image_root).expanduser()
        if not root.is_dir():
            raise SAError(f"image folder {root} does not exist; pass the folder that holds training_images/ and test_images/.")
        if found.name != "things-meg-fif" and found.name != "array" and not is_image_root(root):
            raise SAError(f"{root} has no training_images/ (or train_images/) and test_images/ folders; point --images at the THINGS image root.")
    else:
        root = find_image_root(path)
    return BrainDataset(found, root)


class BrainDataset:
    """A detected dataset: its layout, subjects and image folder; loads subjects and LOSO folds."""

    def __init__(self, layout: Layout, image_root: Path | None) -> None:
        self._layout = layout
        self.image_root = image_root
        self._raw_cache: dict[str, RawSubject] = {}

    @property
    def layout(self) -> str:
        """The layout name (things-eeg2, things-pickle, ubp, neurobridge, things-meg-fif, array, mne-epochs)."""
        return self._layout.name

    @property
    def root(self) -> Path:
        return self._layout.root

    @property
    def subjects(self) -> list[str]:
        return list(self._layout.subjects)

    @property
    def problems(self) -> list[str]:
        """Problems found while detecting the layout (e.g. a subject folder missing its test file)."""
        return list(self._layout.problems)

    def subject_name(self, subject: str | int) -> str:
        """The stored name of a subject given as 'sub-01', '01', '1' or 1; SAError listing the subjects otherwise."""
        key = str(subject)
        if key in self._layout.subjects:
            return key
        if re.fullmatch(r"\d+", key.strip()):
            hits = [s for s in self.subjects if re.findall(r"\d+", s) and int(re.findall(r"\d+", s)[-1]) == int(key)]
            if len(hits) == 1:
                return hits[0]
        raise SAError(f"subject {subject!r} is not in {self.root}; it has: {', '.join(self.subjects)}.")

    def raw(self, subject: str | int) -> RawSubject:
        """The subject's stored recordings (opened lazily, cached)."""
        name = self.subject_name(subject)
        if name not in self._raw_cache:
            self._raw_cache[name] = self._layout.read(name, self.image_root)
        return self._raw_cache[name]

    def check(self, scan: bool = True, progress: bool = False):
        """Everything `sa data check` prints: per-subject summaries and every problem found."""
        return check_dataset(self, scan=scan, progress=progress)

    def load(self, subject: str | int, *, channels: str | Sequence[str] = "all", window: tuple[float, float] | None = None,
             average_reps: bool = True, zscore: bool = True, val_fraction: float = 0.1, seed: int = 0,
             dtype: str = "float32") -> SubjectData:
        """One subject with train (minus held-out concepts), val and test splits."""
        raw = self.raw(subject)
        return _load([raw], raw, channels=channels, window=window, average_reps=average_reps, zscore=zscore,
                     val_fraction=val_fraction, seed=seed, dtype=dtype, fold="intra")

    def load_loso(self, test_subject: str | int, **options: Any) -> SubjectData:
        """A leave-one-subject-out fold: train/val from all other subjects, test from `test_subject`."""
        test_name = self.subject_name(test_subject)
        others = [s for s in self.subjects if s != test_name]
        if not others:
            raise SAError(f"leave-one-subject-out needs at least two subjects; {self.root} has only {test_name}.")
        return _load([self.raw(s) for s in others], self.raw(test_name), fold="loso", **options)

    def loso_folds(self) -> list[str]:
        """The test subject of each leave-one-subject-out fold."""
        return self.subjects

    def __repr__(self) -> str:
        return f"BrainDataset(layout={self.layout!r}, subjects={self.subjects}, image_root={self.image_root})"


# ---------------------------------------------------------------- options


def select(raw: RawSubject, channels: str | Sequence[str] | None, window: tuple[float, float] | None) -> Selection:
    """Resolve channel names and a (tmin, tmax) window in seconds against a subject; SAError if impossible."""
    idx = pick_channels(channels, raw.ch_names, f"subject {raw.subject}")
    times = raw.times
    if len(times) != raw.train.n_times:
        raise SAError(f"subject {raw.subject}: the time axis has {len(times)} points but the data {raw.train.n_times}; fix the file's times.")
    if window is None:
        tsl = slice(0, len(times))
    else:
        tmin, tmax = float(window[0]), float(window[1])
        half = 0.5 / raw.sfreq if np.isfinite(raw.sfreq) else 0.0
        if tmin >= tmax:
            raise SAError(f"time window {tmin}..{tmax} s is empty; give tmin < tmax.")
        if tmin < times[0] - half or tmax > times[-1] + half:
            raise SAError(f"time window {tmin}..{tmax} s is outside the epoch of subject {raw.subject} "
                          f"({times[0]:.3f}..{times[-1]:.3f} s); choose a window inside it.")
        keep = np.flatnonzero((times >= tmin - 1e-9) & (times <= tmax + 1e-9))
        if not len(keep):
            raise SAError(f"time window {tmin}..{tmax} s holds no sample of subject {raw.subject}; widen it.")
        tsl = slice(int(keep[0]), int(keep[-1]) + 1)
    return Selection(idx, tsl, [raw.ch_names[i] for i in idx], np.asarray(times[tsl]))


def require_ids(raw: RawSubject, split: str) -> RawSplit:
    """The split, with a clear SAError when its image ids are unknown (no image folder, no ids in the files)."""
    s = getattr(raw, split)
    if s.image_ids is None or s.concepts is None:
        raise SAError(
            f"subject {raw.subject}: the {split} rows have no image ids; this layout orders rows by the THINGS image "
            "folder, so pass image_root= / --images pointing at the folder with training_images/ and test_images/."
        )
    return s


def check_disjoint(raw: RawSubject) -> None:
    """SAError when test concepts also appear in training (the zero-shot test would be contaminated)."""
    overlap = sorted(set(raw.train.concepts.tolist()) & set(raw.test.concepts.tolist()))
    if overlap:
        raise SAError(f"subject {raw.subject}: {len(overlap)} test concept(s) also appear in training "
                      f"(first: {', '.join(overlap[:3])}); remove them from the training rows.")


def validation_concepts(concepts: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded random share of the (sorted, unique) training concepts, held out for validation."""
    if not 0.0 <= fraction < 1.0:
        raise SAError(f"val_fraction={fraction} must be in [0, 1); 0.1 holds out 10 % of the training concepts.")
    unique = np.unique(concepts)
    if fraction == 0.0:
        return unique[:0]
    n_val = max(1, int(round(fraction * len(unique))))
    if n_val >= len(unique):
        raise SAError(f"val_fraction={fraction} would hold out all {len(unique)} training concepts; lower it.")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(unique, size=n_val, replace=False))


# ---------------------------------------------------------------- loading


class _Stats:
    """Per-channel running sums (float64) for z-scoring."""

    def __init__(self, n_channels: int) -> None:
        self.s = np.zeros(n_channels)
        self.sq = np.zeros(n_channels)
        self.n = 0

    def update(self, x: np.ndarray) -> None:
        x64 = x.astype(np.float64)
        self.s += x64.sum(axis=(0, 2))
        self.sq += np.einsum("kct,kct->c", x64, x64)
        self.n += x.shape[0] * x.shape[2]

    def result(self, subjects: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std (1 for a constant channel); SAError when every channel is constant."""
        mean = self.s / max(self.n, 1)
        var = np.maximum(self.sq / max(self.n, 1) - mean**2, 0.0)
        std = np.sqrt(var)
        if self.n and not (std > 1e-12 * np.maximum(np.abs(mean), 1e-30)).any():
            raise SAError(f"the training EEG of {', '.join(subjects) or 'the subject'} is constant on every channel "
                          f"(every value {float(mean[0]):g}): it holds no signal; check the file with `sa data check`.")
        std[std == 0] = 1.0
        return mean.astype(np.float32), std.astype(np.float32)


@dataclass
class _Target:
    """Where the chosen rows of a raw split go: mask over images, output array, averaging, scaling."""

    mask: np.ndarray
    out: np.ndarray | None
    average: bool
    pos: int = 0
    stats: _Stats | None = None
    scale: tuple[np.ndarray, np.ndarray] | None = None


def _scan(raw: RawSubject, split: str, sel: Selection, targets: list[_Target]) -> None:
    """Read a raw split block by block once, check values, and write averaged/single trials into each target."""
    s: RawSplit = getattr(raw, split)
    for start in range(0, s.n_images, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, s.n_images)
        wanted = [t for t in targets if t.mask[start:stop].any()]
        if not wanted:
            continue
        block = s.read_block(start, stop, sel.channels, sel.window)
        bad = first_bad_trial(block)
        if bad is not None:
            raise SAError(f"subject {raw.subject}: {split} image row {start + bad[0]} (repetition {bad[1] + 1}) "
                          f"holds NaN or Inf values in {s.source}; fix or drop that trial.")
        averaged = block.mean(axis=1, dtype=np.float32) if any(t.average for t in wanted) else None
        for t in wanted:
            mask = t.mask[start:stop]
            if t.average:
                vals = averaged if mask.all() else averaged[mask]
            else:
                part = block if mask.all() else block[mask]
                vals = part.reshape(-1, *part.shape[2:]).astype(np.float32, copy=False)
            if t.stats is not None:
                t.stats.update(vals)
            if t.out is not None:
                if t.scale is not None:
                    vals = (vals - t.scale[0][:, None]) / t.scale[1][:, None]
                t.out[t.pos:t.pos + len(vals)] = vals
                t.pos += len(vals)


def _normalise_inplace(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
    """Scale a float32 array per channel in place, block by block (no full-size temporaries)."""
    for start in range(0, len(x), BLOCK_ROWS):
        part = x[start:start + BLOCK_ROWS]
        part -= mean[:, None]
        part /= std[:, None]


def _load(train_raws: list[RawSubject], test_raw: RawSubject, *, channels="all", window=None, average_reps=True,
          zscore=True, val_fraction=0.1, seed=0, dtype="float32", fold="intra") -> SubjectData:
    """Fill preallocated train/val/test arrays from the training subjects and the test subject."""
    if dtype not in ("float32", "float16"):
        raise SAError(f"dtype={dtype!r} is not supported; use float32 or float16.")
    out_dtype = np.dtype(dtype)
    sels = {}
    for raw in {id(r): r for r in [*train_raws, test_raw]}.values():
        sels[raw.subject] = select(raw, channels, window)
        for split in ("train", "test"):
            require_ids(raw, split)
        check_disjoint(raw)
    ref = sels[test_raw.subject]
    for raw in train_raws:
        other = sels[raw.subject]
        if other.ch_names != ref.ch_names or len(other.times) != len(ref.times) or abs(raw.sfreq - test_raw.sfreq) > 1e-6:
            raise SAError(f"subjects {raw.subject} and {test_raw.subject} differ in channels, sampling rate or time points "
                          "after selection; pick common channels with --channels and one --window.")
    all_train_concepts = np.concatenate([r.train.concepts for r in train_raws])
    val_concepts = validation_concepts(all_train_concepts, val_fraction, seed)
    n_c, n_t = len(ref.channels), ref.window.stop - ref.window.start

    def plan(raw: RawSubject, is_val: bool) -> np.ndarray:
        return np.isin(raw.train.concepts, val_concepts) == is_val

    n_train = sum(int(plan(r, False).sum()) * (1 if average_reps else r.train.n_reps) for r in train_raws)
    n_val = sum(int(plan(r, True).sum()) for r in train_raws)
    x_train = np.empty((n_train, n_c, n_t), out_dtype)
    x_val = np.empty((n_val, n_c, n_t), out_dtype)
    x_test = np.empty((test_raw.test.n_images, n_c, n_t), out_dtype)

    scale = None
    if zscore and out_dtype != np.float32:  # float16 cannot hold raw volts: fit first, then write scaled values
        stats = _Stats(n_c)
        for raw in train_raws:
            _scan(raw, "train", sels[raw.subject], [_Target(plan(raw, False), None, average_reps, stats=stats)])
        scale = stats.result([r.subject for r in train_raws])
    stats = _Stats(n_c) if zscore and scale is None else None
    train_t, val_t = _Target(np.zeros(0, bool), x_train, average_reps, stats=stats, scale=scale), _Target(np.zeros(0, bool), x_val, True, scale=scale)
    ids, concepts, val_ids, val_concepts_rows, row_subjects, val_subjects = [], [], [], [], [], []
    for raw in train_raws:
        tr_mask, va_mask = plan(raw, False), plan(raw, True)
        train_t.mask, val_t.mask = tr_mask, va_mask
        _scan(raw, "train", sels[raw.subject], [train_t, val_t])
        reps = 1 if average_reps else raw.train.n_reps
        ids.append(np.repeat(raw.train.image_ids[tr_mask], reps))
        concepts.append(np.repeat(raw.train.concepts[tr_mask], reps))
        val_ids.append(raw.train.image_ids[va_mask])
        val_concepts_rows.append(raw.train.concepts[va_mask])
        row_subjects.append(np.full(int(tr_mask.sum()) * reps, raw.subject))
        val_subjects.append(np.full(int(va_mask.sum()), raw.subject))
    test_t = _Target(np.ones(test_raw.test.n_images, bool), x_test, True, scale=scale)
    _scan(test_raw, "test", sels[test_raw.subject], [test_t])
    if stats is not None:
        scale = stats.result([r.subject for r in train_raws])
        for x in (x_train, x_val, x_test):
            _normalise_inplace(x, *scale)
    options = {"channels": channels, "window": window, "average_reps": average_reps, "zscore": zscore,
               "val_fraction": val_fraction, "seed": seed, "dtype": dtype}
    return SubjectData(
        subject=test_raw.subject, ch_names=ref.ch_names, sfreq=test_raw.sfreq, times=ref.times,
        train=Split(x_train, np.concatenate(ids), np.concatenate(concepts), np.concatenate(row_subjects)),
        val=Split(x_val, np.concatenate(val_ids), np.concatenate(val_concepts_rows), np.concatenate(val_subjects)),
        test=Split(x_test, test_raw.test.image_ids.copy(), test_raw.test.concepts.copy(),
                   np.full(len(test_raw.test.image_ids), test_raw.subject)),
        fold=fold, options=options,
        zscore_mean=None if scale is None else scale[0], zscore_std=None if scale is None else scale[1],
    )


# ---------------------------------------------------------------- alignment with a feature cache


def align(split: Split, group: Any) -> np.ndarray:
    """Row of each of the split's images in a cache group (FeatureGroup); SAError naming the first missing ids."""
    ids = [str(i) for i in group.ids]
    lookup = {i: k for k, i in enumerate(ids)}
    missing = [i for i in dict.fromkeys(split.image_ids.tolist()) if i not in lookup]
    skipped = set((getattr(group, "manifest", None) or {}).get("skipped", []) or [])
    missing += [i for i in dict.fromkeys(split.image_ids.tolist()) if i in skipped and i not in missing]
    if missing:
        key = getattr(group, "key", "the cache group")
        raise SAError(f"{len(missing)} image(s) of the brain data are not in {key} (first: {', '.join(missing[:3])}); "
                      "extract features for the same image folder (sa extract <image root>) or check --images.")
    return np.asarray([lookup[i] for i in split.image_ids.tolist()], dtype=np.int64)


def align_features(split: Split, group: Any, name: str) -> np.ndarray:
    """The cache features (float32) of array `name` for every row of the split, in row order."""
    rows = align(split, group)
    uniq, inverse = np.unique(rows, return_inverse=True)
    return np.asarray(group.read(name, uniq), dtype=np.float32)[inverse]


__all__ = ["open_dataset", "BrainDataset", "SubjectData", "Split", "align", "align_features", "validation_concepts",
           "train_dir_name"]
