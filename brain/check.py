"""`sa data check`: summarise a brain dataset and list every problem found in it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from sa.errors import SAError
from sa.progress import make_progress
from sa.brain.raw import RawSubject, first_bad_trial

class CheckedDataset(Protocol):
    """What a check reads of a dataset (sa.brain.data.BrainDataset is one; data.py imports this module, not back)."""

    image_root: Path | None

    @property
    def layout(self) -> str: ...
    @property
    def root(self) -> Path: ...
    @property
    def subjects(self) -> list[str]: ...
    @property
    def problems(self) -> list[str]: ...
    def raw(self, subject: str) -> RawSubject: ...

SCAN_ROWS = 256


@dataclass
class SubjectSummary:
    """What one subject holds, as stored."""

    subject: str
    train_shape: tuple
    test_shape: tuple
    dtype: str
    ch_names: list[str]
    sfreq: float
    tmin: float
    tmax: float
    ids_from: str  # "image folder", "dataset files" or "missing"
    notes: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    """The result of checking a dataset: layout, image folder, subject summaries, problems."""

    layout: str
    root: str
    image_root: str | None
    subjects: list[SubjectSummary]
    problems: list[str]
    unreadable: dict[str, str] = field(default_factory=dict)  # subject -> why it could not be read

    @property
    def ok(self) -> bool:
        return not self.problems


_FOLDER_ORDERED = ("things-eeg2", "things-pickle", "neurobridge")


def _ids_from(raw: RawSubject, layout: str) -> str:
    """Where the subject's image ids came from: the THINGS image folder order, the dataset's own files, or nowhere."""
    if raw.train.image_ids is None:
        return "missing"
    if layout in _FOLDER_ORDERED:
        return "image folder"
    return "dataset files"


def _scan_subject(raw: RawSubject, problems: list[str], notes: list[str], progress) -> None:
    """Look at every stored value once: NaN/Inf (naming the first bad trial) and channels that never change."""
    for split in ("train", "test"):
        s = getattr(raw, split)
        task = progress.add_task(f"{raw.subject} {split}", total=s.n_images)
        all_ch = list(range(s.n_channels))
        lo = np.full(s.n_channels, np.inf)
        hi = np.full(s.n_channels, -np.inf)
        bad_found = False
        for start in range(0, s.n_images, SCAN_ROWS):
            stop = min(start + SCAN_ROWS, s.n_images)
            block = s.read_block(start, stop, all_ch, slice(None))
            bad = first_bad_trial(block)
            if bad is not None:
                problems.append(f"{raw.subject}: {split} image row {start + bad[0]} (repetition {bad[1] + 1}) holds NaN or Inf values.")
                bad_found = True
                break
            lo = np.minimum(lo, block.min(axis=(0, 1, 3)))
            hi = np.maximum(hi, block.max(axis=(0, 1, 3)))
            progress.advance(task, stop - start)
        progress.remove_task(task)
        if bad_found or not s.n_images:
            continue
        flat = np.flatnonzero(lo == hi)
        if len(flat) == s.n_channels:
            values = np.unique(lo)
            what = f"every value is {values[0] + 0.0:g}" if len(values) == 1 else "each channel holds one value"
            problems.append(f"{raw.subject}: the {split} data are constant on every channel ({what} in {s.source}): "
                            "they hold no signal; check how the file was written, or download it again.")
        elif len(flat):
            names = [raw.ch_names[i] if i < len(raw.ch_names) else str(i) for i in flat]
            notes.append(f"{split}: channel(s) {', '.join(names[:8])}{' ...' if len(names) > 8 else ''} never change "
                         "(flat); leave them out with --channels.")


def _subject_problems(raw: RawSubject, ds: CheckedDataset) -> list[str]:
    out = []
    if len(raw.times) != raw.train.n_times:
        out.append(f"{raw.subject}: the time axis has {len(raw.times)} points but the data {raw.train.n_times}.")
    if len(raw.ch_names) != raw.train.n_channels:
        out.append(f"{raw.subject}: {len(raw.ch_names)} channel names for {raw.train.n_channels} channels.")
    tr, te = raw.train.shape, raw.test.shape
    if tr[2:] != te[2:]:
        out.append(f"{raw.subject}: train {tr} and test {te} differ in channels or time points.")
    if raw.train.image_ids is None:
        out.append(f"{raw.subject}: no image ids: this layout orders rows by the THINGS image folder, which was not "
                   "found; pass --images with the folder holding training_images/ and test_images/.")
        return out
    overlap = sorted(set(raw.train.concepts.tolist()) & set(raw.test.concepts.tolist()))
    if overlap:
        out.append(f"{raw.subject}: {len(overlap)} test concept(s) also in training (first: {', '.join(overlap[:3])}).")
    if ds.image_root is not None:
        ids = np.concatenate([raw.train.image_ids, raw.test.image_ids])
        missing = [i for i in ids[:: max(1, len(ids) // 2000)].tolist() if not (ds.image_root / i).is_file()]
        if missing:
            out.append(f"{raw.subject}: image ids not found under {ds.image_root} (first: {', '.join(missing[:3])}).")
    return out


def check_dataset(ds: CheckedDataset, scan: bool = True, progress: bool = False) -> CheckReport:
    """Open every subject, summarise it, and collect problems (scan=True also reads every value for NaN/Inf)."""
    problems = list(ds.problems)
    summaries, unreadable = [], {}
    with make_progress("img", disable=not progress, transient=True) as bar:
        for name in ds.subjects:
            try:
                raw = ds.raw(name)
            except SAError as exc:
                problems.append(str(exc))
                unreadable[name] = str(exc)
                continue
            summary = SubjectSummary(
                name, raw.train.shape, raw.test.shape, raw.train.dtype, raw.ch_names, raw.sfreq,
                float(raw.times[0]), float(raw.times[-1]), _ids_from(raw, ds.layout), list(raw.notes))
            summaries.append(summary)
            problems += _subject_problems(raw, ds)
            if scan:
                try:
                    _scan_subject(raw, problems, summary.notes, bar)
                except SAError as exc:
                    problems.append(str(exc))
    if summaries and len({tuple(s.ch_names) for s in summaries}) > 1:
        problems.append("subjects have different channel lists; choose common channels with --channels for inter-subject training.")
    if not ds.subjects:
        problems.append(f"no subjects found in {ds.root}.")
    return CheckReport(ds.layout, str(ds.root), None if ds.image_root is None else str(ds.image_root), summaries,
                       list(dict.fromkeys(problems)), unreadable)
