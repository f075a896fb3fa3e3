"""GPU benchmark: extraction of a ViT-L-sized backbone and a 40-layer x 5-seed EEGProject sweep, with memory peaks.

On CUDA (the default when available):
(1) `sa extract` end to end over 16,740 synthetic JPEGs (THINGS-EEG2's
    16,540 + 200 images) with open_clip ViT-L-14 (random init, bf16), in img/s
    against the bare forward on pre-decoded device tensors;
(2) `train_runs` over 40 layers x 5 seeds of EEGProject on a THINGS-sized
    synthetic subject (16,540 x 17 x 250 trials, width 1024), in runs/min
    against one plain loop (data on the device, AdamW, bf16 autocast), the way
    one would write it by hand; the paper's full intra-subject sweep for one
    backbone (40 layers x 5 seeds x 10 subjects x 50 epochs) is extrapolated;
(3) peak GPU memory of each part (torch.cuda.max_memory_allocated).

`--device cpu --quick` runs the same code on a tiny backbone and subject (the
test suite does this); its figures say nothing about a GPU. CUDA paths are
written to avoid host syncs in the step (timings synchronise only at their
ends), copy with pinned memory and non_blocking, and use fused AdamW;
`--compile` also times the plain loop under torch.compile.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from extract import make_jpegs  # bench/extract.py: the same photo-like JPEGs for both benchmarks


def load() -> str:
    """The 1-minute load average, to print beside a figure."""
    return f"load average {os.getloadavg()[0]:.1f}"


def sync(device: torch.device) -> None:
    """Wait for queued device work (timings end here; CPU: nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> str:
    """Peak device memory since the last reset_peak (CPU: the process's peak RSS)."""
    if device.type == "cuda":
        return f"GPU memory peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (cpu)"


def bare_forward(name: str, n: int, batch: int, dtype: str, device: torch.device, image_size: int | None) -> float:
    """img/s of the backbone's own forward on a device batch made once (no decode, no copies, no writes)."""
    from sa.extract.backbones import load_backbone

    bb = load_backbone(name, random_init=True, dtype=dtype, device=str(device), image_size=image_size)
    p = next(bb.model.parameters())
    x = torch.randn(batch, 3, *bb.input_size, dtype=p.dtype, device=device)
    steps = max(1, n // batch)
    with torch.inference_mode():
        bb.embed(x)  # warm-up (cuDNN / kernel selection)
        sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            bb.embed(x)
        sync(device)
    return steps * batch / (time.perf_counter() - t)


def extraction(name: str, n: int, batch: int, dtype: str, device: torch.device, image_size: int | None) -> None:
    """Print end-to-end `sa extract` img/s vs the bare forward, and each one's memory peak."""
    from sa.extract import extract

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        t = time.perf_counter()
        make_jpegs(folder, n)
        print(f"extraction: {n} JPEGs written in {time.perf_counter() - t:.1f} s; {name}, batch {batch}, {dtype}",
              flush=True)
        reset_peak(device)
        bare = bare_forward(name, n, batch, dtype, device, image_size)
        print(f"  bare forward: {bare:.1f} img/s; {peak(device)}; {load()}", flush=True)
        reset_peak(device)
        t = time.perf_counter()
        extract(folder, name, Path(tmp) / "cache", random_init=True, batch_size=batch, dtype=dtype,
                device=str(device), image_size=image_size, progress=False)
        e2e = n / (time.perf_counter() - t)
        print(f"  sa extract end to end: {e2e:.1f} img/s = {e2e / bare:.2f} of the bare forward; {peak(device)}; "
              f"{load()}", flush=True)


def subject(n_train: int, n_val: int, n_test: int, shape: tuple[int, int], layers: int, width: int, seed: int = 0):
    """THINGS-shaped synthetic subject: trials = a linear mix of layer 0's features + noise; deeper layers noisier."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    base = rng.standard_normal((n, width), dtype=np.float32)
    mix = rng.standard_normal((width, shape[0] * shape[1]), dtype=np.float32) / np.float32(np.sqrt(width))
    x = (base @ mix + np.float32(2.0) * rng.standard_normal((n, shape[0] * shape[1]), dtype=np.float32)).reshape(n, *shape)
    cuts = [(0, n_train), (n_train, n_train + n_val), (n_train + n_val, n)]
    feats = {f"{i:02d}": base + np.float32(0.05 * i) * rng.standard_normal((n, width), dtype=np.float32)
             for i in range(layers)}
    return [(x[s:e], {k: f[s:e] for k, f in feats.items()}) for s, e in cuts]


def plain_run(train, test, layer: str, cfg, device: torch.device, amp: torch.dtype | None, compile_: bool) -> float:
    """One EEGProject run written by hand on the device (data resident, randperm batches, fused AdamW, autocast);
    returns test top-1."""
    from sa.train.evaluate import retrieval_metrics
    from sa.train.trainer import RunSpec, plain_model

    (x, f), (tx, tf) = train, test
    model = plain_model(RunSpec(layer, 0), cfg, x.shape[1:], f[layer].shape[1]).to(device)
    step_model = torch.compile(model) if compile_ else model
    xs = torch.from_numpy(x).pin_memory().to(device, non_blocking=True) if device.type == "cuda" else torch.from_numpy(x)
    fs = torch.from_numpy(f[layer]).pin_memory().to(device, non_blocking=True) if device.type == "cuda" \
        else torch.from_numpy(f[layer])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    gen = torch.Generator(device=device).manual_seed(0)
    model.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(xs), device=device, generator=gen)
        for s in range(0, len(xs) - 1, cfg.batch_size):
            idx = perm[s: s + cfg.batch_size]
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = step_model(xs[idx], fs[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return retrieval_metrics(model.encode_brain(torch.from_numpy(tx).to(device)).float().cpu(),
                                 model.encode_image(torch.from_numpy(tf[layer]).to(device)).float().cpu())["top1"]


def sweep(n_train: int, layers: int, seeds: int, epochs: int, width: int, device: torch.device,
          compile_: bool) -> None:
    """Print runs/min of train_runs over layers x seeds vs one plain loop, memory peaks, and the extrapolation."""
    from sa.train.trainer import RunSpec, TrainConfig, resolve_precision, train_runs

    shape = (17, 250)
    train, val, test = subject(n_train, 200, 200, shape, layers, width)
    cfg = TrainConfig(epochs=epochs, device=str(device))
    amp = resolve_precision("auto", device)
    runs = [RunSpec(f"{i:02d}", s) for s in range(seeds) for i in range(layers)]
    print(f"sweep: {layers} layers x {seeds} seeds x {epochs} epochs of EEGProject, {n_train} x {shape} trials, "
          f"width {width}, precision {amp or torch.float32}", flush=True)
    modes = [False, True] if compile_ else [False]
    plain = {}
    for comp in modes:
        reset_peak(device)
        t = time.perf_counter()
        top = plain_run(train, test, "00", cfg, device, amp, comp)
        sync(device)
        plain[comp] = 60 / (time.perf_counter() - t)
        print(f"  plain loop{' (torch.compile)' if comp else ''}: {plain[comp]:.2f} runs/min; top-1 {top:.1f} %; "
              f"{peak(device)}; {load()}", flush=True)
    reset_peak(device)
    t = time.perf_counter()
    res = train_runs(*train, *val, *test, runs, cfg, progress=False)
    sync(device)
    seconds = time.perf_counter() - t
    rate = 60 * len(runs) / seconds
    print(f"  sa train_runs: {len(runs)} runs in {seconds:.1f} s = {rate:.2f} runs/min = {rate / plain[False]:.2f}x "
          f"the plain loop; top-1 mean {np.mean([r.top1 for r in res]):.1f} % (layer 00: {res[0].top1:.1f} %); "
          f"{peak(device)}; {load()}", flush=True)
    grid = 40 * 5 * 10 * 50 / epochs  # runs of `epochs` epochs in the paper's intra-subject grid for one backbone
    print(f"  paper grid (40 layers x 5 seeds x 10 subjects x 50 epochs) at this rate: "
          f"{grid / rate / 60:.2f} h (target < 1 h on one H200)", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a test runs this on CPU)")
    ap.add_argument("--compile", action="store_true", help="also time the plain loop under torch.compile")
    ap.add_argument("--skip-extract", action="store_true")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--epochs", type=int, default=None, help="sweep epochs (default 2; the grid is extrapolated)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but CUDA is not available; use --device cpu --quick.")
    if device.type == "cpu":
        from sa.threads import apply_threads

        apply_threads()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device {device} ({name}); torch {torch.__version__}; {load()}", flush=True)
    if args.quick:
        ext = dict(name="timm:vit_tiny_patch16_224", n=16, batch=8, dtype="fp32", image_size=32)
        swp = dict(n_train=600, layers=2, seeds=1, epochs=args.epochs or 1, width=64)
    else:
        ext = dict(name="open_clip:ViT-L-14", n=16740, batch=256, dtype="bf16", image_size=None)
        swp = dict(n_train=16540, layers=40, seeds=5, epochs=args.epochs or 2, width=1024)
    if not args.skip_extract:
        extraction(ext["name"], ext["n"], ext["batch"], ext["dtype"], device, ext["image_size"])
    if not args.skip_sweep:
        sweep(**swp, device=device, compile_=args.compile)


if __name__ == "__main__":
    main()
