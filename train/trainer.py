"""Train many alignment runs of one subject at once: layers batched in a vmapped stack, per-run seeds.

Runs that share (seed, encoder, output width) form a group trained as one
`Stack`: the brain batch is read once per step for all layers in the group.
EEGProject and Linear groups use the hand-written `ProjectionStack` (one wide
GEMM for every run's first layer); other encoders the generic vmapped Stack.
Every run's randomness comes from its seed only (init, shuffling, dropout),
so a run trained in a group equals the same run trained alone. Each run's
epoch is selected by a rule over its validation curve (`SELECT_RULES`; the
default was measured, docs/selection.md) or is the last one, never on test.
A run whose loss or temperature stops being finite is reported as diverged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sa.errors import SAError
from sa.train.results import DEFAULT_SELECT, SELECT_RULES
from sa.progress import make_progress
from sa.train.batched import AlignModel, Stack
from sa.train.encoders import build_encoder, count_params
from sa.train.evaluate import retrieval_metrics, top1_accuracy
from sa.train.loss import clip_loss
from sa.train.stacked import make_stack


SMOOTH_EPOCHS = 3  # the window of the 'smooth' rule (SELECT_RULES, defined with the runs.csv columns)


def epoch_score(rule: str, val_loss: Sequence[float], val_top1: Sequence[float]) -> float:
    """The score (higher is better) by which `rule` ranks the state after the latest epoch of these curves."""
    if rule == "last":
        return float(len(val_top1))
    if rule == "val":
        return float(val_top1[-1])
    if rule == "val-loss":
        return -float(val_loss[-1])
    if rule == "smooth":
        return float(np.mean(val_top1[-SMOOTH_EPOCHS:]))
    raise SAError(f"--select {rule!r} is not known; use one of {', '.join(SELECT_RULES)}.")


def choose_epoch(rule: str, curves: Sequence[Mapping[str, float]]) -> int | None:
    """The epoch `rule` selects from a run's curves (the trainer's own choice); None when no epoch scores finite."""
    best, chosen = -math.inf, None
    for k in range(1, len(curves) + 1):
        score = epoch_score(rule, [c["val_loss"] for c in curves[:k]], [c["val_top1"] for c in curves[:k]])
        if score > best:  # strict: the earliest of equal scores; NaN never wins
            best, chosen = score, int(curves[k - 1]["epoch"])
    return chosen


def _finite_number(value: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TrainConfig:
    """Training options; defaults are the paper's (AdamW 1e-4 / 1e-4, batch 1024, 50 epochs).

    `select` is the epoch-selection rule (SELECT_RULES); its default was chosen by
    bench/selection.py (docs/selection.md).
    """

    encoder: str = "eegproject"
    embed_dim: int = 1024
    epochs: int = 50
    batch_size: int = 1024
    lr: float = 1e-4
    weight_decay: float = 1e-4
    temperature: float = 0.07
    learn_temperature: bool = True
    image_proj: bool = True
    select: str = DEFAULT_SELECT
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    precision: str = "auto"  # "auto" | "fp32" | "bf16"
    ks: tuple[int, ...] = (2, 4, 10, 50, 100)
    eval_seed: int = 0

    def check(self) -> None:
        """SAError naming the first option that cannot train (before any data is read)."""
        counts = (("epochs", self.epochs, 1), ("batch-size", self.batch_size, 2), ("embed-dim", self.embed_dim, 1))
        for name, value, least in counts:
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise SAError(f"--{name} {value} must be a whole number of at least {least}.")
        if not _finite_number(self.lr) or self.lr <= 0:
            raise SAError(f"--lr {self.lr} must be a positive finite number (the paper uses 1e-4).")
        if not _finite_number(self.weight_decay) or self.weight_decay < 0:
            raise SAError(f"--weight-decay {self.weight_decay} must be a finite number of at least 0 (the paper uses 1e-4).")
        if not _finite_number(self.temperature) or self.temperature <= 0:
            raise SAError(f"--temperature {self.temperature} must be a positive finite number (CLIP starts at 0.07).")
        if self.select not in SELECT_RULES:
            raise SAError(f"--select {self.select!r} is not known; use one of {', '.join(SELECT_RULES)}.")
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 2 for k in self.ks):
            raise SAError(f"ks {tuple(self.ks)} must be whole numbers of at least 2 (k-way retrieval).")
        if isinstance(self.eval_seed, bool) or not isinstance(self.eval_seed, int) or self.eval_seed < 0:
            raise SAError(f"eval_seed {self.eval_seed} must be a whole number of at least 0.")
        resolve_precision(self.precision, resolve_device(self.device))

    @property
    def needs_validation(self) -> bool:
        """Whether the selection rule reads the validation curve (every rule but 'last')."""
        return self.select != "last"


@dataclass
class RunSpec:
    """One run: the feature layer to align with, its seed, and optionally an encoder overriding the config's."""

    layer: str
    seed: int
    encoder: str | None = None
    mix: Any = None  # a sa.train.mix.MixSpec: the image side mixes several layers (its `build` makes the model)


@dataclass
class RunResult:
    """Test metrics of the selected checkpoint, its curves, and the trained single-run model."""

    spec: RunSpec
    top1: float
    top5: float
    kway: dict[str, float]
    mean_rank: float
    val_top1: float
    best_epoch: int
    curves: list[dict] = field(repr=False)
    train_seconds: float
    encoder_params: int
    temperature_final: float
    model: AlignModel = field(repr=False)
    diverged: bool = False  # the loss or temperature stopped being finite: the metrics are NaN, not results


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise SAError(f"device {name!r} is not a torch device; use auto, cpu or cuda.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SAError(f"device {name!r} asked for but CUDA is not available; use --device cpu.")
    return dev


def cpu_has_bf16() -> bool:
    """True if the CPU multiplies bf16 natively (AVX512-BF16 or AMX), where autocast pays off."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for the forward/backward (None = plain fp32)."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if name != "auto":
        raise SAError(f"precision {name!r} is not known; use auto, fp32 or bf16.")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_bf16() else None


def _check_inputs(train_x, train_feats, val_x, val_feats, test_x, test_feats, runs, cfg) -> None:
    """Raise SAError for shapes or options that cannot train."""
    cfg.check()
    if cfg.needs_validation and (val_x is None or len(val_x) < 2):
        raise SAError(f"--select {cfg.select} needs a validation split of at least 2 trials; set --val-fraction above 0 "
                      "or use --select last.")
    if train_x.ndim != 3:
        raise SAError(f"train_x must be (n, channels, times), got shape {train_x.shape}.")
    for spec in runs:
        for name, feats, x in (("train", train_feats, train_x), ("val", val_feats, val_x), ("test", test_feats, None)):
            if x is None and name == "val" and val_x is None:
                continue
            if spec.layer not in feats:
                raise SAError(f"layer {spec.layer!r} has no {name} features; pass it in {name}_feats or drop the run.")
            if x is not None and len(feats[spec.layer]) != len(x):
                raise SAError(f"{name} features of layer {spec.layer!r} have {len(feats[spec.layer])} rows but "
                              f"{name}_x has {len(x)}; align them to the same images.")


def _as_tensor(a, device: torch.device) -> torch.Tensor:
    """float32 tensor view of an array (no copy on CPU when already float32)."""
    t = torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32))
    return t.to(device)


def _init_model(spec: RunSpec, cfg: TrainConfig, encoder: str, shape: tuple[int, int], feat_dim: int) -> AlignModel:
    """The run's model, initialised from its seed alone."""
    torch.manual_seed(spec.seed)
    out = cfg.embed_dim if cfg.image_proj else feat_dim
    enc = build_encoder(encoder, shape[0], shape[1], out)
    if spec.mix is not None:
        return spec.mix.build(enc, out, cfg)
    return AlignModel(enc, feat_dim, out, cfg.image_proj, cfg.temperature, cfg.learn_temperature)


def _group(runs: Sequence[RunSpec], cfg: TrainConfig, widths: Mapping[str, int]) -> list[list[int]]:
    """Indices of runs that can share one stack: same seed, encoder and embedding width."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs):
        out = cfg.embed_dim if cfg.image_proj else widths[r.layer]
        mixed = r.layer if r.mix is not None else None  # a mix run's model has another shape: its own stack
        groups.setdefault((r.seed, (r.encoder or cfg.encoder).lower(), out, mixed), []).append(i)
    return list(groups.values())


def _padded_feats(feats: list[torch.Tensor], idx: torch.Tensor, width: int,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """(L, len(idx), width) rows idx of every layer's features, zero-padded to width (cast to dtype if given)."""
    out = feats[0].new_zeros((len(feats), len(idx), width), dtype=dtype)
    for i, f in enumerate(feats):
        out[i, :, : f.shape[1]] = f[idx]
    return out


def evaluate_split(stack: Stack, x: torch.Tensor, feats: list[torch.Tensor], batch: int,
                   ids: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-run (loss, top-1 %) on a split, in eval mode and fp32; loss averaged over batch-size chunks.

    `ids` (one image id per row) lets rows of the same image share a gallery entry (LOSO folds).
    """
    stack.train(False)
    with torch.no_grad():
        fb = _padded_feats(feats, torch.arange(len(x)), stack.width)
        zb, zi = stack.encode_brain(x), stack.encode_image(fb)
        scales = stack.logit_scales()
        losses = np.zeros(len(stack))
        for s in range(0, len(x), batch):
            e = min(s + batch, len(x))
            if e - s < 2:
                continue
            losses += np.array([float(clip_loss(zb[r, s:e], zi[r, s:e], scales[r])) * (e - s) for r in range(len(stack))])
        losses /= len(x)
        top1 = np.array([top1_accuracy(zb[r], zi[r], ids) for r in range(len(stack))])
    stack.train(True)
    return losses, top1


# Called after every epoch with (epoch, indices of the group's runs in `runs`, the stack): for measurements
# such as bench/selection.py, which scores every epoch on test to compare selection rules. Never selects.
EpochHook = Callable[[int, list[int], Stack], None]


def _train_group(members: list[RunSpec], cfg: TrainConfig, data: dict, device: torch.device,
                 amp: torch.dtype | None, advance, on_epoch=None) -> list[tuple[dict | None, int, float, list[dict]]]:
    """Train one stack; returns per run (selected state or None, its epoch, its val top-1, curves)."""
    seed = members[0].seed
    encoder = (members[0].encoder or cfg.encoder)
    n_ch, n_t = data["train_x"].shape[1:]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        models = [_init_model(r, cfg, encoder, (n_ch, n_t), data["widths"][r.layer]) for r in members]
        stack = make_stack(models, device)
        del models
        shuffle_seed, dropout_seed = np.random.SeedSequence(seed).generate_state(2)
        shuffler = torch.Generator().manual_seed(int(shuffle_seed))
        torch.manual_seed(int(dropout_seed))
        opt = torch.optim.AdamW(list(stack.params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        tr_feats = [data["train_feats"][r.layer] for r in members]
        va_feats = [data["val_feats"][r.layer] for r in members] if data["val_x"] is not None else None
        x_all, n = data["train_x"], len(data["train_x"])
        best: list[tuple[dict | None, int, float]] = [(None, 0, math.nan)] * len(members)
        best_score = [-math.inf] * len(members)
        curves: list[list[dict]] = [[] for _ in members]
        stack.train(True)
        for epoch in range(1, cfg.epochs + 1):
            perm = torch.randperm(n, generator=shuffler)  # on the CPU: the same shuffle on every device
            if device.type == "cuda":  # pinned + non_blocking: the copy does not stall the host
                perm = perm.pin_memory().to(device, non_blocking=True)
            sums, seen = torch.zeros(len(members), device=device), 0
            for s in range(0, n, cfg.batch_size):
                idx = perm[s: s + cfg.batch_size]
                if len(idx) < 2:
                    continue
                xb, fb = x_all[idx], _padded_feats(tr_feats, idx, stack.width, amp)
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    losses = stack.loss(xb, fb)
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                opt.step()
                sums += losses.detach().float() * len(idx)
                seen += len(idx)
                advance()
            train_loss = (sums / max(seen, 1)).cpu().numpy()
            if va_feats is not None:
                val_loss, val_top1 = evaluate_split(stack, data["val_x"], va_feats, cfg.batch_size, data.get("val_ids"))
            else:
                val_loss, val_top1 = np.full(len(members), np.nan), np.full(len(members), np.nan)
            for i in range(len(members)):
                curves[i].append({"epoch": epoch, "train_loss": float(train_loss[i]),
                                  "val_loss": float(val_loss[i]), "val_top1": float(val_top1[i])})
                c = curves[i]
                score = epoch_score(cfg.select, [r["val_loss"] for r in c], [r["val_top1"] for r in c])
                if score > best_score[i]:  # NaN never wins
                    best_score[i] = score
                    best[i] = (stack.state_of(i), epoch, float(val_top1[i]))
            if on_epoch is not None:
                on_epoch(epoch, stack)
    return [(b[0], b[1], b[2], c) for b, c in zip(best, curves)]


def diverged(curves: Sequence[Mapping[str, float]], state: Mapping[str, torch.Tensor] | None) -> bool:
    """True when a run's training loss stopped being finite, or no finite state was selected."""
    if state is None or any(not math.isfinite(c["train_loss"]) for c in curves):
        return True
    return not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def _finish(spec: RunSpec, cfg: TrainConfig, state: dict | None, shape, feat_dim: int, test_x, test_feats, targets,
            best_epoch: int, val_top1: float, curves: list[dict], seconds: float) -> RunResult:
    """Load the selected state into a single-run model and score it on the test gallery (NaN scores when diverged)."""
    with torch.random.fork_rng():
        model = _init_model(spec, cfg, spec.encoder or cfg.encoder, shape, feat_dim)
    failed = diverged(curves, state)
    if state is not None:
        model.load_state_dict(state)
    model.eval()
    if failed:
        nan = math.nan
        return RunResult(spec=spec, top1=nan, top5=nan, kway={f"k{k}": nan for k in cfg.ks}, mean_rank=nan,
                         val_top1=nan, best_epoch=best_epoch, curves=curves, train_seconds=seconds,
                         encoder_params=count_params(model.brain), temperature_final=float(1 / model.logit_scale.detach()),
                         model=model, diverged=True)
    with torch.no_grad():
        m = retrieval_metrics(model.encode_brain(torch.as_tensor(test_x, dtype=torch.float32)),
                              model.encode_image(torch.as_tensor(test_feats, dtype=torch.float32)),
                              targets, ks=cfg.ks, seed=cfg.eval_seed)
    kway = {k: v for k, v in m.items() if k.startswith("k")}
    return RunResult(spec=spec, top1=m["top1"], top5=m["top5"], kway=kway, mean_rank=m["mean_rank"],
                     val_top1=val_top1, best_epoch=best_epoch, curves=curves, train_seconds=seconds,
                     encoder_params=count_params(model.brain), temperature_final=float(1 / model.logit_scale.detach()),
                     model=model)


def train_runs(train_x: np.ndarray, train_feats: Mapping[str, np.ndarray], val_x: np.ndarray | None,
               val_feats: Mapping[str, np.ndarray] | None, test_x: np.ndarray, test_feats: Mapping[str, np.ndarray],
               runs: Sequence[RunSpec], cfg: TrainConfig = TrainConfig(), test_targets: np.ndarray | None = None,
               progress: bool = True, val_ids: Sequence[str] | None = None,
               on_epoch: EpochHook | None = None) -> list[RunResult]:
    """Train every run (grouped into vmapped stacks) and return their results in the order of `runs`.

    x arrays are (n, C, T); feats map layer -> (n, D) rows paired with x; test_feats
    is the gallery (m, D) per layer and test_targets maps test rows to gallery rows.
    val_ids (one image id per validation row) merges repeated images in validation
    top-1 (LOSO folds). on_epoch is for measurements only (see EpochHook).
    """
    val_feats = val_feats or {}
    _check_inputs(train_x, train_feats, val_x, val_feats, test_x, test_feats, runs, cfg)
    if val_ids is not None and val_x is not None and len(val_ids) != len(val_x):
        raise SAError(f"val_ids has {len(val_ids)} ids for {len(val_x)} validation rows; give one image id per row.")
    device = resolve_device(cfg.device)
    amp = resolve_precision(cfg.precision, device)
    layers = sorted({r.layer for r in runs})
    data = {
        "train_x": _as_tensor(train_x, device),
        "val_x": None if val_x is None else _as_tensor(val_x, device),
        "val_ids": None if val_ids is None else [str(i) for i in val_ids],
        "train_feats": {k: _as_tensor(train_feats[k], device) for k in layers},
        "val_feats": {k: _as_tensor(val_feats[k], device) for k in layers} if val_x is not None else {},
        "widths": {k: int(np.shape(train_feats[k])[1]) for k in layers},
    }
    groups = _group(runs, cfg, data["widths"])
    steps = cfg.epochs * sum(1 for s in range(0, len(train_x), cfg.batch_size) if len(train_x) - s >= 2)
    results: list[RunResult | None] = [None] * len(runs)
    with make_progress("step", disable=not progress) as bar:
        task = bar.add_task(f"training {len(runs)} runs in {len(groups)} stacks", total=steps * len(groups))
        for members in groups:
            t0 = time.perf_counter()
            hook = None if on_epoch is None else (lambda epoch, stack, m=members: on_epoch(epoch, list(m), stack))
            out = _train_group([runs[i] for i in members], cfg, data, device, amp, lambda: bar.advance(task), hook)
            seconds = (time.perf_counter() - t0) / len(members)
            for i, (state, epoch, vtop1, curves) in zip(members, out):
                spec = runs[i]
                results[i] = _finish(spec, cfg, state, train_x.shape[1:], data["widths"][spec.layer], test_x,
                                     test_feats[spec.layer], test_targets, epoch, vtop1, curves, seconds)
    return results  # type: ignore[return-value]


def plain_model(spec: RunSpec, cfg: TrainConfig, shape: tuple[int, int], feat_dim: int) -> nn.Module:
    """The untrained single-run model exactly as the trainer initialises it (for baselines and tests)."""
    with torch.random.fork_rng():
        return _init_model(spec, cfg, spec.encoder or cfg.encoder, shape, feat_dim)
