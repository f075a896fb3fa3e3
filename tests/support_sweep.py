"""Helpers for the sweep, decode and end-to-end tests (no tests here): one synthetic dataset per session, fast settings."""

from __future__ import annotations

from pathlib import Path

from sa.brain.synth import SynthOptions, make_synth, read_synth
from sa.train.trainer import TrainConfig

# THINGS-format EEG (2 subjects, 17 channels x 40 samples) simulated from MobileNetV2 (bundled weights) layer gap/09.
SYNTH = SynthOptions(n_times=40)


def synth_dataset(tmp_path_factory) -> tuple[Path, dict]:
    """(dataset folder, synth.json) of the session's synthetic dataset, written on first use (~20-40 s)."""
    base = tmp_path_factory.getbasetemp() / "sweep-synth"
    if not (base / "synth.json").exists():
        make_synth(base, SYNTH, progress=False)
    return base, read_synth(base)


def fast_config(epochs: int = 4, **kw) -> TrainConfig:
    """A small linear aligner that trains in about a second per stack on 2 CPU cores."""
    opts = dict(encoder="linear", embed_dim=32, epochs=epochs, batch_size=64, lr=3e-3, device="cpu", precision="fp32")
    return TrainConfig(**{**opts, **kw})


def metrics(row: dict) -> tuple:
    """The numbers of a run row that must be reproducible (not timings or timestamps)."""
    return tuple(row[k] for k in ("layer", "seed", "top1", "top5", "k2", "val_top1", "best_epoch", "temperature_final"))
