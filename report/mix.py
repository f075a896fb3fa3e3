"""The report's view of `--layers mix` runs: learned layer weights against relative depth, beside the per-layer curve.

For every (dataset, fold, backbone, encoder) with mix runs, one panel per mix label: the shared weights
(mean ± sd over seeds and test subjects) as bars at each layer's relative depth, and -- when the same
results folder holds single-layer runs of that backbone and encoder -- their mean test top-1 per layer on a
second axis. The weights were learned from training rows only and the run's epoch chosen on validation.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sa.train.mix import SHARED, read_weights

Key = tuple[str, str, str, str]  # dataset, fold, backbone, encoder


def _key(r: Mapping[str, Any]) -> Key:
    return (str(r["dataset"]), str(r["fold"]), str(r["backbone"]), str(r["encoder"]))


def mix_groups(results: Any, runs: Sequence[Mapping[str, Any]]) -> dict[Key, dict[str, Any]]:
    """{key: {"weights": {label: {layer: [weights over runs]}}, "depth": {layer: depth}, "curve": {layer: [top1]}}}."""
    table = [w for w in read_weights(results) if w["subject"] == SHARED]
    if not table:
        return {}
    by_run = {str(r["run_id"]): r for r in runs}
    out: dict[Key, dict[str, Any]] = {}
    for w in table:
        run = by_run.get(str(w["run_id"]))
        if run is None or run.get("status") != "ok":
            continue  # weights of a run whose row is missing (interrupted) or not a result
        g = out.setdefault(_key(run), {"weights": defaultdict(lambda: defaultdict(list)), "depth": {}, "curve": {}})
        g["weights"][str(run["layer"])][str(w["layer"])].append(float(w["weight"]))
        if w["depth"] is not None:
            g["depth"][str(w["layer"])] = float(w["depth"])
    for r in runs:  # the per-layer sweep of the same backbone and encoder, when there is one
        key, layer = _key(r), str(r["layer"])
        if key in out and layer != "final" and not layer.startswith("mix") and r.get("status") == "ok" \
                and r.get("top1") is not None and r.get("depth") is not None:
            out[key]["curve"].setdefault(layer, []).append(float(r["top1"]))
            out[key]["depth"].setdefault(layer, float(r["depth"]))
    return out


def plot_mix(key: Key, group: Mapping[str, Any], path: Path) -> Path:
    """Weights (bars, left axis) and the per-layer test top-1 (line, right axis) against relative depth."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    labels = sorted(group["weights"])
    fig, axes = plt.subplots(1, len(labels), figsize=(5.2 * len(labels), 3.4), squeeze=False)
    depth = group["depth"]
    for ax, label in zip(axes[0], labels):
        weights = group["weights"][label]
        layers = sorted(weights, key=lambda lyr: depth.get(lyr, np.inf))
        x = np.array([depth.get(lyr, np.nan) for lyr in layers])
        if np.isnan(x).any():  # no manifest depth (e.g. 'final'): place layers by their order
            x = np.linspace(0, 1, len(layers))
        mean = np.array([np.mean(weights[lyr]) for lyr in layers])
        sd = np.array([np.std(weights[lyr]) for lyr in layers])
        width = 0.8 * (np.min(np.diff(np.sort(x))) if len(x) > 1 else 0.1)
        ax.bar(x, mean, width=width, yerr=sd, color="#2ca02c", alpha=0.8, label="learned weight")
        ax.set_xlabel("relative depth (l−1)/(L−1)")
        ax.set_ylabel("layer weight (shared)")
        n = len(next(iter(weights.values())))
        ax.set_title(f"{key[2]} · {key[3]} · {label}\n{key[0]} {key[1]}, {n} run(s)", fontsize=9)
        curve = group["curve"]
        if curve:
            twin = ax.twinx()
            pts = sorted((depth[lyr], np.mean(v)) for lyr, v in curve.items() if lyr in depth)
            twin.plot([p[0] for p in pts], [p[1] for p in pts], color="#1f77b4", marker="o", markersize=3,
                      label="per-layer sweep test top-1")
            twin.set_ylabel("single-layer test top-1 (%)", color="#1f77b4")
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def mix_section(results: Any, runs: Sequence[Mapping[str, Any]], out_dir: Path) -> tuple[list[str], list[tuple]]:
    """(markdown lines, plot jobs) of the report's mix section; nothing when the folder holds no mix weights."""
    groups = mix_groups(results, runs)
    if not groups:
        return [], []
    md = ["## Learned layer mixes (`--layers mix`)\n",
          "Bars: each layer's shared weight (mean ± sd over runs), learned from training rows; the run's epoch was "
          "chosen on validation. A weight is a share of the image embedding, not a test of the layer: correlated "
          "neighbouring layers split mass between them (docs/mix.md). Line: the per-layer sweep's test top-1, "
          "when this folder has one.\n"]
    jobs = []
    for key, group in sorted(groups.items()):
        path = out_dir / ("mix-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(key)).strip("_") or "x") + ".png")
        jobs.append(("mix", lambda k=key, g=group, p=path: plot_mix(k, g, p)))
        md += [f"![layer weights, {key[2]} {key[3]}]({path.name})", ""]
    return md, jobs
