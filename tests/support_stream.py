"""Helpers for the online-decoding tests and bench (no tests here): loopback LSL, a gallery, a trained checkpoint,
and a recording whose EEG is driven by the gallery images so the decoder has right answers.

Import this module BEFORE mne_lsl: it points $LSLAPICFG at a loopback-only lsl_api.cfg, which liblsl reads once.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sa.decode.lsl import write_loopback_config

if "LSLAPICFG" not in os.environ:
    os.environ["LSLAPICFG"] = str(write_loopback_config(Path(tempfile.mkdtemp(prefix="sa-lsl-")) / "lsl_api.cfg"))

SFREQ = 100.0
TIMES = np.arange(-5, 26) / SFREQ  # the checkpoint's epoch: -0.05 .. 0.25 s
CH_NAMES = ["O1", "Oz", "O2", "PO7", "PO3", "POz", "PO4", "PO8"]
IMAGE_SET = "0123456789abcdef"


@dataclass
class Forward:
    """EEG evoked by an image: sum over features k of F[k] * spatial[k, c] * a smooth waveform_k(t)."""

    spatial: np.ndarray  # (D, C)
    centers: np.ndarray  # (D,) seconds
    widths: np.ndarray  # (D,) seconds
    amplitude: float = 1e-6

    @classmethod
    def make(cls, dim: int, n_channels: int, seed: int = 0) -> "Forward":
        rng = np.random.default_rng(seed)
        return cls(rng.standard_normal((dim, n_channels)), rng.uniform(0.05, 0.2, dim), rng.uniform(0.02, 0.04, dim))

    def waveforms(self, times: np.ndarray) -> np.ndarray:
        """(D, T) Gaussian bumps: band-limited far below 50 Hz, so resampling keeps them."""
        return np.exp(-0.5 * ((times[None, :] - self.centers[:, None]) / self.widths[:, None]) ** 2)

    def evoked(self, feats: np.ndarray, times: np.ndarray) -> np.ndarray:
        """(n, C, T) responses to images with features (n, D)."""
        return self.amplitude * np.einsum("nd,dc,dt->nct", feats, self.spatial, self.waveforms(times))


def image_ids(n: int) -> list[str]:
    """THINGS-like ids: test_images/<nnnnn_concept>/<concept>_01.jpg."""
    return [f"test_images/{i + 1:05d}_thing{i:02d}/thing{i:02d}_01.jpg" for i in range(n)]


def make_gallery(root: Path, n: int = 24, dim: int = 16, seed: int = 0, backbone_key: str = "toy-net-0000000000",
                 array: str = "gap/09"):
    """A complete cache group of n images with random features, written by sa's own cache writer."""
    from sa.cache import open_root

    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, dim)).astype(np.float16)
    writer = open_root(root).create(IMAGE_SET, backbone_key, image_ids(n), {array: dim}, {"backbone": {"name": "toy"}})
    for b in range(writer.n_blocks):
        rows = writer.block_rows_slice(b)
        writer.write_block(b, {array: feats[rows]})
    return writer.finalize()


def train_checkpoint(path: Path, group, fwd: Forward, *, encoder: str = "linear", embed_dim: int = 32,
                     reps: int = 20, noise: float = 0.3, epochs: int = 40, seed: int = 0) -> Path:
    """Train an aligner on simulated trials of the gallery images with sa's trainer; save it with sa's save path."""
    from dataclasses import asdict

    from sa.train.checkpoint import Checkpoint, save_checkpoint
    from sa.train.trainer import RunSpec, TrainConfig, train_runs

    rng = np.random.default_rng(seed + 1)
    feats = group.read("gap/09").astype(np.float32)
    idx = np.repeat(np.arange(len(feats)), reps)
    clean = fwd.evoked(feats[idx], TIMES)
    x = clean + noise * fwd.amplitude * rng.standard_normal(clean.shape)
    mean = x.mean(axis=(0, 2))
    std = x.transpose(1, 0, 2).reshape(len(CH_NAMES), -1).std(axis=1)
    xz = ((x - mean[None, :, None]) / std[None, :, None]).astype(np.float32)
    cfg = TrainConfig(encoder=encoder, embed_dim=embed_dim, epochs=epochs, batch_size=64, lr=3e-3, device="cpu",
                      precision="fp32", select="last")
    (res,) = train_runs(xz, {"09": feats[idx]}, None, None, xz[::reps], {"09": feats}, [RunSpec("09", seed)], cfg,
                        progress=False)
    ckpt = Checkpoint(model=res.model, config={**asdict(cfg), "ks": list(cfg.ks)}, encoder=encoder,
                      n_channels=len(CH_NAMES), n_times=len(TIMES), feat_dim=feats.shape[1], ch_names=list(CH_NAMES),
                      times=[float(t) for t in TIMES], sfreq=SFREQ, window=None, average_reps=True,
                      zscore_mean=mean.astype(np.float32), zscore_std=std.astype(np.float32), cache_key=group.key,
                      cache_root=str(group.root.url), pool="gap", layer="09", seed=seed,
                      meta={"subject": "sim", "run_id": "sim-run", "metrics": {"top1": res.top1}})
    return save_checkpoint(path, ckpt)


def trained_model(tmp_path_factory):
    """(checkpoint, gallery group, forward model, gallery features) of the session: trained on first use (~5 s)."""
    from sa.cache import open_root

    base = tmp_path_factory.getbasetemp() / "stream-model"
    ckpt = base / "sim.safetensors"
    fwd = Forward.make(16, len(CH_NAMES))
    if ckpt.exists():
        group = open_root(base / "cache").open(f"{IMAGE_SET}/toy-net-0000000000")
    else:
        base.mkdir(parents=True, exist_ok=True)
        group = make_gallery(base / "cache")
        train_checkpoint(ckpt, group, fwd)
    return ckpt, group, fwd, group.read("gap/09").astype(np.float32)


def make_raw(fwd: Forward, feats: np.ndarray, shown: list[int], *, sfreq: float = SFREQ, soa: float = 0.35,
             lead: float = 1.5, tail: float = 0.8, noise: float = 0.3, seed: int = 3, extra: bool = True,
             trigger: bool = False, labels: list[str] | None = None):
    """An mne Raw: low-passed background noise plus the evoked response of each shown image at its onset.

    Onsets fall on samples (and on even samples at 200 Hz), annotated with each image's label; channels come in
    another order than the checkpoint's, with an EOG channel (and a STI trigger channel carrying 1-based codes).
    """
    import mne
    from scipy.signal import butter, sosfiltfilt

    rng = np.random.default_rng(seed)
    n_samp = int(round((lead + soa * len(shown) + tail) * sfreq))
    sos = butter(4, 20, fs=sfreq, output="sos")
    data = noise * fwd.amplitude * 3 * sosfiltfilt(sos, rng.standard_normal((len(CH_NAMES), n_samp)), axis=1)
    step = int(round(soa * sfreq))
    step += step % 2
    first = int(round(lead * sfreq))
    first += first % 2
    onsets = first + step * np.arange(len(shown))
    span = np.arange(int(round(TIMES[0] * sfreq)), int(round(TIMES[-1] * sfreq)) + 1)
    resp = fwd.evoked(feats[shown], span / sfreq)
    for k, s in enumerate(onsets):
        data[:, s + span] += resp[k]
    order = [3, 0, 7, 5, 1, 6, 2, 4]
    names = [CH_NAMES[i] for i in order]
    chans, types = [data[i] for i in order], ["eeg"] * len(order)
    if extra:
        chans.append(fwd.amplitude * rng.standard_normal(n_samp))
        names.append("EOG1")
        types.append("eog")
    if trigger:
        sti = np.zeros(n_samp)
        for k, s in enumerate(onsets):
            sti[s:s + 3] = shown[k] + 1
        chans.append(sti)
        names.append("STI")
        types.append("stim")
    raw = mne.io.RawArray(np.array(chans), mne.create_info(names, sfreq, types), verbose="error")
    labs = labels or [f"img{i}" for i in shown]
    raw.set_annotations(mne.Annotations(onsets / sfreq, [0.0] * len(onsets), labs))
    return raw


def offline_epochs(raw, baseline=None):
    """mne's own epochs at the annotations (the offline cut `sa decode` would be given)."""
    import mne

    events, event_id = mne.events_from_annotations(raw, verbose="error")
    tmin = TIMES[0] if baseline is None else min(TIMES[0], baseline[0])
    return mne.Epochs(raw, events, event_id, tmin=tmin, tmax=TIMES[-1], baseline=baseline, preload=True,
                      picks="all", verbose="error")


class Collector:
    """Messages a session says, kept for assertions."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        self.lines.append(text)

    def having(self, part: str) -> list[str]:
        return [line for line in self.lines if part in line]


def run_in_thread(session, **kw):
    """Start session.run(**kw) in a thread; returns (thread, box) where box gets 'decisions' or 'error'."""
    box: dict = {}

    def go():
        try:
            box["decisions"] = session.run(**kw)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, box


def wait_running(session, timeout: float = 20.0) -> None:
    """Block until the session has connected its streams and opened its outlets."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if session.status.state == "running" and getattr(session, "log", None) is not None:
            return
        time.sleep(0.02)
    raise TimeoutError("the session did not start")


class EEGOutlet:
    """A hand-driven EEG outlet (and string marker outlet) for fault cases: push samples with chosen timestamps."""

    def __init__(self, name: str, ch_names: list[str], sfreq: float = SFREQ, marker_name: str | None = None) -> None:
        from mne_lsl.lsl import StreamInfo, StreamOutlet

        info = StreamInfo(name, "EEG", len(ch_names), sfreq, "float32", f"src-{name}")
        info.set_channel_names(ch_names)
        self.outlet = StreamOutlet(info, chunk_size=1)
        self.ch_names = list(ch_names)
        self.sfreq = sfreq
        self.markers = None
        if marker_name:
            minfo = StreamInfo(marker_name, "Markers", 1, 0.0, "string", f"src-{marker_name}")
            self.markers = StreamOutlet(minfo, chunk_size=1)

    def push(self, data: np.ndarray, t0: float) -> None:
        """(n, C) samples stamped t0, t0 + 1/sfreq, ..."""
        ts = t0 + np.arange(len(data)) / self.sfreq
        self.outlet.push_chunk(np.ascontiguousarray(data, dtype=np.float32), timestamp=ts)

    def mark(self, label: str, t: float) -> None:
        self.markers.push_sample([label], timestamp=t)

    def close(self) -> None:
        for o in (self.outlet, self.markers):
            if o is not None:
                o._del()
