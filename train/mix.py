"""`--layers mix`: one run whose image side is a learned, softmax-weighted mix of several layers' features.

Each chosen layer gets its own linear projector into the shared space; the
projections are L2-normalised and summed with weights softmax(gain * a) over
layers, so a weight is the layer's share of the image embedding. The
layers' features travel as one (n, sum D [+ S] [+ 1]) matrix, grouped by
width, and the projectors of each width are one (|g|, n, D) x (|g|, D, d) bmm
(one bmm in all for a ViT, a few for a CNN; nothing is padded). Each layer is
standardised by its training rows' mean and RMS (buffers, so test features
are scaled the same way). Variants (`MIX_VARIANTS`): plain softmax,
or softmax plus an entropy penalty that pushes the weights towards few layers.

Per subject (`--mix-per-subject`, LOSO): the last S columns hold a one-hot of
the training row's subject and each subject has its own weights; rows without
a subject (validation, the test subject, the gallery) get the mean of the
subjects' weights, so a new subject is never fitted on test. The weights are
trained on training rows and selected by the run's validation rule only.

Everything else is the ordinary trainer: `MixSpec.build` hands it a
`MixAlignModel` (an AlignModel whose loss adds the penalty) through
`RunSpec.mix`, and the run is one runs.csv row with layer `mix` or `mix:l1,l2`.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sa.errors import SAError
from sa.train.batched import AlignModel
from sa.train.loss import clip_loss

# Weight variants. Default chosen on validation top-1 by bench/mix.py (docs/mix.md).
MIX_VARIANTS: dict[str, str] = {
    "softmax": "plain softmax over per-layer logits",
    "entropy": "softmax plus an entropy penalty (MixOptions.entropy) that favours few layers",
    "heldout": "softmax whose logits learn only from held-out training concepts (MixOptions.holdout), the projectors "
               "and encoder only from the rest, so a layer that merely fits the training rows gains no weight",
}
DEFAULT_VARIANT = "heldout"
DEFAULT_ENTROPY = 0.1  # penalty per nat of weight entropy (the CLIP loss is ~log(batch) nats)
# How far (in logit units) the layer logits may travel over the whole run, whatever --lr, the data size or --epochs:
# the logits get gain = TRAVEL / (steps * lr), which for Adam is their own learning rate TRAVEL / steps. Measured on
# validation by bench/mix.py (docs/mix.md): ~8 units suits both a 45-step and a 165-step run.
DEFAULT_TRAVEL = 8.0
DEFAULT_HOLDOUT = 0.2  # share of training concepts whose rows train the weights of the 'heldout' variant
MIX_WEIGHTS_FILE = "mix_weights.csv"
MIX_COLUMNS = ("run_id", "subject", "layer", "depth", "weight")
SHARED = "shared"  # the `subject` cell of the weights a new subject gets


def is_mix(label: str) -> bool:
    """True for the layer labels of a mix run: 'mix' or 'mix:l1,l2,...'."""
    text = str(label).strip().lower()
    return text == "mix" or text.startswith("mix:")


@dataclass(frozen=True)
class MixOptions:
    """How a mix run weighs its layers: the variant, its entropy penalty, the logits' travel, per-subject weights."""

    variant: str = DEFAULT_VARIANT
    entropy: float = DEFAULT_ENTROPY
    travel: float = DEFAULT_TRAVEL
    per_subject: bool = False
    holdout: float = DEFAULT_HOLDOUT

    def check(self) -> None:
        """SAError naming the option that cannot work."""
        if self.variant not in MIX_VARIANTS:
            raise SAError(f"--mix-weights {self.variant!r} is not known; use one of {', '.join(MIX_VARIANTS)}.")
        for name, value in (("--mix-entropy", self.entropy), ("mix travel", self.travel)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise SAError(f"{name} {value} must be a finite number of at least 0.")
        if not 0 < self.holdout < 1:
            raise SAError(f"mix holdout {self.holdout} must lie between 0 and 1 (a share of the training concepts).")
        if self.travel <= 0:
            raise SAError(f"mix travel {self.travel} must be above 0 (how far the layer logits may move in a run).")

    def id_fields(self) -> dict[str, Any]:
        """The options as they enter a mix run's id (the penalty only where it acts)."""
        out: dict[str, Any] = {"variant": self.variant, "travel": self.travel, "per_subject": self.per_subject}
        if self.variant == "entropy":
            out["entropy"] = self.entropy
        if self.variant == "heldout":
            out["holdout"] = self.holdout
        return out


def mix_layers(spec: str, group: Any, pool: str) -> tuple[str, list[str]]:
    """('mix' | 'mix:l1,l2', layer labels) for --layers mix (every pooled layer) or mix:1,4,8 (those; final allowed)."""
    from sa.train.features import expand_layers

    text = str(spec).strip().lower()
    if text == "mix":
        layers = list(group.layers(pool))
    elif m := re.fullmatch(r"mix:(.+)", text):
        layers = expand_layers(m.group(1), group, pool, with_final=False)
    else:
        raise SAError(f"--layers {spec!r} is not a mix; use mix or mix:l1,l2,... (e.g. mix:4,8,12).")
    if len(layers) < 2:
        raise SAError(f"--layers {spec} mixes {len(layers)} layer of cache group {group.key}; name at least two, "
                      "e.g. mix:4,8.")
    label = "mix" if text == "mix" else "mix:" + ",".join(layers)
    return label, layers


# ---------------------------------------------------------------- the model


def width_groups(widths: Sequence[int]) -> list[list[int]]:
    """Layer indices grouped by feature width, in order of first appearance: one bmm per group, no padding."""
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(widths):
        groups.setdefault(int(w), []).append(i)
    return list(groups.values())


def column_order(widths: Sequence[int]) -> list[int]:
    """The layers in the order their columns sit in the stacked feature matrix (grouped by width)."""
    return [i for g in width_groups(widths) for i in g]


class MixProjector(nn.Module):
    """(n, sum D [+S] [+1]) stacked layer features -> (n, d): per-layer Linear (one bmm per width), normalise, weigh."""

    def __init__(self, widths: Sequence[int], embed_dim: int, mean: np.ndarray, scale: np.ndarray,
                 n_subjects: int = 0, gain: float = 1.0, entropy: float = 0.0, flag: bool = False) -> None:
        super().__init__()
        n_layers = len(widths)
        self.widths, self.n_subjects, self.flag = [int(w) for w in widths], n_subjects, flag
        self.groups = width_groups(self.widths)
        self.body = int(sum(self.widths))
        order = column_order(self.widths)
        self.unorder = [order.index(i) for i in range(n_layers)]  # group order -> layer order (a constant)
        weights, biases = [], []
        for g in self.groups:  # nn.Linear's default init, layer by layer
            w = self.widths[g[0]]
            bound = 1 / math.sqrt(w)
            weights.append(nn.Parameter(torch.empty(len(g), w, embed_dim).uniform_(-bound, bound)))
            biases.append(nn.Parameter(torch.empty(len(g), embed_dim).uniform_(-bound, bound)))
        self.weights, self.biases = nn.ParameterList(weights), nn.ParameterList(biases)
        self.logits = nn.Parameter(torch.zeros(max(n_subjects, 1), n_layers))
        col_scale = np.concatenate([np.full(self.widths[i], 1.0 / float(scale[i]), np.float32) for i in order])
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, np.float32)).reshape(self.body))
        self.register_buffer("col_scale", torch.as_tensor(col_scale))
        self.register_buffer("gain", torch.tensor(float(gain)))
        self.register_buffer("entropy", torch.tensor(float(entropy)))

    def layer_linear(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight (D_i, d), bias (d,)) of layer i's projector."""
        k = next(k for k, g in enumerate(self.groups) if i in g)
        j = self.groups[k].index(i)
        return self.weights[k][j], self.biases[k][j]

    def probs(self) -> torch.Tensor:
        """(max(S, 1), L) layer weights: one row per training subject (one shared row without subjects)."""
        return torch.softmax(self.logits * self.gain, dim=-1)

    def shared(self) -> torch.Tensor:
        """(L,) the weights a row without a subject gets: the mean of the subjects' weights."""
        return self.probs().mean(0)

    def penalty(self) -> torch.Tensor:
        """entropy x the mean weight entropy over subjects (0 for plain softmax)."""
        p = self.probs()
        return self.entropy * -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()

    def parts(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(unit projections (L, n, d), per-row weights (n, L), held-out flag (n,) or None) of a feature batch."""
        n, n_layers, body = feats.shape[0], len(self.widths), self.body
        f = (feats[:, :body] - self.mean) * self.col_scale
        proj, start = [], 0
        for g, w, b in zip(self.groups, self.weights, self.biases):  # one bmm per width: (|g|, n, D) x (|g|, D, d)
            block = f[:, start: start + len(g) * w.shape[1]].reshape(n, len(g), w.shape[1]).transpose(0, 1)
            proj.append(torch.baddbmm(b[:, None, :], block, w))
            start += len(g) * w.shape[1]
        unit = F.normalize(torch.cat(proj)[self.unorder], dim=-1)  # (L, n, d) in layer order
        shared = self.shared()
        if self.n_subjects:
            onehot = feats[:, body: body + self.n_subjects]
            rows = onehot @ self.probs() + (1 - onehot.sum(1, keepdim=True)) * shared  # (n, L)
        else:
            rows = shared.expand(n, n_layers)
        flag = feats[:, -1] if self.flag else None
        return unit, rows, flag

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        unit, rows, _ = self.parts(feats)
        return combine(rows, unit)


def combine(rows: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """(n, d) = sum over layers of each row's weight times its unit projection."""
    return torch.einsum("nl,lnd->nd", rows, unit)


def masked_clip_loss(brain: torch.Tensor, image: torch.Tensor, scale: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """clip_loss over only the rows where keep is 1 (a float mask, so it runs under vmap); 0 with no such row."""
    b, i = F.normalize(brain.float(), dim=-1), F.normalize(image.float(), dim=-1)
    pair = keep[:, None] * keep[None, :]
    logits = scale * (b @ i.T) * pair - 1e4 * (1 - pair)  # pairs outside the subset never compete
    diag = torch.log_softmax(logits, 1).diagonal() + torch.log_softmax(logits, 0).diagonal()
    return -(keep * diag).sum() / (2 * keep.sum().clamp_min(1))


class MixAlignModel(AlignModel):
    """AlignModel with a MixProjector image side; its training loss adds the weights' penalty."""

    def forward(self, x: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        unit, rows, flag = self.image.parts(feats)
        brain, scale = self.brain(x), self.loss.logit_scale
        if flag is None:
            return clip_loss(brain, combine(rows, unit), scale) + self.image.penalty()
        # held-out rows train only the layer weights; the other rows train everything but the weights
        fit = masked_clip_loss(brain, combine(rows.detach(), unit), scale, 1 - flag)
        weigh = masked_clip_loss(brain.detach(), combine(rows, unit.detach()), scale.detach(), flag)
        return fit + weigh + self.image.penalty()


@dataclass
class MixSpec:
    """What the trainer needs to build a mix run's model: layers, widths, training-row statistics, options."""

    layers: list[str]
    widths: list[int]
    mean: np.ndarray  # (sum D,) the layers' feature means, in column order
    scale: np.ndarray  # (L,) per-layer RMS distance from the mean
    options: MixOptions
    lr: float
    steps: int  # optimiser steps of the run (epochs x batches)
    subjects: list[str] = field(default_factory=list)  # training subjects, in one-hot column order (per-subject only)

    @property
    def heldout(self) -> bool:
        return self.options.variant == "heldout"

    @property
    def n_columns(self) -> int:
        """Columns of the stacked feature matrix: layers, subject one-hot, held-out flag."""
        return int(sum(self.widths)) + len(self.subjects) + int(self.heldout)

    def build(self, encoder: nn.Module, embed_dim: int, cfg: Any) -> MixAlignModel:
        """The run's model around an already-initialised brain encoder (called by the trainer after seeding)."""
        model = MixAlignModel(encoder, self.n_columns, embed_dim, False, cfg.temperature, cfg.learn_temperature)
        entropy = self.options.entropy if self.options.variant == "entropy" else 0.0
        model.image = MixProjector(self.widths, embed_dim, self.mean, self.scale, len(self.subjects),
                                   gain=self.options.travel / (self.steps * self.lr), entropy=entropy, flag=self.heldout)
        return model


def fit_spec(train_feats: Mapping[str, np.ndarray], layers: Sequence[str], options: MixOptions, lr: float,
             subjects: Sequence[str] = (), steps: int = 1) -> MixSpec:
    """A MixSpec whose standardisation comes from the training rows only."""
    widths = [int(train_feats[lyr].shape[1]) for lyr in layers]
    means: dict[int, np.ndarray] = {}
    scale = np.ones(len(layers), np.float32)
    for i, lyr in enumerate(layers):
        f = np.asarray(train_feats[lyr], np.float64)
        means[i] = f.mean(axis=0)
        rms = float(np.sqrt(np.mean(np.sum((f - means[i]) ** 2, axis=1))))
        scale[i] = rms if rms > 0 and math.isfinite(rms) else 1.0
    mean = np.concatenate([means[i] for i in column_order(widths)]).astype(np.float32)
    return MixSpec(list(layers), widths, mean, scale, options, float(lr), max(1, int(steps)), list(subjects))


def stack_features(feats: Mapping[str, np.ndarray], spec: MixSpec, subjects: Sequence[str] | None = None,
                   heldout: np.ndarray | None = None) -> np.ndarray:
    """(n, sum D + S [+1]) float32: the layers' features (grouped by width), the subject one-hot (zeros if None),
    and for the 'heldout' variant a last column that is 1 on rows that train the weights (zeros if None)."""
    n = len(feats[spec.layers[0]])
    out = np.zeros((n, spec.n_columns), np.float32)
    if spec.heldout and heldout is not None:
        out[:, -1] = np.asarray(heldout, np.float32)
    start = 0
    for i in column_order(spec.widths):
        out[:, start: start + spec.widths[i]] = feats[spec.layers[i]]
        start += spec.widths[i]
    if spec.subjects and subjects is not None:
        col = {s: k for k, s in enumerate(spec.subjects)}
        rows = np.fromiter((col.get(str(s), -1) for s in subjects), np.int64, count=n)
        known = rows >= 0
        out[np.flatnonzero(known), start + rows[known]] = 1.0
    return out


def learned_weights(model: AlignModel, spec: MixSpec) -> dict[str, np.ndarray]:
    """{'shared': (L,), subject: (L,) ...} the trained model's layer weights."""
    proj = model.image
    if not isinstance(proj, MixProjector):
        raise TypeError("learned_weights needs a model built by MixSpec.build")
    with torch.no_grad():
        out = {SHARED: proj.shared().cpu().numpy().astype(np.float64)}
        if spec.subjects:
            probs = proj.probs().cpu().numpy().astype(np.float64)
            out.update({s: probs[k] for k, s in enumerate(spec.subjects)})
    return out


def weight_rows(run_id: str, spec: MixSpec, weights: Mapping[str, np.ndarray],
                depth: Mapping[str, float | None]) -> list[dict]:
    """mix_weights.csv rows: one per (subject or 'shared', layer)."""
    return [{"run_id": run_id, "subject": who, "layer": lyr, "depth": depth.get(lyr), "weight": float(w[i])}
            for who, w in weights.items() for i, lyr in enumerate(spec.layers)]


# ---------------------------------------------------------------- the side file


def append_weights(results: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append rows to <results>/mix_weights.csv with the results table's own locked, fsynced append."""
    if rows:
        results._append(Path(results.path) / MIX_WEIGHTS_FILE, MIX_COLUMNS, list(rows))


def read_weights(results: Any) -> list[dict]:
    """Typed rows of <results>/mix_weights.csv (empty when none); the last copy of a run's rows wins."""
    from sa.train.results import ResultsDir

    rd = results if isinstance(results, ResultsDir) else ResultsDir(results)
    path = Path(rd.path) / MIX_WEIGHTS_FILE
    if not path.exists():
        return []
    raw = rd._read(path, MIX_COLUMNS)
    by_run: dict[str, list[dict]] = {}
    for r in raw:  # a redone run appends its weights again: keep its latest block
        block = by_run.setdefault(r["run_id"], [])
        if any(b["subject"] == r["subject"] and b["layer"] == r["layer"] for b in block):
            block.clear()
        block.append(r)
    out = []
    for block in by_run.values():
        for r in block:
            try:
                out.append({**r, "depth": None if r["depth"] in (None, "") else float(r["depth"]),
                            "weight": float(r["weight"])})
            except (TypeError, ValueError):
                raise SAError(f"{path}: run {r['run_id']} has weight {r['weight']!r}, not a number; fix or delete "
                              "that line.") from None
    return out


def write_weights_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Plain CSV of weight rows (for reports)."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(MIX_COLUMNS))
        w.writeheader()
        w.writerows(rows)


# ---------------------------------------------------------------- training a job's mix runs


def train_mix(subj: Any, table: Any, gallery_feats: Mapping[str, np.ndarray], targets: np.ndarray, pool: str,
              label: str, layers: Sequence[str], seeds: Sequence[int], cfg: Any, options: MixOptions,
              encoder: str, split_seed: int = 0) -> tuple[MixSpec, list[Any]]:
    """Train the mix runs of one subject (one per seed) with the ordinary trainer; (spec, RunResults in seed order)."""
    from sa.train.features import split_features
    from sa.train.trainer import RunSpec, train_runs

    options.check()
    if not cfg.image_proj:
        raise SAError("--layers mix projects every layer into the shared space; drop --no-image-proj.")
    subjects: list[str] = []
    if options.per_subject:
        if subj.fold != "loso" or subj.train.subjects is None:
            raise SAError("--mix-per-subject gives each training subject its own layer weights; it needs --loso "
                          "(a training set of several subjects).")
        subjects = list(dict.fromkeys(str(s) for s in subj.train.subjects))
    has_val = len(subj.val) > 0
    train_f = split_features(table, subj.train, pool, layers)
    n = len(subj.train)
    steps = cfg.epochs * sum(1 for s in range(0, n, cfg.batch_size) if n - s >= 2)  # as the trainer counts them
    spec = fit_spec(train_f, layers, options, cfg.lr, subjects, steps)
    weigh = None
    if spec.heldout:  # a seeded share of the training concepts trains the weights (never validation or test rows)
        from sa.brain.data import validation_concepts

        held = validation_concepts(np.asarray(subj.train.concepts), options.holdout, int(split_seed) + 1)
        weigh = np.isin(subj.train.concepts, held)
    train_x = stack_features(train_f, spec, subj.train.subjects, weigh)
    del train_f
    val_x = stack_features(split_features(table, subj.val, pool, layers), spec) if has_val else None
    test_x = stack_features(gallery_feats, spec)
    runs = [RunSpec(label, int(s), encoder, mix=spec) for s in seeds]
    results = train_runs(subj.train.x, {label: train_x}, subj.val.x if has_val else None,
                         {label: val_x} if has_val else None, subj.test.x, {label: test_x}, runs, cfg,
                         test_targets=targets, progress=False, val_ids=subj.val.image_ids if has_val else None)
    return spec, results


def train_mix_job(job: Any, subj: Any, table: Any, gallery: Any, health: Mapping[str, str], cfg: Any, has_val: bool,
                  make_row: Any, keep_models: bool = False) -> dict[tuple[str, int], tuple[dict, list[dict], Any]]:
    """A job's mix runs: {(label, seed): (runs.csv row with its 'mix_weights' rows, curves, model or None)}.

    Layers whose features are not finite are left out of the mix (their weight rows say so by absence); with
    fewer than two usable layers nothing is trained and the rows carry the worst layer's flag.
    """
    from sa.train.results import FEATURE_FLAGS, STATUS_DIVERGED, STATUS_OK

    label, layers, options = job.mix["label"], list(job.mix["layers"]), job.mix["options"]
    seeds = [seed for lyr, seed, _ in job.runs if lyr == label]
    usable = [lyr for lyr in layers if health[lyr] != FEATURE_FLAGS[2]]
    out: dict[tuple[str, int], tuple[dict, list[dict], Any]] = {}
    if len(usable) < 2:
        for lyr, seed, rid in job.runs:
            if lyr == label:
                out[(lyr, seed)] = (make_row(job, lyr, seed, rid, cfg, None, FEATURE_FLAGS[2], has_val), [], None)
        return out
    spec, results = train_mix(subj, table, {lyr: gallery.feats[lyr] for lyr in usable}, gallery.targets, job.pool,
                              label, usable, seeds, cfg, options, job.encoder, job.options.split_seed)
    depth = job.backbone.get("depth", {})
    by_seed = dict(zip(seeds, results))
    for lyr, seed, rid in job.runs:
        if lyr != label:
            continue
        res = by_seed[seed]
        row = make_row(job, lyr, seed, rid, cfg, res, STATUS_DIVERGED if res.diverged else STATUS_OK, has_val)
        row["mix_weights"] = [] if res.diverged else weight_rows(rid, spec, learned_weights(res.model, spec), depth)
        out[(lyr, seed)] = (row, res.curves, res.model if keep_models else None)
    return out
