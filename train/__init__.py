"""Training: brain encoders, the contrastive loss, the batched trainer, evaluation, the sweep (+ dask), checkpoints.

`sweep` trains every subject x backbone x layer x encoder x seed against the
cache and appends one row per run to runs.csv (`ResultsDir`); `summarize`
picks each backbone's best layer on validation; `train_one` writes one
checkpoint (`Checkpoint`). Layer selection lives here because the sweep
resumes from, and selects over, its own results table; `sa.report` draws it.
"""

from __future__ import annotations

from sa._lazy import lazy_exports

_WHERE = {
    "sweep": "sa.train.sweep", "train_one": "sa.train.sweep", "SweepResult": "sa.train.sweep",
    "TrainConfig": "sa.train.trainer", "RunSpec": "sa.train.trainer", "train_runs": "sa.train.trainer",
    "ENCODERS": "sa.train.encoders", "build_encoder": "sa.train.encoders",
    "top1_accuracy": "sa.train.evaluate",
    "Checkpoint": "sa.train.checkpoint", "load_checkpoint": "sa.train.checkpoint",
    "save_checkpoint": "sa.train.checkpoint",
    "MixOptions": "sa.train.mix", "read_weights": "sa.train.mix",
    "ResultsDir": "sa.train.results", "summarize": "sa.train.summary", "BackboneSummary": "sa.train.summary",
}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
