"""Online decoding: epochs cut from a live EEG stream at each marker, decided against a gallery, published at once.

The pieces, each usable alone:
- `OnlineDecoder`: the checkpoint with its gallery embedded once; one call per decision, the same
  arithmetic as `sa decode` (sa.decode.offline: prepare, embed, cosine, top-k).
- `Epocher`: the recent EEG (checkpoint channels, by name) with timestamps; cuts the checkpoint's window
  at a marker time, resampling when the stream's rate differs, with an optional baseline.
- `Evidence`: `--repeat N` accumulation per marker label (averaged trials, or averaged scores) and the
  `--threshold` early decision.
- `CommandMap`: a CSV of image id or concept -> command string.
- `SessionLog`: one JSON line per decision, handed to the OS at once and synced to disk off the decoding thread.
- `StreamSession`: the loop that ties them to LSL (sa.decode.lsl) and survives stream faults.
"""

from __future__ import annotations

import csv
import gc
import json
import math
import os
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sa.decode.lsl import (Inlet, Lost, Outlet, StreamSpec, describe_stream, find_stream, marker_labels, mne_lsl,
                           still_visible)
from sa.errors import SAError


# ---------------------------------------------------------------- options


@dataclass
class OnlineOptions:
    """How epochs are cut and decisions made (the CLI flags of `sa stream`)."""

    top_k: int = 5
    repeat: int = 1  # epochs of the same marker label averaged before deciding
    threshold: float | None = None  # decide before `repeat` when top-1 minus top-2 score reaches this
    accumulate: str = "trials"  # "trials": average the epochs; "scores": average their gallery scores
    baseline: tuple[float, float] | None = None  # seconds relative to the marker, subtracted per channel
    marker_delay: float = 0.0  # seconds added to every marker time (e.g. screen latency)
    scale: float = 1.0  # factor applied to incoming samples (e.g. 1e-6 for a microvolt stream, volt checkpoint)
    only: str | None = None  # regular expression: markers whose label does not match are ignored
    max_pending: int = 64  # markers waiting for data; a burst beyond this drops the oldest
    stall_s: float = 2.0  # no EEG sample for this long: say so and check that the stream still exists
    lost_s: float = 10.0  # a vanished stream that is not back after this long ends the session
    buffer_s: float = 30.0  # seconds of EEG kept for late markers
    jitter_s: float = 0.005  # timestamp wobble tolerated before samples count as dropped

    def check(self) -> None:
        """SAError naming the first option out of range."""
        if self.top_k < 1:
            raise SAError(f"--top-k {self.top_k} must be at least 1.")
        if self.repeat < 1:
            raise SAError(f"--repeat {self.repeat} must be at least 1.")
        if self.threshold is not None and not 0 <= self.threshold <= 2:
            raise SAError(f"--threshold {self.threshold} is a margin between cosine scores; give a value in 0..2.")
        if self.accumulate not in ("trials", "scores"):
            raise SAError(f"--accumulate {self.accumulate!r} is not known; use trials or scores.")
        if self.baseline is not None and not self.baseline[0] < self.baseline[1]:
            raise SAError(f"--baseline {self.baseline[0]:g},{self.baseline[1]:g} is empty; give tmin < tmax in seconds.")
        if not (math.isfinite(self.scale) and self.scale != 0):
            raise SAError(f"--scale {self.scale} must be a finite non-zero factor.")
        if self.only is not None:
            try:
                re.compile(self.only)
            except re.error as exc:
                raise SAError(f"--only {self.only!r} is not a regular expression ({exc}).") from None
        for name in ("max_pending",):
            if getattr(self, name) < 1:
                raise SAError(f"--{name.replace('_', '-')} must be at least 1.")
        if not 0 <= self.jitter_s < 1:
            raise SAError(f"--jitter {self.jitter_s} must be in 0..1 s.")
        for name in ("stall_s", "lost_s", "buffer_s"):
            if not getattr(self, name) > 0:
                raise SAError(f"{name} must be a positive number of seconds.")


# ---------------------------------------------------------------- the decoder


class OnlineDecoder:
    """A checkpoint with its gallery embedded once; each call embeds trials and ranks the gallery like `sa decode`."""

    def __init__(self, checkpoint: Any, gallery: Any, root: Any = None) -> None:
        from sa.decode.offline import as_checkpoint, embed, open_gallery

        self.ckpt = as_checkpoint(checkpoint)
        group = open_gallery(self.ckpt, gallery, root)
        # the gallery rows exactly as sa.decode.offline.decode takes them
        skipped = set(group.manifest.get("skipped") or [])
        keep = np.asarray([i not in skipped for i in group.ids.tolist()])
        self.ids = group.ids[keep]
        self.gallery_key = group.key
        feats = group.read(self.ckpt.array).astype(np.float32)[keep]
        probe = np.zeros((1, self.ckpt.n_channels, self.ckpt.n_times), np.float32)
        _, self.zi = embed(self.ckpt, probe, feats)
        self.zi = np.ascontiguousarray(self.zi, dtype=np.float32)
        import torch

        # the same memory seen by torch: scoring runs on torch's threads (`sa --threads`, 1 in bench/stream.py),
        # where numpy's OpenBLAS would take every core whatever the setting (slower at p50 on 2 shared cores)
        self.zi_torch = torch.from_numpy(self.zi)
        from sa.brain.things import concepts_of_ids

        self.concepts = concepts_of_ids(self.ids.tolist())
        self.first = first_layer(self.ckpt)

    def finish(self, h: np.ndarray) -> np.ndarray:
        """(N,) gallery scores from the first layer's output h (E,) of a trial: the rest of the encoder, then cosine."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            z = F.normalize(self.first.rest(torch.from_numpy(h.astype(np.float32)[None])), dim=-1)
            return torch.mv(self.zi_torch, z[0]).numpy()

    def prepare(self, epoch: np.ndarray) -> np.ndarray:
        """(C, T) raw epoch on the checkpoint's channels and times -> (1, C, T) float32 z-scored, as in training."""
        from sa.decode.offline import prepare

        return prepare(self.ckpt, epoch[None])

    def embed(self, x: np.ndarray) -> np.ndarray:
        """(n, C, T) prepared trials -> (n, d) L2-normalised embeddings (sa.decode.offline.embed's brain half)."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            return F.normalize(self.ckpt.model.encode_brain(torch.from_numpy(x)), dim=-1).numpy()

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(n, N) cosine scores of prepared trials against every gallery image."""
        import torch

        with torch.inference_mode():
            return (torch.from_numpy(self.embed(x)) @ self.zi_torch.T).numpy()

    def top(self, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ids and scores of one (N,) score row, best first, ties by gallery order (as a stable argsort)."""
        k = min(k, len(scores))
        if k < len(scores):
            part = np.argpartition(-scores, k - 1)[:k]
        else:
            part = np.arange(len(scores))
        order = part[np.lexsort((part, -scores[part]))]
        return self.ids[order], scores[order]


@dataclass
class FirstLayer:
    """An encoder that starts with a Linear on the flattened (C, T) trial (EEGProject, linear), split so the first
    layer can run column by column while an epoch arrives: h = sum_t wt[t] . raw[:, t] + bias - rowsum @ baseline.

    The z-score statistics are folded in (wt = W / std), so raw samples go in; only the last chunk's columns and
    the rest of the encoder are left when the epoch's last sample arrives.
    """

    wt: np.ndarray  # (T, C, E) float32
    rowsum: np.ndarray  # (E, C) float64: wt summed over time
    bias: np.ndarray  # (E,) float64: the Linear's bias minus rowsum @ z-score mean
    rest: Any  # torch module: the encoder after its first Linear

    def columns(self, raw: np.ndarray, start: int) -> np.ndarray:
        """Contribution (E,) of raw samples (k, C) at checkpoint time columns start..start+k-1."""
        k = len(raw)
        w = self.wt[start:start + k].reshape(k * raw.shape[1], -1)
        return (raw.astype(np.float32).reshape(-1) @ w).astype(np.float64)


def first_layer(ckpt: Any) -> FirstLayer | None:
    """The split first layer of the checkpoint's brain encoder, or None when it does not start with a Linear."""
    from torch import nn

    from sa.train.encoders import EEGProject, LinearEncoder

    brain = ckpt.model.brain
    if isinstance(brain, EEGProject):
        lin, rest = brain.head[0], brain.head[1:]
    elif isinstance(brain, LinearEncoder):
        lin, rest = brain.proj, nn.Identity()
    else:
        return None
    c, t = ckpt.n_channels, ckpt.n_times
    w = lin.weight.detach().double().numpy().reshape(-1, c, t)
    mean = np.zeros(c) if ckpt.zscore_mean is None else np.asarray(ckpt.zscore_mean, dtype=np.float64)
    std = np.ones(c) if ckpt.zscore_std is None else np.asarray(ckpt.zscore_std, dtype=np.float64)
    w = w / std[None, :, None]
    rowsum = w.sum(axis=2)
    bias = lin.bias.detach().double().numpy() - rowsum @ mean
    return FirstLayer(np.ascontiguousarray(w.transpose(2, 1, 0), dtype=np.float32), rowsum, bias, rest.eval())


# ---------------------------------------------------------------- epoching a live stream


class Skip(Exception):
    """This marker cannot be decided; the message says why."""


@dataclass
class Cut:
    """An epoch on the checkpoint's channels and times, where it came from and when its last sample arrived."""

    epoch: np.ndarray  # (C, T) float64, baseline removed
    arrival: float  # local time the last sample was pulled
    last_ts: float  # LSL timestamp of the last sample
    onset: int  # absolute index of the onset sample
    baseline: np.ndarray | None  # (C,) the per-channel mean that was removed


class Epocher:
    """The recent EEG of the checkpoint's channels (float64) with LSL timestamps and arrival times.

    An epoch is cut on a grid of sample offsets from the sample nearest the marker, at the checkpoint's rate:
    directly when the stream has that rate, else from a polyphase-resampled stretch (scipy.signal.resample_poly)
    whose output grid is aligned on the onset sample.
    """

    def __init__(self, ckpt: Any, stream_sfreq: float, picks: Sequence[int], *, baseline=None, scale: float = 1.0,
                 buffer_s: float = 30.0, trigger: int | None = None, jitter_s: float = 0.005) -> None:
        self.fs_out = float(ckpt.sfreq)
        self.fs_in = float(stream_sfreq)
        # timestamps may wobble by this much (chunks stamped on arrival) before samples count as missing
        self.tol = max(0.5 / self.fs_in, jitter_s)
        self.picks = np.asarray(picks, dtype=int)
        self.scale = float(scale)
        self.trigger = trigger
        times = np.asarray(ckpt.times, dtype=float)
        tmin = min(times[0], baseline[0]) if baseline is not None else times[0]
        tmax = times[-1]
        start, stop = int(round(tmin * self.fs_out)), int(round(tmax * self.fs_out))
        self.grid = np.arange(start, stop + 1)
        self.grid_times = self.grid / self.fs_out
        self.keep = np.abs(self.grid_times[None, :] - times[:, None]).argmin(axis=1)
        self.col_offsets = self.grid[self.keep]  # sample offsets of the checkpoint's time columns (same-rate streams)
        if np.abs(self.grid_times[self.keep] - times).max() > 0.5 / self.fs_out + 1e-9:
            raise SAError(f"the checkpoint's time points ({times[0]:.3f}..{times[-1]:.3f} s) are not on its "
                          f"{self.fs_out:g} Hz grid; it cannot be used online.")
        self.base = None
        if baseline is not None:
            # mne's rule (mne.baseline.rescale): from the first time >= bmin to the last time <= bmax
            mask = (self.grid_times >= baseline[0] - 1e-9) & (self.grid_times <= baseline[1] + 1e-9)
            if not mask.any():
                raise SAError(f"--baseline {baseline[0]:g},{baseline[1]:g} holds no sample at {self.fs_out:g} Hz; widen it.")
            self.base = mask
        self.resample = abs(self.fs_in - self.fs_out) > 1e-6 * self.fs_out
        if self.resample:
            ratio = Fraction(self.fs_out / self.fs_in).limit_denominator(1000)
            self.up, self.down = ratio.numerator, ratio.denominator
            if abs(self.fs_in * self.up / self.down - self.fs_out) > 1e-3 * self.fs_out:
                raise SAError(f"the stream's {self.fs_in:g} Hz cannot be resampled to the checkpoint's {self.fs_out:g} Hz "
                              "by a ratio of small integers; resample the stream at its source.")
            pad_in = max(int(0.2 * self.fs_in), 10 * max(self.up, self.down) // self.up + 1)
            lead = max(0.0, -self.grid[0] * self.down / self.up)
            self.q = int(math.ceil((pad_in + lead) / self.down))
            self.first_offset = -self.q * self.down  # input samples before the onset sample
            self.last_offset = int(math.ceil(self.grid[-1] * self.down / self.up)) + 1
        else:
            self.first_offset, self.last_offset = int(self.grid[0]), int(self.grid[-1])
        cap = max(int(buffer_s * self.fs_in), 4 * (self.last_offset - self.first_offset + 1), 1024)
        self.cap = cap
        n_ch = len(self.picks)
        self.data = np.zeros((2 * cap, n_ch))
        self.ts = np.zeros(2 * cap)
        self.arrival = np.zeros(2 * cap)
        self.n = 0
        self.received = 0
        self.dropped = 0
        self.last_trigger = 0.0

    @property
    def latest(self) -> float | None:
        return float(self.ts[self.n - 1]) if self.n else None

    @property
    def oldest(self) -> float | None:
        return float(self.ts[0]) if self.n else None

    def add(self, samples: np.ndarray, ts: np.ndarray, arrival: float) -> list[tuple[str, float]]:
        """Append a chunk; returns trigger-channel onsets [(label, time)] when a trigger channel is used."""
        samples = np.asarray(samples)
        m = len(ts)
        if m == 0:
            return []
        if self.n:
            steps = np.diff(np.concatenate([[self.ts[self.n - 1]], ts]))
        else:
            steps = np.diff(ts)
        gaps = steps[steps > 1 / self.fs_in + self.tol]
        self.dropped += int(np.round(gaps * self.fs_in).sum() - len(gaps)) if len(gaps) else 0
        onsets: list[tuple[str, float]] = []
        if self.trigger is not None:
            trig = samples[:, self.trigger].astype(np.float64)
            prev = np.concatenate([[self.last_trigger], trig[:-1]])
            for i in np.flatnonzero((trig != prev) & (trig != 0)):
                onsets.append((f"{trig[i]:g}", float(ts[i])))
            self.last_trigger = float(trig[-1])
        if self.n + m > 2 * self.cap:
            keep = max(self.cap - m, 0)
            for arr in (self.data, self.ts, self.arrival):
                arr[:keep] = arr[self.n - keep:self.n]
            self.n = keep
            if m > 2 * self.cap - keep:
                samples, ts = samples[-(2 * self.cap - keep):], ts[-(2 * self.cap - keep):]
                m = len(ts)
        self.data[self.n:self.n + m] = samples[:, self.picks] * self.scale if self.scale != 1.0 else samples[:, self.picks]
        self.ts[self.n:self.n + m] = ts
        self.arrival[self.n:self.n + m] = arrival
        self.n += m
        self.received += m
        return onsets

    def wanted_until(self, t: float) -> float:
        """The stream time by which the epoch of a marker at `t` is complete."""
        return t + self.last_offset / self.fs_in - 0.5 / self.fs_in

    def cut(self, t: float) -> Cut | None:
        """The epoch of a marker at stream time `t` on the checkpoint's channels and times; None while its samples
        have not all arrived; Skip when they never will."""
        if not self.n:
            return None
        ts = self.ts[:self.n]
        half = 0.5 / self.fs_in
        if t - half > ts[-1]:
            return None
        j = int(np.searchsorted(ts, t))
        if j == self.n or (j > 0 and t - ts[j - 1] <= ts[j] - t):
            j -= 1
        j = max(j, 0)
        if abs(ts[j] - t) > self.tol + 1e-6:
            if t < ts[0]:
                raise Skip(f"its epoch starts before the oldest EEG sample held ({ts[0] - t:.2f} s too early)")
            raise Skip("the EEG has no sample at the marker time (samples were dropped there)")
        first, last = j + self.first_offset, j + self.last_offset
        if first < 0:
            raise Skip(f"its epoch starts before the oldest EEG sample held ({-first / self.fs_in:.2f} s short)")
        if last >= self.n:
            return None
        span, want = ts[last] - ts[first], (last - first) / self.fs_in
        if abs(span - want) > self.tol:
            raise Skip(f"its {last - first + 1} samples span {span:.3f} s where {want:.3f} s were expected "
                       f"(about {abs(round((span - want) * self.fs_in))} samples dropped, or a stream whose true "
                       f"rate is not the declared {self.fs_in:g} Hz)")
        if self.resample:
            from scipy.signal import resample_poly

            seg = self.data[first:last + 1].T
            out = resample_poly(seg, self.up, self.down, axis=1, padtype="line")
            epoch = out[:, self.q * self.up + self.grid]
        else:
            epoch = self.data[first:last + 1].T.copy()
        if not np.isfinite(epoch).all():
            raise Skip("its epoch holds NaN or Inf samples")
        mu = None
        if self.base is not None:
            mu = epoch[:, self.base].mean(axis=1)
            epoch -= mu[:, None]
        return Cut(epoch[:, self.keep], float(self.arrival[last]), float(ts[last]), self.received - self.n + j, mu)

    def onset_index(self, t: float) -> int | None:
        """Absolute index of the sample nearest `t` once samples on both sides have arrived (None before, or when
        there is no sample within tolerance: `cut` then says why)."""
        if not self.n or self.ts[self.n - 1] < t + 0.5 / self.fs_in:
            return None
        ts = self.ts[:self.n]
        j = int(np.searchsorted(ts, t))
        if j == self.n or (j > 0 and t - ts[j - 1] <= ts[j] - t):
            j -= 1
        if j < 0 or abs(ts[max(j, 0)] - t) > self.tol + 1e-6:
            return None
        return self.received - self.n + j

    def columns(self, onset: int, start: int, stop: int) -> np.ndarray | None:
        """Raw samples (k, C) of checkpoint time columns start..stop-1 of the epoch at `onset` (None if not held)."""
        pos = onset + self.col_offsets[start:stop] - (self.received - self.n)
        if len(pos) == 0 or pos[0] < 0 or pos[-1] >= self.n:
            return None
        return self.data[pos]

    def columns_held(self, onset: int) -> int:
        """How many of the epoch's checkpoint time columns have arrived."""
        return int(np.searchsorted(onset + self.col_offsets, self.received, side="left"))

    def effective_rate(self) -> float | None:
        """Samples per second measured from the timestamps held, gaps of dropped samples left out (None under 2 s)."""
        if self.n < 2 or self.ts[self.n - 1] - self.ts[0] < 2.0:
            return None
        steps = np.diff(self.ts[:self.n])
        steps = steps[steps <= 1 / self.fs_in + self.tol]
        return len(steps) / steps.sum() if steps.sum() > 0 else None

    def amplitude(self) -> np.ndarray | None:
        """Per-channel standard deviation of the last 2 s held (None with less)."""
        m = int(2 * self.fs_in)
        if self.n < m:
            return None
        return self.data[self.n - m:self.n].std(axis=0)


# ---------------------------------------------------------------- accumulation


@dataclass
class _Pile:
    total: np.ndarray
    n: int = 0


class Evidence:
    """Per marker label: the running sum of prepared trials (or of gallery scores) and how many were added."""

    def __init__(self, mode: str = "trials") -> None:
        self.mode = mode
        self.piles: dict[str, _Pile] = {}

    def add(self, label: str, value: np.ndarray) -> tuple[np.ndarray, int]:
        """Add one prepared trial (1, C, T) or score row (N,); returns the running mean (as float32) and count."""
        pile = self.piles.get(label)
        if pile is None:
            pile = self.piles[label] = _Pile(np.zeros(value.shape, np.float64))
        pile.total += value
        pile.n += 1
        return (pile.total / pile.n).astype(np.float32), pile.n

    def reset(self, label: str) -> None:
        self.piles.pop(label, None)


# ---------------------------------------------------------------- commands


class CommandMap:
    """Image id or concept -> command string, from a two-column CSV (`id,command`; '#' lines are comments)."""

    def __init__(self, mapping: dict[str, str], source: str = "") -> None:
        self.mapping = mapping
        self.source = source

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "CommandMap":
        path = Path(path)
        if not path.is_file():
            raise SAError(f"command map {path} does not exist; write a CSV of `image id or concept,command` rows.")
        mapping: dict[str, str] = {}
        with open(path, newline="", encoding="utf-8") as fh:
            for n, row in enumerate(csv.reader(fh), start=1):
                cells = [c.strip() for c in row]
                if not cells or not any(cells) or cells[0].startswith("#"):
                    continue
                if len(cells) != 2 or not cells[0] or not cells[1]:
                    raise SAError(f"{path} row {n} has {len([c for c in cells if c])} non-empty cell(s); each row must be "
                                  "`image id or concept,command`.")
                if n == 1 and cells[1].lower() == "command":
                    continue
                if cells[0] in mapping:
                    raise SAError(f"{path} row {n}: {cells[0]!r} is mapped twice; keep one command per image or concept.")
                mapping[cells[0]] = cells[1]
        if not mapping:
            raise SAError(f"{path} maps nothing; write rows of `image id or concept,command`.")
        return cls(mapping, str(path))

    def unmatched(self, ids: Sequence[str], concepts: Sequence[str]) -> list[str]:
        """Keys that name neither a gallery image nor a gallery concept."""
        known = set(map(str, ids)) | set(map(str, concepts))
        return [k for k in self.mapping if k not in known]

    def command(self, image_id: str, concept: str | None) -> str | None:
        """The command for a decided image: by its id, else by its concept."""
        if image_id in self.mapping:
            return self.mapping[image_id]
        return self.mapping.get(concept) if concept is not None else None


# ---------------------------------------------------------------- the session log


class SessionLog:
    """JSON lines: a start record, one record per decision or event, an end record.

    Each line is written and flushed at once, so it is in the operating system's hands before the next decision
    (a killed or interrupted process loses nothing); a background thread syncs it to disk (fsync: a power cut
    loses nothing either) so the decoding thread never waits for the disk. A failed sync is raised by the
    next write, or by close.
    """

    def __init__(self, path: str | os.PathLike[str], header: dict) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = self.path.is_file() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
        self.fh = open(self.path, "a", encoding="utf-8")
        self._dirty = threading.Event()
        self._closing = False
        self._failed: OSError | None = None
        self._syncer = threading.Thread(target=self._sync_loop, name="sa-log-sync", daemon=True)
        self._syncer.start()
        if torn:  # a session killed mid-line: end that line so this session's records stay readable
            self.fh.write("\n")
        self.write({"event": "start", **header})

    def write(self, record: dict) -> None:
        """Append one record and hand it to the operating system; then raise the error of a failed background sync."""
        self.fh.write(json.dumps(record, default=_plain) + "\n")
        self.fh.flush()
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed
        self._dirty.set()

    def _sync_loop(self) -> None:
        """fsync after every batch of writes until closed (or the file was closed under it)."""
        while not self._closing:
            self._dirty.wait()
            self._dirty.clear()
            if self._closing:
                return
            try:
                os.fsync(self.fh.fileno())
            except ValueError:  # closed under us (close() syncs itself)
                return
            except OSError as exc:
                self._failed = exc
                return

    def close(self, reason: str, **summary: Any) -> None:
        if self.fh.closed:
            return
        try:
            self.write({"event": "end", "reason": reason, "time": time.time(), **summary})
        finally:
            self._closing = True
            self._dirty.set()
            self._syncer.join(5.0)
            try:
                os.fsync(self.fh.fileno())
            finally:
                self.fh.close()


def _check_writable(path: Path) -> None:
    """SAError when the session log cannot be written there (checked before any stream is opened)."""
    if path.is_dir():
        raise SAError(f"--log {path} is a folder; give a file name such as {path / 'session.jsonl'}.")
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise SAError(f"--log {path}: {probe} is a file, not a folder; choose another place for the session log.")
    if not os.access(probe, os.W_OK):
        raise SAError(f"--log {path}: {probe} is not writable; choose a folder you can write.")


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def read_session_log(path: str | os.PathLike[str]) -> list[dict]:
    """The sessions of a log: each {"start", "decisions", "events", "end" (None if it did not end cleanly)}.

    A torn last line (the process was killed mid-write) is ignored; every complete decision is kept.
    """
    sessions: list[dict] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("event") == "start":
                sessions.append({"start": rec, "decisions": [], "events": [], "end": None})
            elif not sessions:
                continue
            elif "decision" in rec:
                sessions[-1]["decisions"].append(rec)
            elif rec.get("event") == "end":
                sessions[-1]["end"] = rec
            else:
                sessions[-1]["events"].append(rec)
    return sessions


# ---------------------------------------------------------------- the session


@dataclass
class Decision:
    """One published decision."""

    index: int
    marker: str
    marker_time: float
    n_epochs: int
    early: bool
    ids: list[str]
    scores: list[float]
    command: str | None
    published: float  # LSL time just after the decision left on the outlet
    latency_ms: float  # from the arrival of the epoch's last sample to `published`
    cpu_ms: float  # CPU time this thread spent in that interval (latency_ms minus time waiting for a core)
    last_sample_time: float  # LSL timestamp of the epoch's last sample (its acquisition time)


@dataclass
class Status:
    """What the live display shows."""

    eeg: str = ""
    markers: str = ""
    state: str = "starting"
    samples: int = 0
    dropped: int = 0
    markers_seen: int = 0
    epochs: int = 0
    skipped: int = 0
    decisions: int = 0
    pending: int = 0
    last: Decision | None = None
    latencies: list[float] = field(default_factory=list)


@dataclass
class _Pending:
    label: str
    time: float
    onset: int | None = None  # absolute index of its onset sample, once known
    acc: np.ndarray | None = None  # first-layer sum over the columns that have arrived (progressive path)
    done: int = 0  # how many checkpoint time columns are in acc


class StreamLost(SAError):
    """A stream vanished and did not come back; the session ended cleanly."""


class StreamSession:
    """Decode a live LSL EEG stream at each marker and publish every decision (see `sa stream`)."""

    def __init__(self, checkpoint: Any, gallery: Any, *, eeg: Any = None, markers: Any = None,
                 trigger: str | None = None, options: OnlineOptions | None = None, log: str | os.PathLike[str],
                 commands: str | os.PathLike[str] | None = None, root: Any = None,
                 outlet_name: str = "sa-decisions", command_outlet_name: str = "sa-commands",
                 resolve_timeout: float = 10.0, notify: Callable[[str], None] | None = None,
                 on_status: Callable[[Status], None] | None = None) -> None:
        self.options = options or OnlineOptions()
        self.options.check()
        self.eeg_spec = eeg or StreamSpec(stype="EEG")
        self.marker_spec = None if trigger else (markers or StreamSpec(stype="Markers"))
        self.trigger_name = trigger
        self.decoder = OnlineDecoder(checkpoint, gallery, root)
        self.ckpt = self.decoder.ckpt
        self.commands = CommandMap.load(commands) if commands is not None else None
        self.log_path = Path(log)
        _check_writable(self.log_path)
        self.outlet_name, self.command_outlet_name = outlet_name, command_outlet_name
        self.resolve_timeout = resolve_timeout
        self.notify = notify or (lambda text: print(text, flush=True))
        self.on_status = on_status
        self.status = Status()
        self._max_decisions: int | None = None  # set by run(); _decide_ready stops at it
        self.decisions: list[Decision] = []
        self.only = re.compile(self.options.only) if self.options.only else None
        self.log: SessionLog | None = None

    # -------------------------------------------------------- setup

    def _say(self, text: str, kind: str = "note") -> None:
        self.notify(text)
        if self.log is not None:
            self.log.write({"event": kind, "time": time.time(), "message": text})

    def _open_eeg(self, info: Any) -> Any:
        from sa.decode.offline import select_channels

        if info.sfreq == 0:
            raise SAError(f"EEG stream {describe_stream(info)} has an irregular sampling rate; it must declare its "
                          "rate (pick the amplifier's data stream with --eeg).")
        inlet = Inlet(info)
        names = inlet.ch_names
        if names is None or any(n is None for n in names):
            if self.trigger_name:
                inlet.close()
                raise SAError(f"EEG stream {describe_stream(info)} names no channels, so --trigger "
                              f"{self.trigger_name!r} cannot be found; set the channel labels in the amplifier's LSL app.")
            if inlet.n_channels != self.ckpt.n_channels:
                inlet.close()
                raise SAError(f"EEG stream {describe_stream(info)} names no channels and has {inlet.n_channels}, but the "
                              f"checkpoint needs {self.ckpt.n_channels} by name ({', '.join(self.ckpt.ch_names[:6])} ...); "
                              "set the channel labels in the amplifier's LSL app.")
            picks = np.arange(self.ckpt.n_channels)
            self._say(f"EEG stream {info.name!r} names no channels: its {self.ckpt.n_channels} are taken as the "
                      "checkpoint's, in order.", "warning")
            trigger = None
        else:
            probe = np.arange(len(names), dtype=np.float64)[None, :, None]
            try:
                picks = select_channels(self.ckpt, probe, names)[0, :, 0].astype(int)
            except SAError as exc:
                inlet.close()
                raise SAError(f"EEG stream {info.name!r}: {exc}") from None
            trigger = None
            if self.trigger_name:
                lookup = {n.lower(): i for i, n in enumerate(names)}
                if self.trigger_name.lower() not in lookup:
                    inlet.close()
                    raise SAError(f"EEG stream {info.name!r} has no channel {self.trigger_name!r} for --trigger (it has "
                                  f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}).")
                trigger = lookup[self.trigger_name.lower()]
        o = self.options
        self.epocher = Epocher(self.ckpt, inlet.sfreq, picks, baseline=o.baseline, scale=o.scale, buffer_s=o.buffer_s,
                               trigger=trigger, jitter_s=o.jitter_s)
        # the first layer runs while an epoch arrives when the encoder allows it and no resampling mixes samples
        self.progressive = self.decoder.first is not None and not self.epocher.resample
        if self.epocher.resample:
            self._say(f"EEG stream {info.name!r} runs at {inlet.sfreq:g} Hz and the checkpoint at {self.ckpt.sfreq:g} Hz: "
                      "each epoch is resampled.", "warning")
        return inlet

    def _connect(self) -> None:
        eeg_info = find_stream("EEG", self.eeg_spec, self.resolve_timeout, "--eeg")
        self.eeg = self._open_eeg(eeg_info)
        self.eeg_info = eeg_info
        self.status.eeg = describe_stream(eeg_info)
        self.markers = None
        if self.marker_spec is not None:
            minfo = find_stream("marker", self.marker_spec, self.resolve_timeout, "--markers")
            self.markers = Inlet(minfo)
            self.marker_info = minfo
            self.status.markers = describe_stream(minfo)
        else:
            self.status.markers = f"trigger channel {self.trigger_name!r}"

    # -------------------------------------------------------- the loop

    def run(self, max_decisions: int | None = None, duration: float | None = None) -> list[Decision]:
        """Decode until `max_decisions`, `duration` seconds, or Ctrl-C; returns the decisions (all also logged).

        Raises StreamLost (after closing the log) when a stream vanishes and does not come back.
        """
        lsl = mne_lsl()
        try:
            self._connect()
            self.out = Outlet(self.outlet_name, "Markers", "decision")
            self.cmd_out = Outlet(self.command_outlet_name, "Markers", "command") if self.commands else None
            self.log = SessionLog(self.log_path, self._header())
        except BaseException:
            self._close_streams()
            raise
        if self.commands is not None:
            missing = self.commands.unmatched(self.decoder.ids, self.decoder.concepts)
            if missing:
                self._say(f"{len(missing)} key(s) of {self.commands.source} match no gallery image or concept "
                          f"({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}); they will never fire.", "warning")
        self.evidence = Evidence(self.options.accumulate)
        self.pending: list[_Pending] = []
        reason = "done"
        t_start = time.monotonic()
        self.status.state = "running"
        self.clock = lsl.local_clock
        self._last_data = time.monotonic()
        self._stalled = False
        self._last_probe = 0.0
        self._last_status = 0.0
        self._checked_units = False
        self._arrival_cpu = time.thread_time()
        self._max_decisions = max_decisions
        gc_state = self._hold_gc()
        try:
            while True:
                self._step()
                if self._enough():
                    break
                if duration is not None and time.monotonic() - t_start >= duration:
                    reason = "duration"
                    break
        except KeyboardInterrupt:
            reason = "interrupted"
        except StreamLost as exc:
            self._finish("lost", str(exc))
            raise
        except BaseException as exc:
            self._finish("error", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self._release_gc(gc_state)
        self._finish(reason)
        return self.decisions

    GC_S = 1.0  # collect the garbage of the session at most this often, at a quiet moment

    def _hold_gc(self) -> tuple[bool, bool]:
        """Keep Python's garbage collector off the latency path: what exists now (torch, the gallery, the
        streams) is frozen out of later collections, and automatic collection (a full one took up to ~100 ms
        here) is replaced by `_collect` at quiet moments. Returns what `_release_gc` restores."""
        enabled, frozen = gc.isenabled(), gc.get_freeze_count() > 0
        gc.collect()
        gc.freeze()
        gc.disable()
        self._last_gc = time.monotonic()
        return enabled, frozen

    def _release_gc(self, state: tuple[bool, bool]) -> None:
        enabled, frozen = state
        if not frozen:
            gc.unfreeze()
        if enabled:
            gc.enable()

    def _collect(self, now: float) -> None:
        """A garbage collection of what the session made, when no epoch is due (or overdue by 10 s)."""
        if now - self._last_gc > self.GC_S and (self._quiet_for() > self.QUIET_S or now - self._last_gc > 10.0):
            self._last_gc = now
            gc.collect()

    def _enough(self) -> bool:
        """`max_decisions` reached (checked between decisions, so one turn never decides past it)."""
        return self._max_decisions is not None and len(self.decisions) >= self._max_decisions

    def _finish(self, reason: str, message: str | None = None) -> None:
        self.status.state = "ended" if reason != "lost" else "stream lost"
        if self.pending and reason != "done":
            self._say(f"{len(self.pending)} marker(s) were still waiting for EEG data when the session ended; "
                      "they are not decided.", "warning")
        if self.log is not None:
            try:
                self.log.close(reason, decisions=len(self.decisions), epochs=self.status.epochs,
                               skipped=self.status.skipped, dropped_samples=self.status.dropped,
                               **({"message": message} if message else {}))
            except OSError:  # the disk that failed a decision's record fails this one too: say the first fault
                pass
        self._close_streams()
        if self.on_status is not None:
            self.on_status(self.status)

    def _close_streams(self) -> None:
        for thing in ("eeg", "markers", "out", "cmd_out"):
            obj = getattr(self, thing, None)
            if obj is not None:
                obj.close()
                setattr(self, thing, None)

    def _header(self) -> dict:
        from sa import __version__

        ck = self.ckpt
        return {"time": time.time(), "host": socket.gethostname(), "sa_version": __version__,
                "checkpoint": {"encoder": ck.encoder, "cache_key": ck.cache_key, "array": ck.array,
                               "run_id": ck.meta.get("run_id"), "sfreq": ck.sfreq, "n_channels": ck.n_channels,
                               "times": [ck.times[0], ck.times[-1]]},
                "gallery": self.decoder.gallery_key, "n_gallery": int(len(self.decoder.ids)),
                "eeg": self.status.eeg, "markers": self.status.markers, "options": asdict(self.options),
                "outlets": [self.outlet_name] + ([self.command_outlet_name] if self.commands else [])}

    POLL_S = 0.02  # longest wait for EEG per turn; liblsl wakes the pull at the first sample, so it adds no latency
    QUIET_S = 0.05  # stream seconds before the next epoch is due that housekeeping (the display) may use
    STATUS_S = 0.25  # display refresh interval

    def _step(self) -> None:
        """One turn: pull the EEG and decide at once the epochs it completes (the latency path); then the markers,
        the running first-layer sums of the other epochs, late markers and, when no epoch is due, the display."""
        try:
            data, ts = self.eeg.pull(wait=self.POLL_S)
        except Lost:
            data, ts = None, np.zeros(0)
            self._recover("EEG")
        now = time.monotonic()
        if len(ts):
            arrival = self.clock()
            self._arrival_cpu = time.thread_time()
            if self._stalled:
                gap = ts[0] - (self.epocher.latest or ts[0])
                self._say(f"EEG stream {self.eeg_info.name!r} resumed after {now - self._last_data:.1f} s "
                          f"({max(int(round(gap * self.epocher.fs_in)) - 1, 0)} samples missing).", "resumed")
                self._stalled = False
            self._last_data = now
            onsets = self.epocher.add(data, ts, arrival)
            self._decide_ready()
            for label, t in onsets:
                self._queue(label, t)
            self.status.samples, self.status.dropped = self.epocher.received, self.epocher.dropped
            if not self._checked_units:
                self._check_stream()
        elif now - self._last_data > self.options.stall_s:
            self._stall(now)
        if self.markers is not None:
            try:
                mdata, mts = self.markers.pull()
            except Lost:
                mdata, mts = [], np.zeros(0)
                self._recover("marker")
            if len(mts):
                labels = marker_labels(mdata, self.markers.ch_names, self.markers.is_string)
                for label, t in zip(labels, mts):
                    if label is not None:
                        self._queue(label, float(t))
        self._burst()
        if self.progressive and len(ts):
            self._advance(self.pending)
        self._decide_ready()
        self._collect(now)
        if self.on_status is not None and now - self._last_status > self.STATUS_S:
            if self._quiet_for() > self.QUIET_S or now - self._last_status > 4 * self.STATUS_S:
                self._last_status = now
                self.status.pending = len(self.pending)
                self.on_status(self.status)

    def _quiet_for(self) -> float:
        """Stream seconds until the next waiting epoch is complete (inf when none waits)."""
        latest = self.epocher.latest
        if latest is None or not self.pending:
            return math.inf
        return min(self.epocher.wanted_until(p.time) for p in self.pending) - latest

    def _queue(self, label: str, t: float) -> None:
        if self.only is not None and not self.only.search(label):
            return
        self.status.markers_seen += 1
        t = t + self.options.marker_delay
        future = t - self.clock()
        if future > 5.0:
            self.status.skipped += 1
            self._say(f"marker {label!r} is stamped {future:.1f} s in the future: the marker and EEG clocks disagree "
                      "(is the marker sender's LSL clock synchronised?); skipped.", "skipped")
            return
        self.pending.append(_Pending(label, t))
        self._new_markers = getattr(self, "_new_markers", 0) + 1

    def _burst(self) -> None:
        """More markers waiting than --max-pending: drop the oldest; one line per burst (at most one a second)."""
        new = getattr(self, "_new_markers", 0)
        self._new_markers = 0
        extra = len(self.pending) - self.options.max_pending
        if extra <= 0:
            return
        self.pending.sort(key=lambda p: p.time)
        self.pending = self.pending[extra:]
        self.status.skipped += extra
        now = time.monotonic()
        if now - getattr(self, "_last_burst", -1e9) < 1.0:
            self._burst_quiet = getattr(self, "_burst_quiet", 0) + extra
            return
        extra += getattr(self, "_burst_quiet", 0)
        self._burst_quiet, self._last_burst = 0, now
        self._say(f"burst of {new} markers: more than --max-pending {self.options.max_pending} waited for EEG data, "
                  f"so the {extra} oldest were skipped.", "burst")

    def _advance(self, pending: Sequence[_Pending]) -> None:
        """Add the newly arrived columns of these waiting epochs to their first-layer sums."""
        e, first = self.epocher, self.decoder.first
        for p in pending:
            if p.onset is None:
                p.onset = e.onset_index(p.time)
                if p.onset is None:
                    continue
                p.acc = np.zeros(len(first.bias))
            if p.acc is None:
                continue
            held = e.columns_held(p.onset)
            if held > p.done:
                rows = e.columns(p.onset, p.done, held)
                if rows is None:
                    p.acc = None  # its start left the buffer: decided from the full cut, if still possible
                    continue
                p.acc += first.columns(rows, p.done)
                p.done = held

    def _decide_ready(self) -> None:
        """Decide every waiting epoch whose samples have all arrived, oldest first (their first-layer sums are
        completed here, so the other epochs' columns wait until these decisions are out)."""
        latest = self.epocher.latest
        if latest is None or not self.pending:
            return
        still: list[_Pending] = []
        for p in sorted(self.pending, key=lambda p: p.time):
            if latest < self.epocher.wanted_until(p.time) or self._enough():
                still.append(p)
                continue
            if self.progressive:
                self._advance((p,))
            try:
                cut = self.epocher.cut(p.time)
            except Skip as why:
                self.status.skipped += 1
                self._say(f"marker {p.label!r} at {p.time:.3f} s: {why}; skipped.", "skipped")
                continue
            if cut is None:
                still.append(p)
                continue
            self._decide(p, cut)
        self.pending = still

    def _first_output(self, p: _Pending, cut: Cut) -> np.ndarray:
        """The first layer's output (E,) for this epoch: from the running sum, or all at once from the cut."""
        first = self.decoder.first
        if p.acc is not None and p.onset == cut.onset and p.done == len(first.wt):
            h = p.acc + first.bias
            return h - first.rowsum @ cut.baseline if cut.baseline is not None else h
        return first.columns(cut.epoch.T, 0) + first.bias

    def _decide(self, p: _Pending, cut: Cut) -> None:
        o = self.options
        dec = self.decoder
        self.status.epochs += 1
        arrival, last_ts = cut.arrival, cut.last_ts
        if self.progressive:
            h = self._first_output(p, cut)
            if o.accumulate == "trials":
                mean, n = self.evidence.add(p.label, h)
                scores = dec.finish(mean)
            else:
                scores, n = self.evidence.add(p.label, dec.finish(h))
        elif o.accumulate == "trials":
            mean, n = self.evidence.add(p.label, dec.prepare(cut.epoch))
            scores = dec.scores(mean)[0]
        else:
            scores, n = self.evidence.add(p.label, dec.scores(dec.prepare(cut.epoch))[0])
        ids, top = dec.top(scores, max(o.top_k, 2))
        early = n < o.repeat and o.threshold is not None and len(top) > 1 and top[0] - top[1] >= o.threshold
        if n < o.repeat and not early:
            return
        self.evidence.reset(p.label)
        ids, top = ids[:o.top_k], top[:o.top_k]
        first = str(ids[0])
        command = None
        if self.commands is not None:
            concept = str(dec.concepts[np.flatnonzero(dec.ids == first)[0]])
            command = self.commands.command(first, concept)
        index = len(self.decisions) + 1
        record = {"decision": index, "marker": p.label, "marker_time": p.time, "n_epochs": n, "early": bool(early),
                  "ids": [str(i) for i in ids], "scores": [float(s) for s in top], "command": command}
        published = self.out.push_json(record)
        if command is not None and self.cmd_out is not None:
            self.cmd_out.push(command)
        d = Decision(index=index, marker=p.label, marker_time=p.time, n_epochs=n, early=bool(early),
                     ids=record["ids"], scores=record["scores"], command=command, published=published,
                     latency_ms=(published - arrival) * 1000, cpu_ms=(time.thread_time() - self._arrival_cpu) * 1000,
                     last_sample_time=last_ts)
        self.decisions.append(d)
        self.log.write({**record, "published": published, "latency_ms": round(d.latency_ms, 3),
                        "cpu_ms": round(d.cpu_ms, 3)})
        self.status.decisions = index
        self.status.last = d
        self.status.latencies.append(d.latency_ms)
        if self.on_status is None:
            self.notify(f"#{index} marker {p.label!r} -> {first} ({top[0]:.3f})"
                        + (f" -> command {command!r}" if command else "") + f"  [{d.latency_ms:.1f} ms]")

    # -------------------------------------------------------- faults

    def _check_stream(self) -> None:
        """Once 2 s of data are held: warn about a true rate far from the declared one, or an amplitude
        orders of magnitude away from the training data's (a unit mismatch such as volts vs microvolts)."""
        e = self.epocher
        rate = e.effective_rate()
        amp = e.amplitude()
        if rate is None or amp is None:
            return
        self._checked_units = True
        if abs(rate - e.fs_in) > 0.02 * e.fs_in:
            self._say(f"EEG stream {self.eeg_info.name!r} declares {e.fs_in:g} Hz but delivers {rate:.1f} samples/s; "
                      "epochs will be cut wrongly: fix the amplifier's rate setting.", "warning")
        std = self.ckpt.zscore_std
        if std is not None:
            ratio = float(np.median(amp) / np.median(np.asarray(std, dtype=np.float64)))
            if ratio > 1000 or 0 < ratio < 1e-3:
                self._say(f"EEG stream {self.eeg_info.name!r} is about {ratio:.0e} times the amplitude of the "
                          "checkpoint's training data: a unit mismatch? pass --scale (e.g. 1e-6 for a microvolt "
                          "stream and a volt checkpoint).", "warning")

    def _stall(self, now: float) -> None:
        """No EEG for stall_s: say so once, then check the stream still exists; if it vanished, wait for it."""
        if not self._stalled:
            self._stalled = True
            self.status.state = "stalled"
            self._say(f"EEG stream {self.eeg_info.name!r} stalled: no sample for {now - self._last_data:.1f} s; "
                      "waiting (Ctrl-C ends the session).", "stall")
        if now - self._last_probe < 1.0:
            return
        self._last_probe = now
        if still_visible(self.eeg_info) is None:
            self._recover("EEG")

    def _recover(self, role: str) -> None:
        """A stream is gone: wait up to lost_s for it (same source id or name) to come back, else end the session."""
        info = self.eeg_info if role == "EEG" else self.marker_info
        self.status.state = f"{role} stream gone"
        self._say(f"{role} stream {info.name!r} vanished (its outlet is gone); waiting up to "
                  f"{self.options.lost_s:g} s for it to come back.", "lost")
        if self.on_status is not None:
            self.on_status(self.status)
        deadline = time.monotonic() + self.options.lost_s
        while time.monotonic() < deadline:
            back = still_visible(info, timeout=min(1.0, max(deadline - time.monotonic(), 0.1)))
            if back is not None and back.uid != info.uid:
                if role == "EEG":
                    self.eeg.close()
                    self.eeg = Inlet(back)
                    if self.eeg.sfreq != self.epocher.fs_in or self.eeg.n_channels != info.n_channels:
                        raise StreamLost(f"EEG stream {info.name!r} came back with another layout "
                                         f"({self.eeg.n_channels} ch at {self.eeg.sfreq:g} Hz); restart `sa stream`.")
                    self.eeg_info = back
                    self._last_data = time.monotonic()
                else:
                    self.markers.close()
                    self.markers = Inlet(back)
                    self.marker_info = back
                self._say(f"{role} stream {info.name!r} is back; decoding continues.", "reconnected")
                self.status.state = "running"
                return
        raise StreamLost(f"{role} stream {info.name!r} vanished and did not come back within {self.options.lost_s:g} s; "
                         f"the session ended after {len(self.decisions)} decision(s), all in {self.log_path}.")
