"""Benchmark: read one layer (16540 x 1536 float16) from a local cache vs np.load of the same .npy.

Both warm (read once first, so the page cache holds the files); prints the best
of several reads, MB/s, and the cache / np.load speed ratio (target >= 0.5).
Run: .venv/bin/python bench/cache_read.py [--rows 16540 --width 1536 --repeats 7]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def best_time(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    """Write the array both ways, time the reads, print the figures."""
    from sa.cache import open_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16540)
    ap.add_argument("--width", type=int, default=1536)
    ap.add_argument("--block-rows", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    x = np.random.default_rng(0).standard_normal((args.rows, args.width)).astype(np.float16)
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "layer.npy"
        np.save(npy, x)
        root = open_root(Path(tmp) / "cache")
        ids = [f"img/{i:05d}.jpg" for i in range(args.rows)]
        writer = root.create("0" * 16, "bench-0000000000", ids, {"mean/20": args.width}, {}, block_rows=args.block_rows)
        for b in writer.pending_blocks():
            rows = writer.block_rows_slice(b)
            writer.write_block(b, {"mean/20": x[rows]})
        group = writer.finalize()
        assert np.array_equal(group.read("mean/20"), x)

        t_npy = best_time(lambda: np.load(npy), args.repeats)
        t_cache = best_time(lambda: group.read("mean/20"), args.repeats)
        t_zarr = best_time(lambda: group.zgroup["mean/20"][:], args.repeats)
    mb = x.nbytes / 1e6
    print(f"array {args.rows} x {args.width} float16 = {mb:.1f} MB, block_rows {args.block_rows}, best of {args.repeats} warm reads")
    print(f"np.load          {t_npy * 1e3:8.1f} ms  {mb / t_npy:8.0f} MB/s")
    print(f"sa cache read    {t_cache * 1e3:8.1f} ms  {mb / t_cache:8.0f} MB/s")
    print(f"(plain zarr [:]  {t_zarr * 1e3:8.1f} ms  {mb / t_zarr:8.0f} MB/s)")
    ratio = t_npy / t_cache
    print(f"cache speed / np.load speed = {ratio:.2f}  (target >= 0.5: {'met' if ratio >= 0.5 else 'MISSED'})")


if __name__ == "__main__":
    main()
