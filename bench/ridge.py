"""Wall time of `--encoders ridge` over every layer of a 40-block backbone vs one EEGProject sweep of the same layers.

Synthetic data of a THINGS-EEG2 subject's shape (16540 training images x 17 channels x 250 samples by default; pass
smaller sizes on a small machine -- the sizes used are printed), 200 test images, per-layer features of a realistic
width. Ridge runs on all layers; EEGProject is timed on --measure layers for --measure-epochs epochs and the full
sweep (layers x epochs) is extrapolated from that, as printed.

    python bench/ridge.py --n 16540 --times 250 --layers 40 --width 1408
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def make_data(n: int, c: int, t: int, n_test: int, layers: int, width: int, seed: int = 0):
    """Brain rows linear in a few latent sources that every layer shares to a varying degree."""
    rng = np.random.default_rng(seed)
    k = 16
    z_tr, z_te = rng.normal(size=(n, k)), rng.normal(size=(n_test, k))
    mix = rng.normal(size=(k, c * t)) / np.sqrt(k)
    x_tr = (z_tr @ mix + 2 * rng.normal(size=(n, c * t))).astype(np.float32).reshape(n, c, t)
    x_te = (z_te @ mix + 0.5 * rng.normal(size=(n_test, c * t))).astype(np.float32).reshape(n_test, c, t)
    feats_tr, feats_te = {}, {}
    for j in range(layers):
        share = np.exp(-0.5 * ((j - layers * 0.6) / (layers * 0.15)) ** 2)
        proj = rng.normal(size=(k, width)).astype(np.float32)
        feats_tr[f"{j:02d}"] = (share * z_tr @ proj + rng.normal(size=(n, width))).astype(np.float32)
        feats_te[f"{j:02d}"] = (share * z_te @ proj + rng.normal(size=(n_test, width))).astype(np.float32)
    return x_tr, x_te, feats_tr, feats_te


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16540)
    ap.add_argument("--channels", type=int, default=17)
    ap.add_argument("--times", type=int, default=250)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--width", type=int, default=1408)
    ap.add_argument("--epochs", type=int, default=50, help="epochs of the EEGProject sweep being estimated")
    ap.add_argument("--measure", type=int, default=1, help="EEGProject layers actually trained")
    ap.add_argument("--measure-epochs", type=int, default=2)
    a = ap.parse_args()

    from sa.train.ridge import ridge_scan
    from sa.train.trainer import RunSpec, TrainConfig, train_runs

    x_tr, x_te, f_tr, f_te = make_data(a.n, a.channels, a.times, a.test, a.layers, a.width)
    print(f"subject: {a.n} x {a.channels} x {a.times} train, {a.test} test; {a.layers} layers of width {a.width}")
    t0 = time.perf_counter()
    scan = ridge_scan(x_tr, f_tr, None, None, x_te, f_te)
    ridge_s = time.perf_counter() - t0
    best = max(scan, key=lambda k: scan[k].top1)
    print(f"ridge: {ridge_s:.1f} s for all {a.layers} layers (best layer {best}, top-1 {scan[best].top1:.1f} %)")

    cfg = TrainConfig(encoder="eegproject", epochs=a.measure_epochs, select="last", device="cpu", precision="fp32")
    names = list(f_tr)[: a.measure]
    t0 = time.perf_counter()
    train_runs(x_tr, {k: f_tr[k] for k in names}, None, None, x_te, {k: f_te[k] for k in names},
               [RunSpec(k, 0, "eegproject") for k in names], cfg, progress=False)
    measured = time.perf_counter() - t0
    per_layer_epoch = measured / (a.measure * a.measure_epochs)
    sweep_s = per_layer_epoch * a.layers * a.epochs
    print(f"EEGProject: measured {measured:.1f} s for {a.measure} layer(s) x {a.measure_epochs} epoch(s); "
          f"estimated sweep of {a.layers} layers x {a.epochs} epochs x 1 seed = {sweep_s / 60:.1f} min "
          f"({sweep_s / ridge_s:.0f}x the ridge scan)")


if __name__ == "__main__":
    main()
