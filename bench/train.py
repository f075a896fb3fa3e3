"""Benchmark: sa's batched trainer vs plain PyTorch loops on a THINGS-EEG-sized synthetic subject.

Prints, measured in one run with the load average beside every figure:
(1) wall times of L layers x S seeds x E epochs of EEGProject through
`train_runs` and through one-model-at-a-time DataLoader/AdamW training, both
plain fp32 and with one `torch.autocast(bfloat16)` line, with their test
top-1 and both ratios; (2) achieved matmul GFLOP/s of the trainer's training
step against a large matmul of the same dtype; (3) peak RSS. `--encoders`
instead times every encoder against its own plain loops at smaller sizes.
`--quick` shrinks everything; `--train/--layers/--seeds/--epochs` set sizes.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from sa.threads import apply_threads, physical_cores
from sa.train.evaluate import retrieval_metrics
from sa.train.stacked import make_stack
from sa.train.trainer import RunSpec, TrainConfig, plain_model, resolve_precision, train_runs


def synthetic_subject(n_train: int, n_val: int, n_test: int, shape: tuple[int, int], layers: int, width: int, seed: int = 0):
    """Brain trials = a fixed linear mix of layer 0's features + noise; other layers are noisier views of them."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    base = rng.standard_normal((n, width), dtype=np.float32)
    mix = rng.standard_normal((width, shape[0] * shape[1]), dtype=np.float32) / np.sqrt(width)
    x = (base @ mix + 2.0 * rng.standard_normal((n, shape[0] * shape[1]), dtype=np.float32)).reshape(n, *shape)
    feats = {f"{i:02d}": base + (0.3 * i) * rng.standard_normal((n, width), dtype=np.float32) for i in range(layers)}
    cut = lambda a, s, e: np.ascontiguousarray(a[s:e], dtype=np.float32)  # noqa: E731
    parts = [(0, n_train), (n_train, n_train + n_val), (n_train + n_val, n)]
    return [(cut(x, s, e), {k: cut(f, s, e) for k, f in feats.items()}) for s, e in parts]


def plain_loop(train, test, spec: RunSpec, cfg: TrainConfig, amp: torch.dtype | None = None) -> float:
    """One run the ordinary way (DataLoader over TensorDataset, AdamW; fp32, or autocast to `amp`); test top-1."""
    (x, f), (tx, tf) = train, test
    model = plain_model(spec, cfg, x.shape[1:], f[spec.layer].shape[1])
    torch.manual_seed(spec.seed)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(f[spec.layer])),
                        batch_size=cfg.batch_size, shuffle=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    for _ in range(cfg.epochs):
        for xb, fb in loader:
            with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):  # the one line
                loss = model(xb, fb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return retrieval_metrics(model.encode_brain(torch.from_numpy(tx)),
                                 model.encode_image(torch.from_numpy(tf[spec.layer])))["top1"]


def step_flops(batch: int, layers: int, in_dim: int, embed: int, width: int) -> float:
    """Matmul FLOPs of one training step of `layers` EEGProject runs: fwd 2mnk, bwd weight grads + input grads."""
    fwd = 2 * batch * (in_dim * embed + embed * embed + width * embed + batch * embed)  # + the B x B logits
    bwd = 2 * batch * (in_dim * embed + 2 * embed * embed + width * embed + 2 * batch * embed)  # no grad for x, feats
    return layers * (fwd + bwd)


def _seconds(fn) -> float:
    """Wall time of one call."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def step_and_matmul_gflops(stack_cfg: TrainConfig, x: np.ndarray, feats: dict, layers: int,
                           rounds: int = 4, n: int = 2048) -> tuple[float, float]:
    """Achieved GFLOP/s of the trainer's step (stacked fwd + bwd + AdamW, the stack train_runs picks) for
    `layers` runs, and of a large square matmul in the same dtype; timed interleaved, best of `rounds` each."""
    from sa.train.trainer import _init_model

    width = next(iter(feats.values())).shape[1]
    models = [_init_model(RunSpec(f"{i:02d}", 0), stack_cfg, stack_cfg.encoder, x.shape[1:], width) for i in range(layers)]
    stack = make_stack(models, torch.device("cpu"))
    del models
    opt = torch.optim.AdamW(list(stack.params.values()), lr=1e-4, weight_decay=1e-4, fused=True)
    amp = resolve_precision(stack_cfg.precision, torch.device("cpu"))
    dtype = amp or torch.float32
    B = stack_cfg.batch_size
    xb = torch.from_numpy(x[:B])
    fb = torch.stack([torch.from_numpy(feats[f"{i:02d}"][:B]) for i in range(layers)]).to(dtype)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=amp is not None):
            loss = stack.loss(xb, fb).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    flops = step_flops(B, layers, x.shape[1] * x.shape[2], stack_cfg.embed_dim, width)
    reps = max(5, round(flops / (2 * n**3)))  # the same work as a step: both timings span similar windows

    def matmuls():
        for _ in range(reps):
            a @ b

    step(), matmuls()
    t_step, t_mm = float("inf"), float("inf")
    for _ in range(rounds):  # interleaved and best-of: both see the same share of a contended machine
        t_step = min(t_step, _seconds(step))
        t_mm = min(t_mm, _seconds(matmuls))
    return flops / t_step / 1e9, 2 * n**3 * reps / t_mm / 1e9


def load() -> str:
    """'load average 1.2' (1 minute) for printing beside a figure."""
    return f"load average {os.getloadavg()[0]:.1f}"


def time_plain(train, test, runs, cfg, amp) -> tuple[float, list[float]]:
    """Seconds and test top-1 of every run through the plain loop (fp32 when amp is None)."""
    t = time.perf_counter()
    tops = [plain_loop(train, test, r, cfg, amp) for r in runs]
    return time.perf_counter() - t, tops


def time_sa(train, val, test, runs, cfg) -> tuple[float, list[float]]:
    """Seconds and test top-1 of every run through `train_runs`."""
    t = time.perf_counter()
    res = train_runs(*train, *val, *test, runs, cfg, progress=False)
    return time.perf_counter() - t, [r.top1 for r in res]


ENCODERS = ("eegproject", "tsconv", "atms", "eegnet", "shallownet", "eegconformer", "linear")


def encoder_table(n_train: int, layers: int, epochs: int, shape: tuple[int, int], width: int,
                  names: tuple[str, ...] = ENCODERS, force_bf16: bool = False) -> None:
    """Each encoder through sa vs its own plain loops (fp32 and bf16 autocast), `layers` runs of one seed."""
    train, val, test = synthetic_subject(n_train, 200, 200, shape, layers, width)
    bf16 = torch.bfloat16 if force_bf16 else resolve_precision("auto", torch.device("cpu"))
    print(f"per encoder: {layers} layers x 1 seed x {epochs} epochs, {n_train} trials of {shape}, width {width}")
    print("| encoder | sa s | plain fp32 s | plain bf16 s | vs fp32 | vs bf16 | top-1 sa / fp32 / bf16 | load |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        cfg = TrainConfig(encoder=name, epochs=epochs, precision="bf16" if force_bf16 else "auto")
        runs = [RunSpec(f"{i:02d}", 0) for i in range(layers)]
        t_sa, top_sa = time_sa(train, val, test, runs, cfg)
        t_fp, top_fp = time_plain(train, test, runs, cfg, None)
        t_bf, top_bf = time_plain(train, test, runs, cfg, bf16) if bf16 is not None else (math.nan, [math.nan])
        # nan in the bf16 columns: this CPU has no native bf16, 'auto' trains fp32 (force with --bf16)
        print(f"| {name} | {t_sa:.1f} | {t_fp:.1f} | {t_bf:.1f} | {t_fp / t_sa:.2f}x | {t_bf / t_sa:.2f}x | "
              f"{np.mean(top_sa):.1f} / {np.mean(top_fp):.1f} / {np.mean(top_bf):.1f} | {os.getloadavg()[0]:.1f} |",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sanity run (2000 trials, 3 layers)")
    ap.add_argument("--encoders", nargs="?", const=",".join(ENCODERS), default=None,
                    help="time each encoder (comma list; default all) against its own plain loops instead")
    ap.add_argument("--train", type=int, default=None, help="training trials (default 16540, THINGS-EEG2)")
    ap.add_argument("--layers", type=int, default=None, help="layers per seed (default 12)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default 2)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs (default 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: sa.threads' choice)")
    ap.add_argument("--bf16", action="store_true", help="force bf16 (sa and the autocast loop) on a CPU without "
                    "native bf16, where 'auto' trains fp32 and the bf16 loop is skipped")
    args = ap.parse_args()
    threads = apply_threads(args.threads)
    shape, width = (17, 250), 1024
    print(f"threads {threads} (sa.threads; physical cores {physical_cores()}), precision auto -> "
          f"{resolve_precision('auto', torch.device('cpu'))}, {load()}", flush=True)
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # first AdamW imports torch._dynamo (~1 s): not training
    if args.encoders is not None:
        n, layers, epochs = (1000, 2, 1) if args.quick else (3000, 4, 2)
        encoder_table(args.train or n, args.layers or layers, args.epochs or epochs, shape, width,
                      tuple(e.strip() for e in args.encoders.split(",") if e.strip()), args.bf16)
        print(f"{load()} at the end; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        return
    n_train, layers, seeds, epochs = (2000, 3, 2, 2) if args.quick else (16540, 12, 2, 2)
    n_train, layers = args.train or n_train, args.layers or layers
    seeds, epochs = args.seeds or seeds, args.epochs or epochs
    train, val, test = synthetic_subject(n_train, 200, 200, shape, layers, width)
    runs = [RunSpec(f"{i:02d}", s) for s in range(seeds) for i in range(layers)]
    bf16 = torch.bfloat16 if args.bf16 else resolve_precision("auto", torch.device("cpu"))
    cfg = TrainConfig(epochs=epochs, precision="bf16" if args.bf16 else "auto")
    print(f"EEGProject: {len(runs)} runs ({layers} layers x {seeds} seeds) x {epochs} epochs, {n_train} trials")

    # interleaved per seed (sa, fp32 loop, bf16 loop, next seed): a shared machine's load drifts over minutes,
    # and each trainer then sees the same share of it
    t_sa = t_fp = t_bf = 0.0
    top_sa, top_fp, top_bf = [], [], []
    for s in range(seeds):
        group = [r for r in runs if r.seed == s]
        t, top = time_sa(train, val, test, group, cfg)
        t_sa, top_sa = t_sa + t, top_sa + top
        print(f"seed {s}: sa trainer {t:.1f} s; {load()}", flush=True)
        t, top = time_plain(train, test, group, cfg, None)
        t_fp, top_fp = t_fp + t, top_fp + top
        print(f"seed {s}: plain loop fp32 {t:.1f} s; {load()}", flush=True)
        if bf16 is not None:
            t, top = time_plain(train, test, group, cfg, bf16)
            t_bf, top_bf = t_bf + t, top_bf + top
            print(f"seed {s}: plain loop + autocast({bf16}) {t:.1f} s; {load()}", flush=True)
    print(f"sa trainer: {t_sa:.1f} s; test top-1 mean {np.mean(top_sa):.1f} %")
    print(f"plain loop fp32: {t_fp:.1f} s; test top-1 mean {np.mean(top_fp):.1f} %")
    if bf16 is not None:
        print(f"plain loop + autocast({bf16}): {t_bf:.1f} s; test top-1 mean {np.mean(top_bf):.1f} %")
    print(f"speed-up vs plain fp32: {t_fp / t_sa:.2f}x" +
          (f"; vs plain bf16 autocast: {t_bf / t_sa:.2f}x" if bf16 is not None else " (no native bf16: no bf16 loop)"))
    diffs = [a - p for a, p in zip(top_sa, top_fp)]
    print(f"per-run top-1 sa - plain fp32: mean {np.mean(diffs):+.1f}, sd {np.std(diffs):.1f} points")
    if seeds > 1:  # runs are ordered seed-major: the same layer of seeds 0 and 1 are `layers` apart
        noise = [top_fp[i] - top_fp[i + layers] for i in range(layers)]
        print(f"seed noise (plain, same layer, seed 0 - seed 1): sd {np.std(noise):.1f} points")

    amp = bf16 or torch.float32
    step, peak = step_and_matmul_gflops(cfg, train[0], train[1], layers)
    print(f"training step ({layers} runs): {step:.0f} GFLOP/s vs {peak:.0f} GFLOP/s large {amp} matmul "
          f"= {100 * step / peak:.0f} %  (interleaved, best of 4 each); {load()}")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (1 min), {os.getloadavg()[1]:.1f} (5 min)")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
