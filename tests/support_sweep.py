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


def one_sentence(res, code: int, *needles: str) -> str:
    """The single error line of a failed CliRunner result, after checking the exit code and the absence of a traceback."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def write_categories(data: Path, folder: Path) -> Path:
    """A concept,category CSV for every concept of sub-01 of a synthetic dataset (category = the concept's prefix)."""
    from sa.brain.data import open_dataset
    from sa.brain.things import concepts_of_ids

    raw = open_dataset(data).raw("sub-01")
    concepts = sorted(set(concepts_of_ids(raw.test.image_ids)) | set(concepts_of_ids(raw.train.image_ids)))
    path = folder / "cats.csv"
    path.write_text("concept,category\n" + "".join(f"{c},{c.split('_')[0]}\n" for c in concepts))
    return path
