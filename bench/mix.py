"""Benchmark: `--layers mix` against the full per-layer sweep on one synthetic subject -- cost, then accuracy and weights.

Cost: `sa sweep --layers mix` and `sa sweep --layers all` each run in a fresh subprocess on the same subject
(same encoder, epochs, seed), reporting wall time and peak RSS (ru_maxrss of the child). Accuracy: every
mix variant (sa.train.mix.MIX_VARIANTS) and the per-layer sweep over several seeds -- validation top-1 (what
chooses the default variant), test top-1, and the weight mass on the planted layer and its two neighbours.
Prints the load average, since 2 shared cores make the timings noisy; writes a figure with --figure.

    python bench/mix.py --data DIR               # a `sa data synth` folder (its cache next to it)
    python bench/mix.py --make DIR --concepts 120 --images 8   # write a larger synthetic dataset first
    python bench/mix.py --data DIR --figure docs/mix_bench.png
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
from sa.train.mix import MixOptions
from sa.train.sweep import sweep
from sa.train.trainer import TrainConfig
a = json.loads(sys.argv[1])
cfg = TrainConfig(encoder="linear", embed_dim=a["embed"], epochs=a["epochs"], batch_size=64, lr=3e-3, device="cpu",
                  precision="fp32")
t = time.perf_counter()
sweep(a["data"], "torchvision-mobilenet_v2", cache=a["cache"], layers=a["layers"], encoders="linear", subjects="sub-01",
      seeds=[0], config=cfg, val_fraction=0.25, progress=False, out=a["out"], mix=MixOptions(variant=a["variant"], travel=a["travel"]))
print(json.dumps({"seconds": time.perf_counter() - t, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def cost(data: Path, cache: str, layers: str, out: Path, epochs: int, embed: int, variant: str, travel: float) -> dict:
    """Wall time and peak RSS of one sweep in a fresh process."""
    arg = json.dumps({"data": str(data), "cache": cache, "layers": layers, "out": str(out), "epochs": epochs,
                      "embed": embed, "variant": variant, "travel": travel})
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    res = subprocess.run([sys.executable, "-c", CHILD, arg], capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def planted_mass(weights: dict[str, float], planted: str) -> float:
    """Weight on the planted layer and its two neighbours (correlated neighbours share mass)."""
    p = int(planted)
    return sum(w for lyr, w in weights.items() if lyr.isdigit() and abs(int(lyr) - p) <= 1)


def accuracy(data: Path, cache: str, planted: str, work: Path, seeds: list[int], epochs: int, embed: int,
             travel: float) -> list[dict]:
    """Per variant (and the per-layer sweep's best layer by validation) and seed: val / test top-1, planted mass."""
    from sa.train.mix import MIX_VARIANTS, MixOptions, read_weights
    from sa.train.summary import summarize
    from sa.train.sweep import sweep
    from sa.train.trainer import TrainConfig

    cfg = TrainConfig(encoder="linear", embed_dim=embed, epochs=epochs, batch_size=64, lr=3e-3, device="cpu",
                      precision="fp32")
    common = dict(cache=cache, encoders="linear", subjects="sub-01", config=cfg, val_fraction=0.25, progress=False)
    rows = []
    for seed in seeds:
        res = sweep(data, "torchvision-mobilenet_v2", layers="all", seeds=[seed], out=work / "all", **common)
        best = summarize(res.rows())[0].best
        pick = next(r for r in res.rows() if r["layer"] == best.layer)
        rows.append({"variant": f"best layer ({best.layer})", "seed": seed, "val": pick["val_top1"],
                     "test": pick["top1"], "mass": None})
        for variant in MIX_VARIANTS:
            res = sweep(data, "torchvision-mobilenet_v2", layers="mix", seeds=[seed], out=work / variant,
                        mix=MixOptions(variant=variant, travel=travel), **common)
            row = res.rows()[0]
            w = {r["layer"]: r["weight"] for r in read_weights(work / variant) if r["run_id"] == row["run_id"]
                 and r["subject"] == "shared"}
            rows.append({"variant": variant, "seed": seed, "val": row["val_top1"], "test": row["top1"],
                         "mass": planted_mass(w, planted), "weights": w})
    return rows


def figure(costs: dict, rows: list[dict], path: Path, planted: str) -> None:
    """Time and memory bars (mix vs sweep) and the default variant's weights per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sa.train.mix import DEFAULT_VARIANT

    fig, ax = plt.subplots(1, 3, figsize=(11, 3.2))
    names = list(costs)
    ax[0].bar(names, [costs[n]["seconds"] for n in names], color=["C0", "C1"])
    ax[0].set_ylabel("wall time (s)")
    ax[1].bar(names, [costs[n]["peak_mib"] for n in names], color=["C0", "C1"])
    ax[1].set_ylabel("peak RSS (MiB)")
    ws = [r["weights"] for r in rows if r["variant"] == DEFAULT_VARIANT]
    layers = sorted(ws[0], key=int)
    mean = np.mean([[w[lyr] for lyr in layers] for w in ws], axis=0)
    ax[2].bar(range(len(layers)), mean, color="C2")
    ax[2].axvline(layers.index(planted), color="k", ls="--", lw=1, label=f"planted {planted}")
    ax[2].set_xticks(range(len(layers)), layers, fontsize=7)
    ax[2].set_ylabel(f"mean weight ({DEFAULT_VARIANT}, {len(ws)} seeds)")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="a `sa data synth` folder")
    ap.add_argument("--make", type=Path, help="write a synthetic dataset here first (then benchmark it)")
    ap.add_argument("--concepts", type=int, default=120)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--embed", type=int, default=32)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sa-bench-mix"))
    ap.add_argument("--figure", type=Path)
    ap.add_argument("--travel", type=float, help="how far the layer logits may move in a run (default: sa.train.mix.DEFAULT_TRAVEL)")
    args = ap.parse_args()
    from sa.brain.synth import SynthOptions, make_synth, read_synth
    from sa.train.mix import DEFAULT_TRAVEL, DEFAULT_VARIANT

    travel = DEFAULT_TRAVEL if args.travel is None else args.travel

    data = args.data
    if args.make is not None:
        if not (args.make / "synth.json").exists():
            make_synth(args.make, replace(SynthOptions(n_times=40), n_train_concepts=args.concepts,
                                          images_per_concept=args.images, n_test_concepts=40), progress=False)
        data = args.make
    if data is None:
        ap.error("give --data or --make")
    info = read_synth(data)
    cache, planted = info["planted"]["cache"], info["planted"]["layer"]
    stamp = time.strftime("%H%M%S")
    work = args.work / stamp
    print(f"load average before: {os.getloadavg()}  ({os.cpu_count()} CPUs)")
    costs = {}
    for name, layers in (("mix", "mix"), ("sweep (20 runs)", "all")):
        costs[name] = cost(data, cache, layers, work / f"cost-{layers}", args.epochs, args.embed, DEFAULT_VARIANT, travel)
        print(f"{name:>16}: {costs[name]['seconds']:.1f} s, peak RSS {costs[name]['peak_mib']:.0f} MiB  "
              f"(load {os.getloadavg()[0]:.2f})")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = accuracy(data, cache, planted, work, seeds, args.epochs, args.embed, travel)
    print(f"\nplanted layer {planted}; {info['options']['n_train_concepts']} training concepts x "
          f"{info['options']['images_per_concept']} images; seeds {seeds}; {args.epochs} epochs; mix travel {travel}\n")
    print("| variant | val top-1 | test top-1 | weight on planted +-1 |\n|---|---|---|---|")
    for variant in dict.fromkeys(r["variant"].split(" (")[0] for r in rows):
        sel = [r for r in rows if r["variant"].split(" (")[0] == variant]
        val, test = [r["val"] for r in sel], [r["test"] for r in sel]
        mass = [r["mass"] for r in sel if r["mass"] is not None]
        m = f"{np.mean(mass):.2f} +- {np.std(mass):.2f}" if mass else "-"
        label = variant if variant != "best layer" else "best single layer (by val): " + ", ".join(
            r["variant"].split("(")[1].rstrip(")") for r in sel)
        print(f"| {label} | {np.mean(val):.1f} +- {np.std(val):.1f} | {np.mean(test):.1f} +- {np.std(test):.1f} | {m} |")
    print(f"\nload average after: {os.getloadavg()}")
    if args.figure:
        figure(costs, [r for r in rows if "weights" in r], args.figure, planted)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
