"""Train many alignment runs of one subject at once: layers batched in a vmapped stack, per-run seeds.

Runs that share (seed, encoder, output width) form a group trained as one
`Stack`: the brain batch is read once per step for all layers in the group.
EEGProject and Linear groups use the hand-written `ProjectionStack` (one wide
GEMM for every run's first layer); other encoders the generic vmapped Stack.
Every run's randomness comes from its seed only (init, shuffling, dropout),
so a run trained in a group equals the same run trained alone. Checkpoints
are selected on the validation split (or the last epoch), never on test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sa.errors import SAError
from sa.progress import make_progress
from sa.train.batched import AlignModel, Stack
from sa.train.encoders import build_encoder, count_params
from sa.train.evaluate import retrieval_metrics, top1_accuracy
from sa.train.loss import clip_loss
from sa.train.stacked import make_stack


@dataclass
class TrainConfig:
    """Training options; defaults are the paper's (AdamW 1e-4 / 1e-4, batch 1024, 50 epochs)."""

    encoder: str = "eegproject"
    embed_dim: int = 1024
    epochs: int = 50
    batch_size: int = 1024
    lr: float = 1e-4
    weight_decay: float = 1e-4
    temperature: float = 0.07
    learn_temperature: bool = True
    image_proj: bool = True
    select: str = "val"  # "val": best validation top-1; "last": final epoch
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    precision: str = "auto"  # "auto" | "fp32" | "bf16"
    ks: tuple[int, ...] = (2, 4, 10, 50, 100)
    eval_seed: int = 0


@dataclass
class RunSpec:
    """One run: the feature layer to align with, its seed, and optionally an encoder overriding the config's."""

    layer: str
    seed: int
    encoder: str | None = None


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
    if cfg.select not in ("val", "last"):
        raise SAError(f"select={cfg.select!r} is not known; use 'val' (best validation top-1) or 'last'.")
    if cfg.select == "val" and (val_x is None or len(val_x) < 2):
        raise SAError("select='val' needs a validation split of at least 2 trials; set val_fraction > 0 or select='last'.")
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
    return AlignModel(enc, feat_dim, out, cfg.image_proj, cfg.temperature, cfg.learn_temperature)


def _group(runs: Sequence[RunSpec], cfg: TrainConfig, widths: Mapping[str, int]) -> list[list[int]]:
    """Indices of runs that can share one stack: same seed, encoder and embedding width."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs):
        out = cfg.embed_dim if cfg.image_proj else widths[r.layer]
        groups.setdefault((r.seed, (r.encoder or cfg.encoder).lower(), out), []).append(i)
    return list(groups.values())


def _padded_feats(feats: list[torch.Tensor], idx: torch.Tensor, width: int,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """(L, len(idx), width) rows idx of every layer's features, zero-padded to width (cast to dtype if given)."""
    out = feats[0].new_zeros((len(feats), len(idx), width), dtype=dtype)
    for i, f in enumerate(feats):
        out[i, :, : f.shape[1]] = f[idx]
    return out


def _evaluate_split(stack: Stack, x: torch.Tensor, feats: list[torch.Tensor], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-run (loss, top-1 %) on a split, in eval mode and fp32; loss averaged over batch-size chunks."""
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
        top1 = np.array([top1_accuracy(zb[r], zi[r]) for r in range(len(stack))])
    stack.train(True)
    return losses, top1


def _train_group(members: list[RunSpec], cfg: TrainConfig, data: dict, device: torch.device,
                 amp: torch.dtype | None, advance) -> list[tuple[dict, int, float, list[dict]]]:
    """Train one stack; returns per run (selected state, best epoch, val top-1, curves)."""
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
        best = [(None, 0, -1.0)] * len(members)
        curves: list[list[dict]] = [[] for _ in members]
        stack.train(True)
        for epoch in range(1, cfg.epochs + 1):
            perm = torch.randperm(n, generator=shuffler).to(device)
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
                val_loss, val_top1 = _evaluate_split(stack, data["val_x"], va_feats, cfg.batch_size)
            else:
                val_loss, val_top1 = np.full(len(members), np.nan), np.full(len(members), np.nan)
            for i in range(len(members)):
                curves[i].append({"epoch": epoch, "train_loss": float(train_loss[i]),
                                  "val_loss": float(val_loss[i]), "val_top1": float(val_top1[i])})
                better = cfg.select == "val" and val_top1[i] > best[i][2]
                if better or (cfg.select == "last" and epoch == cfg.epochs):
                    best[i] = (stack.state_of(i), epoch, float(val_top1[i]))
    return [(b[0], b[1], b[2], c) for b, c in zip(best, curves)]


def _finish(spec: RunSpec, cfg: TrainConfig, state: dict, shape, feat_dim: int, test_x, test_feats, targets,
            best_epoch: int, val_top1: float, curves: list[dict], seconds: float) -> RunResult:
    """Load the selected state into a single-run model and score it on the test gallery."""
    with torch.random.fork_rng():
        model = _init_model(spec, cfg, spec.encoder or cfg.encoder, shape, feat_dim)
    model.load_state_dict(state)
    model.eval()
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
               progress: bool = True) -> list[RunResult]:
    """Train every run (grouped into vmapped stacks) and return their results in the order of `runs`.

    x arrays are (n, C, T); feats map layer -> (n, D) rows paired with x; test_feats
    is the gallery (m, D) per layer and test_targets maps test rows to gallery rows.
    """
    val_feats = val_feats or {}
    _check_inputs(train_x, train_feats, val_x, val_feats, test_x, test_feats, runs, cfg)
    device = resolve_device(cfg.device)
    amp = resolve_precision(cfg.precision, device)
    layers = sorted({r.layer for r in runs})
    data = {
        "train_x": _as_tensor(train_x, device),
        "val_x": None if val_x is None else _as_tensor(val_x, device),
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
            out = _train_group([runs[i] for i in members], cfg, data, device, amp, lambda: bar.advance(task))
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
