"""Benchmark: `sa stream` latency, from the arrival of an epoch's last sample to its decision being published.

A separate process plays an amplifier on loopback LSL: 63 channels at 250 Hz, float32, in 5-sample chunks (20 ms)
stamped on the sample clock, with a string marker every --soa seconds (THINGS-EEG2's RSVP rate is 0.2 s). The
session decodes each marker's epoch (0..0.996 s, 250 samples) with an EEGProject checkpoint (embed 1024, image
features 1024; weights untrained: the arithmetic, not the accuracy, sets the time) against a gallery of 200 and of
16,740 images (THINGS-EEG2's training set), after --epochs decisions prints per gallery:

- latency: arrival -> published (the inlet handed the last sample to sa -> push_sample returned), p50 / p99 / max;
- end-to-end: the last sample's acquisition stamp -> published (adds LSL transport and sa's polling), p50 / p99;
- the CPU time sa's thread spent between arrival and publishing (the latency minus time spent waiting for a core).

Target: p99 <= 25 ms on the 2-core CPU. The load average (at the start and the end of each run) and the steal
time (CPU time the hypervisor gave to other machines) are printed: the machine is shared, so read figures taken
under load with care. Every packet stays on 127.0.0.1 (sa.decode.lsl.LOOPBACK_CONFIG).

    .venv/bin/python bench/stream.py [--epochs 500] [--galleries 200 16740] [--soa 0.2] [--threads 1]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sa.decode.lsl import write_loopback_config

N_CH, SFREQ, N_T, FEAT, EMBED = 63, 250.0, 250, 1024, 1024
CH_NAMES = [f"E{i:02d}" for i in range(N_CH)]


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat (None off Linux): time the hypervisor gave elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_text(before, after) -> str:
    if before is None or after is None or after[1] == before[1]:
        return ""
    return f", steal {100 * (after[0] - before[0]) / (after[1] - before[1]):.1f} %"


def make_checkpoint(folder: Path, group) -> Path:
    """An untrained EEGProject checkpoint for 63 ch x 250 samples aligned with `group`, saved by sa's own path."""
    from dataclasses import asdict

    from sa.train.checkpoint import Checkpoint, save_checkpoint
    from sa.train.trainer import RunSpec, TrainConfig, plain_model

    cfg = TrainConfig(encoder="eegproject", embed_dim=EMBED, device="cpu", precision="fp32")
    model = plain_model(RunSpec("final", 0), cfg, (N_CH, N_T), FEAT)
    model.eval()
    ckpt = Checkpoint(model=model, config={**asdict(cfg), "ks": list(cfg.ks)}, encoder="eegproject", n_channels=N_CH,
                      n_times=N_T, feat_dim=FEAT, ch_names=CH_NAMES, times=[i / SFREQ for i in range(N_T)],
                      sfreq=SFREQ, window=None, average_reps=True, zscore_mean=np.zeros(N_CH, np.float32),
                      zscore_std=np.ones(N_CH, np.float32), cache_key=group.key, cache_root=str(folder / "cache"),
                      pool="mean", layer="final", seed=0)
    return save_checkpoint(folder / f"bench-{group.n_rows if hasattr(group, 'n_rows') else len(group.ids)}.safetensors", ckpt)


def make_gallery(folder: Path, n: int, seed: int = 0):
    """A complete cache group of n images with random 1024-d final features."""
    from sa.cache import open_root

    rng = np.random.default_rng(seed)
    writer = open_root(folder / "cache").create(f"{n:016x}", "bench-net-0000000000", [f"img/{i:05d}.jpg" for i in range(n)],
                                                {"final": FEAT}, {"backbone": {"name": "bench"}}, block_rows=4096)
    for b in range(writer.n_blocks):
        rows = writer.block_rows_slice(b)
        writer.write_block(b, {"final": rng.standard_normal((rows.stop - rows.start, FEAT)).astype(np.float16)})
    return writer.finalize()


def amplifier(name: str, seconds: float, soa: float, chunk: int) -> None:
    """Child process: push noise at SFREQ in chunks on the sample clock, and a marker at every SOA."""
    from mne_lsl.lsl import StreamInfo, StreamOutlet, local_clock

    info = StreamInfo(name, "EEG", N_CH, SFREQ, "float32", f"bench-{name}")
    info.set_channel_names(CH_NAMES)
    eeg = StreamOutlet(info, chunk_size=chunk)
    mk = StreamOutlet(StreamInfo(f"{name}-markers", "Markers", 1, 0.0, "string", f"bench-{name}-mk"))
    eeg.wait_for_consumers(60)
    mk.wait_for_consumers(60)
    rng = np.random.default_rng(1)
    block = rng.standard_normal((int(SFREQ) * 4, N_CH)).astype(np.float32)
    t0 = local_clock() + 0.5
    every = int(round(soa * SFREQ))
    k = 0
    while k < seconds * SFREQ:
        stamps = t0 + (k + np.arange(chunk)) / SFREQ
        time.sleep(max(stamps[-1] - local_clock(), 0))  # the last sample of the chunk is "now"
        for s in range(k, k + chunk):
            if s % every == 0:
                mk.push_sample([f"stim{s // every}"], timestamp=t0 + s / SFREQ)
        rows = np.arange(k, k + chunk) % len(block)
        eeg.push_chunk(block[rows], timestamp=stamps)
        k += chunk
    time.sleep(1.0)


def run_one(ckpt, group, n_epochs: int, soa: float, chunk: int, tag: str) -> list:
    """Decode n_epochs markers of a fresh amplifier process; returns the decisions."""
    from sa.decode.lsl import StreamSpec
    from sa.decode.online import OnlineOptions, StreamSession

    name = f"bench-amp-{tag}"
    seconds = n_epochs * soa + 3
    proc = mp.get_context("spawn").Process(target=amplifier, args=(name, seconds, soa, chunk), daemon=True)
    proc.start()
    quiet: list[str] = []
    log = Path(tempfile.mkdtemp(prefix="sa-bench-")) / "session.jsonl"
    session = StreamSession(ckpt, group, eeg=StreamSpec(name=name), markers=StreamSpec(name=f"{name}-markers"),
                            options=OnlineOptions(top_k=5), log=log, notify=quiet.append, outlet_name=f"{name}-out")
    decisions = session.run(max_decisions=n_epochs, duration=seconds + 30)
    proc.terminate()
    proc.join(5)
    faults = [q for q in quiet if not q.startswith("#")]
    if faults:
        print("  session said:", *faults[:5], sep="\n    ")
    return decisions


def summary(values: np.ndarray) -> str:
    return (f"p50 {np.percentile(values, 50):6.2f} ms  p99 {np.percentile(values, 99):6.2f} ms  "
            f"max {values.max():6.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=500)
    ap.add_argument("--galleries", type=int, nargs="+", default=[200, 16740])
    ap.add_argument("--soa", type=float, default=0.2)
    ap.add_argument("--chunk", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the session")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sa-bench-stream-"))
    os.environ.setdefault("LSLAPICFG", str(write_loopback_config(folder / "lsl_api.cfg")))
    import torch

    torch.set_num_threads(args.threads)
    print(f"sa stream latency: EEGProject {N_CH} ch x {N_T} samples at {SFREQ:g} Hz, embed {EMBED}, "
          f"{args.epochs} epochs at SOA {args.soa:g} s, {args.chunk}-sample chunks, torch threads {args.threads}")
    for n in args.galleries:
        group = make_gallery(folder, n)
        ckpt = make_checkpoint(folder, group)
        t, before, ticks = time.perf_counter(), os.getloadavg()[0], cpu_ticks()
        decisions = run_one(ckpt, group, args.epochs, args.soa, args.chunk, str(n))
        lat = np.array([d.latency_ms for d in decisions])
        e2e = np.array([(d.published - d.last_sample_time) * 1000 for d in decisions])
        cpu = np.array([d.cpu_ms for d in decisions])
        print(f"gallery {n:>6}: {len(decisions)} decisions in {time.perf_counter() - t:.0f} s (1-min load {before:.2f} "
              f"at the start; {load_text()} at the end{steal_text(ticks, cpu_ticks())})")
        print(f"  arrival -> published   {summary(lat)}")
        print(f"  acquired -> published  {summary(e2e)}")
        print(f"  CPU time on the path   {summary(cpu)}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
