"""Benchmark: which epoch-selection rule gives the best test top-1, measured on sa's own synthetic data.

Two planted problems, each at several single-trial SNRs and data seeds, 2 subjects each:

- synth: `sa data synth` defaults (40 training concepts x 6 images, 20 test concepts, 4 / 20 repetitions,
  100 samples), EEG linear in MobileNetV2 gap/09;
- demo: the full-size `sa demo` dataset (100 x 4 images, 50 test concepts, 4 / 4 repetitions), planted at gap/13.

Every run is the planted layer trained as `sa demo` trains (EEGProject, embed 128, AdamW lr 1e-3, batch 64,
20 epochs unless --epochs, validation = 20 % of training concepts). The trainer's per-epoch hook scores the test set after
every epoch *for this measurement only*; each rule then picks its epoch from the validation curve exactly as
the trainer does (`sa.train.trainer.choose_epoch`), and we read the test top-1 at that epoch. The "test-oracle"
row (best test epoch) is a ceiling no rule may use. Prints a markdown table (docs/selection.md holds one run).

    python bench/selection.py            # 2 problems x 3 SNRs x 3 seeds x 2 subjects = 36 runs, ~10 min on 2 cores
    python bench/selection.py --work DIR --epochs 40   # keep the datasets in DIR; a rerun only trains
    python bench/selection.py --quick    # 1 seed, 2 SNRs: a smoke test
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sa.cache import open_root
from sa.brain.data import open_dataset
from sa.demo import FULL_SYNTH, PLANTED_LAYER, TRAIN, VAL_FRACTION
from sa.train.features import FeatureTable, split_features
from sa.train.results import SELECT_RULES
from sa.brain.synth import SynthOptions, make_synth
from sa.train.trainer import RunSpec, TrainConfig, choose_epoch, evaluate_split, train_runs

EPOCHS = 20
PROBLEMS = {
    "synth": dict(layer=None),  # sa data synth defaults: the middle layer (gap/09)
    "demo": dict(**FULL_SYNTH, layer=PLANTED_LAYER),
}


def problem(name: str, snr: float, seed: int, root: Path, cache: Path) -> Path:
    """Write (or reuse) one synthetic dataset; the cache group of its images is shared across SNRs."""
    out = root / f"{name}-snr{snr:g}-seed{seed}"
    if not (out / "synth.json").exists():
        opts = SynthOptions(**{**PROBLEMS[name], "snr": snr, "seed": seed, "n_subjects": 2})
        make_synth(out, opts, cache=cache, progress=False)
    return out


def run_subject(data: Path, subject: str, seed: int, epochs: int) -> dict[str, float]:
    """Train the planted layer of one subject; test top-1 at the epoch each rule picks (and the test oracle)."""
    import json

    info = json.loads((data / "synth.json").read_text())["planted"]
    subj = open_dataset(data).load(subject, val_fraction=VAL_FRACTION, seed=0)
    group = open_root(info["cache"], read_only=True).open(info["cache_key"])
    table = FeatureTable(group, np.concatenate([subj.train.image_ids, subj.val.image_ids, subj.test.image_ids]))
    layer, pool = info["layer"], info["pool"]
    feats = {name: split_features(table, getattr(subj, name), pool, [layer]) for name in ("train", "val", "test")}
    test_x = torch.as_tensor(subj.test.x)
    test_f = [torch.as_tensor(feats["test"][layer])]
    test_ids = [str(i) for i in subj.test.image_ids]
    per_epoch: dict[int, float] = {}

    def score_test(epoch: int, members: list[int], stack) -> None:  # measurement only: never selects
        per_epoch[epoch] = float(evaluate_split(stack, test_x, test_f, 1024, test_ids)[1][0])

    cfg = TrainConfig(**{**TRAIN, "select": "last"}, epochs=epochs, device="cpu", precision="fp32")
    (res,) = train_runs(subj.train.x, feats["train"], subj.val.x, feats["val"], subj.test.x, feats["test"],
                        [RunSpec(layer, seed)], cfg, progress=False, val_ids=subj.val.image_ids, on_epoch=score_test)
    assert abs(res.top1 - per_epoch[epochs]) < 1e-6 + 100 / len(test_ids), (res.top1, per_epoch[epochs])
    out = {rule: per_epoch[choose_epoch(rule, res.curves)] for rule in SELECT_RULES}
    out["test-oracle"] = max(per_epoch.values())
    out["_epochs"] = {rule: choose_epoch(rule, res.curves) for rule in SELECT_RULES}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed and 2 SNRs")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--snrs", default="0.05,0.2,1", help="single-trial signal-to-noise power ratios")
    ap.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs per run")
    ap.add_argument("--work", default=None, help="folder for the datasets and cache (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [0] if args.quick else list(range(args.seeds))
    snrs = [1.0, 4.0] if args.quick else [float(s) for s in args.snrs.split(",")]
    rules = [*SELECT_RULES, "test-oracle"]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.work or tmp)
        cache = root / "cache"
        scores: dict[tuple[str, float], list[dict]] = {}
        for name in PROBLEMS:
            for snr in snrs:
                for seed in seeds:
                    data = problem(name, snr, seed, root, cache)
                    for subject in ("sub-01", "sub-02"):
                        scores.setdefault((name, snr), []).append(run_subject(data, subject, seed, args.epochs))
                    print(f"  {name} snr {snr:g} seed {seed}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    cols = list(scores)
    print(f"\nTest top-1 (%) at the epoch each rule selects; mean over {len(seeds)} data/training seed(s) x 2 subjects; "
          f"{args.epochs} epochs; {time.perf_counter() - t0:.0f} s.\n")
    header = ["rule"] + [f"{n} snr {s:g}" for n, s in cols] + ["mean", "mean rank"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    means = {r: [float(np.mean([x[r] for x in scores[c]])) for c in cols] for r in rules}
    ranks = {r: [] for r in SELECT_RULES}
    for c in cols:  # rank of each rule per run (1 = best test top-1; ties share the better rank)
        for x in scores[c]:
            for r in SELECT_RULES:
                ranks[r].append(1 + sum(x[o] > x[r] for o in SELECT_RULES))
    for r in rules:
        rank = f"{np.mean(ranks[r]):.2f}" if r in ranks else "–"
        print("| " + " | ".join([r] + [f"{v:.1f}" for v in means[r]] + [f"{np.mean(means[r]):.2f}", rank]) + " |")
    chosen = {r: float(np.mean([x["_epochs"][r] for c in cols for x in scores[c]])) for r in SELECT_RULES}
    print("\nMean selected epoch: " + ", ".join(f"{r} {e:.1f}" for r, e in chosen.items()))
    best = max(SELECT_RULES, key=lambda r: np.mean(means[r]))
    print(f"Best mean test top-1 (the rules never look at test; the bench does, to score them): {best}")


if __name__ == "__main__":
    main()
