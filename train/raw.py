"""Brain data as stored on disk, before channel/window selection, averaging and scaling.

Every layout reader returns a RawSubject whose splits read blocks of rows
lazily (from a memmap, an HDF5 dataset, a mapped torch file or mne epochs), so
the loader in data.py can select channels and time points and average
repetitions block by block without ever holding a full-size copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from sa.errors import SAError

BlockReader = Callable[[int, int, Sequence[int], slice], np.ndarray]


@dataclass
class RawSplit:
    """One split (train or test) of one subject: n_images x n_reps trials, read in row blocks."""

    n_images: int
    n_reps: int
    n_channels: int
    n_times: int
    read_block: BlockReader  # (start, stop, channel indices, time slice) -> (stop-start, reps, C', T')
    image_ids: np.ndarray | None = None  # (n_images,) str, POSIX paths relative to the image root
    concepts: np.ndarray | None = None  # (n_images,) str concept names
    source: str = ""
    dtype: str = "float32"

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(images, repetitions, channels, time points) as stored."""
        return (self.n_images, self.n_reps, self.n_channels, self.n_times)


@dataclass
class RawSubject:
    """One subject's stored recordings with the channel names and time axis they share."""

    subject: str
    ch_names: list[str]
    times: np.ndarray
    train: RawSplit
    test: RawSplit
    notes: list[str] = field(default_factory=list)  # assumptions made while reading (shown by `check`)

    @property
    def sfreq(self) -> float:
        """Sampling rate in Hz from the time axis."""
        return sampling_rate(self.times)


def sampling_rate(times: np.ndarray) -> float:
    """Sampling rate in Hz from evenly spaced time points (seconds)."""
    if len(times) < 2:
        return float("nan")
    return float(round(1.0 / float(np.median(np.diff(times))), 6))


def as_4d(data: Any, source: str) -> Any:
    """View stored trials as (images, reps, C, T): 5-D (concepts, images, reps, C, T) merges the first two axes, 3-D gains a reps axis of 1."""
    shape = tuple(data.shape)
    if len(shape) == 5:
        return data.reshape(shape[0] * shape[1], *shape[2:])
    if len(shape) == 4:
        return data
    if len(shape) == 3:
        return data.reshape(shape[0], 1, *shape[1:])
    raise SAError(
        f"{source}: the EEG/MEG array has shape {shape}; expected (images, reps, channels, times), "
        "(images, channels, times) or (concepts, images, reps, channels, times)."
    )


def array_split(data: Any, source: str, image_ids=None, concepts=None) -> RawSplit:
    """A RawSplit over an array-like (ndarray, memmap, h5py dataset) of 3, 4 or 5 dimensions."""
    arr = as_4d(data, source)
    n, r, c, t = (int(s) for s in arr.shape)

    def read_block(start: int, stop: int, channels: Sequence[int], window: slice) -> np.ndarray:
        block = np.asarray(arr[start:stop])  # a view for memmaps; one block for h5py
        return block[:, :, as_index(channels), window]  # still a view when the channels are a contiguous run

    return RawSplit(n, r, c, t, read_block, _str_array(image_ids), _str_array(concepts), source, str(np.dtype(arr.dtype)))


def as_index(channels: Sequence[int]) -> slice | list[int]:
    """A slice for a contiguous increasing run of channel indices (indexing stays a view), else the list."""
    ch = list(channels)
    if ch and ch == list(range(ch[0], ch[-1] + 1)):
        return slice(ch[0], ch[-1] + 1)
    return ch


def indexed_split(read_trials: Callable[[np.ndarray, Sequence[int], slice], np.ndarray], trial_index: np.ndarray,
                  n_reps: int, n_channels: int, n_times: int, source: str, image_ids=None, concepts=None,
                  dtype="float32") -> RawSplit:
    """A RawSplit over stored records: trial_index (images, k) names the records of each image; each record
    holds n_reps / k repetitions (read_trials returns (len(idx), [reps,] C', T'))."""
    n = trial_index.shape[0]

    def read_block(start: int, stop: int, channels: Sequence[int], window: slice) -> np.ndarray:
        idx = trial_index[start:stop].reshape(-1)
        trials = read_trials(idx, channels, window)
        return trials.reshape(stop - start, n_reps, *trials.shape[-2:])

    return RawSplit(n, n_reps, n_channels, n_times, read_block, _str_array(image_ids), _str_array(concepts), source, dtype)


def _str_array(values) -> np.ndarray | None:
    return None if values is None else np.asarray([str(v) for v in values], dtype=str)


def first_bad_trial(block: np.ndarray) -> tuple[int, int] | None:
    """(row, repetition) of the first trial in a (rows, reps, C, T) block holding NaN or Inf, else None."""
    finite = np.isfinite(block).all(axis=(2, 3))
    if finite.all():
        return None
    row, rep = np.argwhere(~finite)[0]
    return int(row), int(rep)


def sorted_read(read_sorted: Callable[[np.ndarray], np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Read records `idx` (any order, repeats allowed) through a reader that needs sorted unique indices."""
    uniq, inverse = np.unique(idx, return_inverse=True)
    block = read_sorted(uniq)
    return block if len(uniq) == len(idx) and np.array_equal(uniq, idx) else block[inverse]


def group_repetitions(ids: np.ndarray, where: str, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Group trial rows by image id (first-appearance order): (unique ids, (images, reps) row index).

    Images must have the same number of repetitions; extra ones beyond the smallest count are dropped with a note.
    """
    uniq, first, inverse, counts = np.unique(ids, return_index=True, return_inverse=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    reps = int(counts.min())
    if counts.max() != reps:
        notes.append(f"{where}: images have {reps}..{int(counts.max())} repetitions; kept the first {reps} of each.")
    grouped = np.argsort(inverse, kind="stable")  # rows of each id together, in their original order
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rows = grouped[starts[order][:, None] + np.arange(reps)]
    return uniq[order], rows
