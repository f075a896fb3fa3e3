"""Benchmark: sa's batched trainer vs a plain PyTorch loop on a THINGS-EEG-sized synthetic subject.

Prints (1) wall times of L layers x S seeds x E epochs of EEGProject through
`train_runs` and through one-model-at-a-time DataLoader/AdamW training, with
their test top-1; (2) achieved matmul GFLOP/s of the trainer's training step
against a large matmul of the same dtype; (3) peak RSS. `--quick` shrinks it.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

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


def plain_loop(train, test, spec: RunSpec, cfg: TrainConfig) -> float:
    """One run the ordinary way (fp32, DataLoader over TensorDataset, AdamW); returns test top-1."""
    (x, f), (tx, tf) = train, test
    model = plain_model(spec, cfg, x.shape[1:], f[spec.layer].shape[1])
    torch.manual_seed(spec.seed)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(f[spec.layer])),
                        batch_size=cfg.batch_size, shuffle=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    for _ in range(cfg.epochs):
        for xb, fb in loader:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sanity run (2000 trials, 3 layers)")
    args = ap.parse_args()
    n_train, layers, seeds, epochs = (2000, 3, 2, 2) if args.quick else (16540, 12, 2, 2)
    shape, width = (17, 250), 1024
    train, val, test = synthetic_subject(n_train, 200, 200, shape, layers, width)
    cfg = TrainConfig(epochs=epochs)
    runs = [RunSpec(f"{i:02d}", s) for s in range(seeds) for i in range(layers)]
    print(f"threads {torch.get_num_threads()}, precision auto -> {resolve_precision('auto', torch.device('cpu'))}, "
          f"load average {os.getloadavg()[0]:.1f}")
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # first AdamW imports torch._dynamo (~1 s): not training

    t = time.perf_counter()
    res = train_runs(*train, *val, *test, runs, cfg, progress=False)
    t_sa = time.perf_counter() - t
    print(f"sa trainer: {len(runs)} runs in {t_sa:.1f} s; test top-1 mean {np.mean([r.top1 for r in res]):.1f} %; "
          f"load average {os.getloadavg()[0]:.1f}")

    t = time.perf_counter()
    top_plain = [plain_loop(train, test, r, cfg) for r in runs]
    t_plain = time.perf_counter() - t
    print(f"plain loop: {len(runs)} runs in {t_plain:.1f} s; test top-1 mean {np.mean(top_plain):.1f} %; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"speed-up: {t_plain / t_sa:.2f}x")
    diffs = [r.top1 - p for r, p in zip(res, top_plain)]
    print(f"per-run top-1 sa - plain: mean {np.mean(diffs):+.1f}, sd {np.std(diffs):.1f} points")
    if seeds > 1:  # runs are ordered seed-major: the same layer of seeds 0 and 1 are `layers` apart
        noise = [top_plain[i] - top_plain[i + layers] for i in range(layers)]
        print(f"seed noise (plain, same layer, seed 0 - seed 1): sd {np.std(noise):.1f} points")

    amp = resolve_precision(cfg.precision, torch.device("cpu")) or torch.float32
    step, peak = step_and_matmul_gflops(cfg, train[0], train[1], layers)
    print(f"training step ({layers} runs): {step:.0f} GFLOP/s vs {peak:.0f} GFLOP/s large {amp} matmul "
          f"= {100 * step / peak:.0f} %  (interleaved, best of 4 each)")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (1 min), {os.getloadavg()[1]:.1f} (5 min)")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
