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


def default_times(n_times: int, notes: list[str], what: str) -> np.ndarray:
    """0..1 s epochs (the peers' re-preprocessed windows) when the data store no time axis.

    An odd count like 201 is 0..1.0 s with both ends (mne's crop(tmin=0, tmax=1.0), UBP's MEG: 200 Hz);
    otherwise n samples from 0 s at n Hz (250 -> 0..0.996 s).
    """
    if n_times > 1 and (n_times - 1) % 50 == 0 and n_times % 50 != 0:
        sfreq = float(n_times - 1)
        notes.append(f"{what} stores no time axis; assumed 0..1.000 s at {sfreq:g} Hz ({n_times} samples with both "
                     "ends, as crop(tmin=0, tmax=1.0) gives).")
    else:
        sfreq = float(max(n_times, 1))
        notes.append(f"{what} stores no time axis; assumed {n_times} samples from 0 s at {sfreq:g} Hz "
                     f"(0..{(n_times - 1) / sfreq:.3f} s).")
    return np.arange(n_times) / sfreq


def fit_times(times: Any, n_times: int, notes: list[str], what: str) -> np.ndarray:
    """The stored time axis matched to the data's samples.

    The 63-channel 250 Hz variants (NICE, ATM, UBP, NeuroBridge) cut the data `[..., 50:]` after the baseline
    but keep all 300 `times`; their loaders use `times[50:]`. When `times` is longer than the data by a leading
    baseline (every extra point < 0 s), its last n points are used and a note says so; any other mismatch is an
    SAError.
    """
    t = np.asarray(times, dtype=float).reshape(-1)
    if len(t) == n_times:
        return t
    extra = len(t) - n_times
    if extra > 0 and n_times > 0:
        kept, dropped = t[extra:], t[:extra]
        step = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
        if dropped.max() < 0 and kept[0] >= -0.5 * abs(step):
            notes.append(f"{what}: `times` has {len(t)} points for {n_times} samples: the data were cut after a "
                         f"{extra}-sample baseline ({dropped[0]:.3f}..{dropped[-1]:.3f} s, the peers' [..., {extra}:]), "
                         f"so sa uses its last {n_times} points ({kept[0]:.3f}..{kept[-1]:.3f} s).")
            return kept
    raise SAError(f"{what}: the time axis has {len(t)} points but the data {n_times} samples, and the extra points are "
                  "not a leading baseline before 0 s; fix or remove the stored times.")


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


def check_numeric(data: Any, source: str) -> None:
    """SAError when stored trials are not numbers (strings, objects, booleans), naming the array and the fix."""
    dtype = np.dtype(data.dtype) if hasattr(data, "dtype") else np.asarray(data).dtype  # never reads an h5py dataset
    if dtype.kind in "fiu":
        return
    what = {"U": "text strings", "S": "byte strings", "O": "Python objects", "b": "booleans", "c": "complex numbers",
            "M": "dates", "m": "time deltas", "V": "raw records"}.get(dtype.kind, "non-numbers")
    raise SAError(f"{source} stores its EEG/MEG values as {what} ({dtype}), not as numbers; save them as a float "
                  "array (e.g. x.astype('float32')) and try again.")


def array_split(data: Any, source: str, image_ids=None, concepts=None) -> RawSplit:
    """A RawSplit over an array-like (ndarray, memmap, h5py dataset) of 3, 4 or 5 dimensions."""
    if not hasattr(data, "shape"):  # a list of trials pickled as such
        data = np.asarray(data)
    check_numeric(data, source)
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
