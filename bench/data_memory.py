"""Peak memory of loading THINGS-EEG2 data (official np.save'd dict files), against the single-copy size.

Writes random subjects in the official layout into a temp dir, then measures peak RSS (VmHWM; Linux)
of fresh processes that (1) np.load(...).item() a subject the naive way, (2) sa loads it averaged with all
channels, (3) sa loads a leave-one-subject-out fold over several smaller subjects (17 channels).

    python bench/data_memory.py                 # full size: 16540 x 4 x 63 x 250 float32 (4.2 GB on disk)
    python bench/data_memory.py --scale 0.25    # a quarter of the images (needs ~2.5 GB RAM to write)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

GB = 1e9


def write_subject(folder: Path, n: int, reps: int, ch: int, t: int, seed: int) -> None:
    """One subject in the official format, with random values (filled in blocks to limit the writer's temporaries)."""
    from sa.brain.synth import channel_names, write_subject as write

    rng = np.random.default_rng(seed)
    x = np.empty((n, reps, ch, t), np.float32)
    for a in range(0, n, 1024):
        x[a:a + 1024] = rng.standard_normal(x[a:a + 1024].shape, dtype=np.float32)
    te = rng.standard_normal((200, 80 if n >= 16540 else 8, ch, t), dtype=np.float32)
    write(folder, x, te, channel_names(ch), np.arange(t) / t)
    del x


def write_images(root: Path, n_train: int) -> None:
    """An image folder with 10 files per concept and 200 test concepts (empty files: ids only)."""
    for c in range(n_train // 10):
        d = root / "training_images" / f"{c + 1:05d}_c{c}"
        d.mkdir(parents=True)
        for k in range(10):
            (d / f"c{c}_{k + 1:02d}b.jpg").touch()
    for c in range(200):
        d = root / "test_images" / f"{c + 1:05d}_t{c}"
        d.mkdir(parents=True)
        (d / f"t{c}_01s.jpg").touch()


def measure(code: str) -> dict:
    """Run `code` in a fresh Python and return its printed JSON plus peak RSS in bytes."""
    # Peak RSS = VmHWM (ru_maxrss would carry over exec from this parent); it counts pages of memory-mapped
    # files too, which are page cache the kernel can drop, so a sampling thread also tracks anonymous memory.
    prologue = textwrap.dedent("""
        import json, re, threading, time
        _peak_anon = [0]
        def _status(key):
            return int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024
        def _sample():
            while True:
                _peak_anon[0] = max(_peak_anon[0], _status('RssAnon'))
                time.sleep(0.002)
        threading.Thread(target=_sample, daemon=True).start()
    """)
    wrapper = prologue + textwrap.dedent(code) + (
        "\ntime.sleep(0.01)\nprint(json.dumps({**out, 'peak': _status('VmHWM'), 'anon': _peak_anon[0]}))\n")
    res = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="share of the 16540 training images to write")
    ap.add_argument("--loso-subjects", type=int, default=5)
    args = ap.parse_args()
    n = int(round(16540 * args.scale / 10)) * 10
    base = measure("import numpy, sa.brain.data; out = {}")
    baseline = base["anon"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "images", n)
        write_subject(root / "full" / "sub-01", n, 4, 63, 250, 0)
        raw_size = n * 4 * 63 * 250 * 4
        out_size = n * 63 * 250 * 4 + 200 * 63 * 250 * 4
        naive = measure(f"""
            import numpy as np
            d = np.load({str(root / 'full/sub-01/preprocessed_eeg_training.npy')!r}, allow_pickle=True).item()
            x = d['preprocessed_eeg_data'].mean(axis=1)
            out = {{}}""")
        sa_load = measure(f"""
            from sa.brain.data import open_dataset
            s = open_dataset({str(root / 'full')!r}, image_root={str(root / 'images')!r}).load(1)
            out = {{'shape': list(s.train.x.shape)}}""")
        print(f"one subject {n} x 4 x 63 x 250 float32: stored {raw_size / GB:.2f} GB, averaged output {out_size / GB:.2f} GB")
        print(f"  interpreter + imports             anonymous {baseline / GB:5.2f} GB")
        for label, m in (("np.load(...).item() + mean", naive), ("sa load (averaged, all channels)", sa_load)):
            print(f"  {label:33s} anonymous peak {m['anon'] / GB:5.2f} GB = {(m['anon'] - baseline) / out_size:4.2f} x output "
                  f"({(m['anon'] - baseline) / raw_size:4.2f} x stored); RSS incl. mapped file pages {m['peak'] / GB:5.2f} GB")
        for s in range(args.loso_subjects):
            write_subject(root / "loso" / f"sub-{s + 1:02d}", n, 4, 17, 100, s + 1)
        for average in (True, False):
            loso = measure(f"""
                from sa.brain.data import open_dataset
                s = open_dataset({str(root / 'loso')!r}, image_root={str(root / 'images')!r}).load_loso(1, average_reps={average})
                out = {{'n': int(s.train.x.nbytes + s.val.x.nbytes + s.test.x.nbytes)}}""")
            size = loso["n"]
            print(f"LOSO fold, {args.loso_subjects - 1} training subjects of {n} x 4 x 17 x 100, average_reps={average}: "
                  f"single float32 copy {size / GB:.2f} GB, anonymous peak {loso['anon'] / GB:.2f} GB "
                  f"({(loso['anon'] - baseline) / size:.2f} x the copy), RSS incl. mapped files {loso['peak'] / GB:.2f} GB")


if __name__ == "__main__":
    main()
