"""Benchmark: `sa extract` end to end vs a bare forward pass of the same model.

open_clip ViT-B-32 (random init) over 512 generated JPEGs at batch 32 in bf16:
images/s of the full extraction (decode, forward with every layer tapped,
pooling, cache writes) against `encode_image` on pre-decoded tensors, in the
same process. Target: end to end within 15 % of the bare forward.

    .venv/bin/python bench/extract.py [--n 512] [--batch 32] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


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
    x = torch.randn(batch, 3, bb.image_size, bb.image_size, dtype=p.dtype)
    with torch.inference_mode():
        bb.embed(x)  # warm-up
        t = time.perf_counter()
        for _ in range(n // batch):
            bb.embed(x)
        return (n // batch) * batch / (time.perf_counter() - t)


def end_to_end(folder: Path, cache: Path, batch: int, dtype: str) -> float:
    """images/s of sa.extract.extract over the folder (a fresh cache each time)."""
    from sa.extract import extract

    t = time.perf_counter()
    extract(folder, "open_clip:ViT-B-32", cache, random_init=True, batch_size=batch, dtype=dtype, progress=False)
    return len(list(folder.glob("*.jpg"))) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dtype", default="bf16")
    args = ap.parse_args()
    import torch

    from sa._compat import ensure_torchvision

    ensure_torchvision()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        make_jpegs(folder, args.n)
        bare = bare_forward(args.n, args.batch, args.dtype)
        e2e = end_to_end(folder, Path(tmp) / "cache", args.batch, args.dtype)
    print(f"torch threads {torch.get_num_threads()}, {args.n} images, batch {args.batch}, {args.dtype}")
    print(f"bare forward (encode_image, pre-decoded): {bare:8.1f} img/s")
    print(f"sa extract end to end (all layers, write): {e2e:8.1f} img/s")
    print(f"ratio end-to-end / bare: {e2e / bare:.3f} (target >= 0.85)")


if __name__ == "__main__":
    main()
