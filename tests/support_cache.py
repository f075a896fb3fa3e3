"""Helpers shared by the cache tests (no tests here): deterministic block data and a writer script for subprocesses."""

from __future__ import annotations

import sys
import time

import numpy as np

ISET = "0123456789abcdef"
BKEY = "tiny-0123456789"
WIDTHS = {"mean/00": 768, "mean/01": 768, "cls/01": 1536, "final": 64}
N = 700
BLOCK = 128


def ids(n: int = N) -> list[str]:
    """Image ids in THINGS style."""
    return [f"training_images/{i:05d}_c/img_{i:05d}.jpg" for i in range(n)]


def block_data(b: int, n: int = N, block: int = BLOCK, widths: dict = WIDTHS) -> dict[str, np.ndarray]:
    """The rows of block `b`, a pure function of (name, b) so any process writes the same numbers."""
    rows = min(n, (b + 1) * block) - b * block
    out = {}
    for k, (name, w) in enumerate(sorted(widths.items())):
        rng = np.random.default_rng([b, k])
        out[name] = rng.standard_normal((rows, w)).astype(np.float16)
    return out


def full_data(n: int = N, block: int = BLOCK, widths: dict = WIDTHS) -> dict[str, np.ndarray]:
    """Every array, as an uninterrupted run writes it."""
    blocks = [block_data(b, n, block, widths) for b in range(-(-n // block))]
    return {name: np.concatenate([bl[name] for bl in blocks]) for name in widths}


def write_group(root, *, lock: bool = True, progress_every: float = 0.0, blocks=None, finalize: bool = True):
    """Create (or resume) the test group under `root` and write `blocks` (default: all pending)."""
    writer = root.create(ISET, BKEY, ids(), WIDTHS, {"backbone": {"name": "tiny"}}, block_rows=BLOCK, lock=lock)
    todo = writer.pending_blocks() if blocks is None else blocks
    for b in todo:
        writer.write_block(b, block_data(b))
        print(f"wrote {b}", flush=True)
        if progress_every:
            time.sleep(progress_every)
    return writer.finalize() if finalize else writer


if __name__ == "__main__":
    # python support_cache.py ROOT MODE [blocks...]: MODE 'slow' writes all blocks slowly with the lock,
    # 'blocks' writes the given blocks through open_writer (no lock), 'hold' takes the lock and sleeps.
    from sa.cache import open_root

    root = open_root(sys.argv[1])
    mode = sys.argv[2]
    if mode == "slow":
        write_group(root, progress_every=0.3, finalize=False).close()
    elif mode == "blocks":
        w = root.open_writer(f"{ISET}/{BKEY}")
        for b in map(int, sys.argv[3:]):
            w.write_block(b, block_data(b))
        print("done", flush=True)
    elif mode == "hold":
        w = root.create(ISET, BKEY, ids(), WIDTHS, {}, block_rows=BLOCK)
        print("locked", flush=True)
        time.sleep(float(sys.argv[3]))
        w.close()
    elif mode == "trylock":
        from sa.cache import GroupLocked

        try:
            root.create(ISET, BKEY, ids(), WIDTHS, {}, block_rows=BLOCK).close()
            print("acquired", flush=True)
        except GroupLocked as exc:
            print(f"GroupLocked: {exc}", flush=True)
