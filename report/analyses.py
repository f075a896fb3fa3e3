"""The report's analysis sections (issue 17): concept accuracy per layer, UMAP of the test embeddings, time-resolved RSA.

Each section appears only when its inputs are in the results folder: the runs.csv column concept_top5 (sweep
--categories), embeddings/<run_id>.npz (sweep --save-embeddings), rsa-*.csv (`sa rsa --out RESULTS`).
"""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from sa.train.summary import BackboneSummary, by_encoder, markdown_table, section_title, sections

Job = tuple[str, Callable[[], Path | None]]

CONCEPT_HOW = ("Concept accuracy: the share (%) of each test trial's top-5 retrieved gallery images (cosine similarity "
               "of the run's test embeddings, as for top-5) whose concept shares a coarse category (sweep "
               "--categories CSV) with the target's concept; mean over the runs (seeds, subjects) of each layer. The "
               "best layer is the one chosen on validation top-1, not on this score.")


RunsOf = Callable[[Sequence[Mapping[str, Any]], Sequence[BackboneSummary]], list]


def _group_runs(runs: Sequence[Mapping[str, Any]], dataset: str, fold: str, group: Sequence[BackboneSummary],
                runs_of: RunsOf) -> list:
    """The runs behind a group's summaries, named as the summaries name their backbone (figures' _runs_of)."""
    return runs_of([r for r in runs if (str(r["dataset"]), str(r["fold"])) == (dataset, fold)], group)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def concept_by_layer(runs: Sequence[Mapping[str, Any]], backbone: str) -> dict[tuple[str, str], list[float]]:
    """{(pool, layer): [concept_top5 of each run]} of one backbone (runs without the column are left out)."""
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in runs:
        if str(r["backbone"]) == backbone and r.get("status") == "ok" and _finite(r.get("concept_top5")):
            out[("" if str(r["layer"]) == "final" else str(r.get("pool") or ""), str(r["layer"]))].append(float(r["concept_top5"]))
    return out


def plot_concepts(group: Sequence[BackboneSummary], runs: Sequence[Mapping[str, Any]], title: str, path: Path) -> Path:
    """Concept accuracy against relative depth, one line per backbone, best layer starred, final layer dashed."""
    from sa.report.plotting import STYLE, _plt, _save

    plt = _plt()
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
        for k, s in enumerate(group):
            scores = concept_by_layer(runs, s.backbone)
            color = plt.get_cmap("tab10")(k % 10)
            pts = sorted((ls.depth, np.mean(scores[(ls.pool, ls.layer)]), ls) for ls in s.layers
                         if ls.depth is not None and scores.get((ls.pool, ls.layer)))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, markersize=3, label=s.backbone)
                best = [p for p in pts if p[2] is s.best]
                if best:
                    ax.plot(best[0][0], best[0][1], "*", color=color, markersize=13, markeredgecolor="k")
            if scores.get(("", "final")):
                ax.axhline(float(np.mean(scores[("", "final")])), color=color, linestyle="--", linewidth=1)
        ax.set_xlabel("relative depth (l−1)/(L−1)")
        ax.set_ylabel("concept accuracy, top-5 (%)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def concept_section(runs: Sequence[Mapping[str, Any]], summaries: Sequence[BackboneSummary], out_dir: Path,
                    runs_of: RunsOf) -> tuple[list[str], list[Job]]:
    """Markdown (per encoder: best vs final concept accuracy per backbone) and figure jobs; nothing without the column."""
    from sa.report.plotting import _slug

    if not any(_finite(r.get("concept_top5")) for r in runs):
        return [], []
    md, jobs = ["## Concept accuracy (`--categories`)\n", CONCEPT_HOW + " Star: best layer; dashed: final layer.\n"], []
    for (dataset, fold, variant), sec in sections(summaries).items():
        for encoder, group in by_encoder(sec).items():
            g_runs = _group_runs(runs, dataset, fold, group, runs_of)
            rows = []
            for s in group:
                scores = concept_by_layer(g_runs, s.backbone)
                best = scores.get((s.best.pool, s.best.layer)) if s.chosen else None
                final = scores.get(("", "final"))
                if best or final:
                    fmt = (lambda v: "–" if not v else f"{np.mean(v):.1f} ± {np.std(v):.1f}")  # noqa: E731
                    rows.append([s.backbone, s.best_label, fmt(best), fmt(final)])
            if not rows:
                continue
            title = f"{section_title(dataset, fold, variant)}, encoder {encoder}"
            tag = f"-{_slug(variant)}" if variant else ""
            path = out_dir / f"concepts-{_slug(dataset)}-{fold}{tag}-{_slug(encoder)}.png"
            jobs.append(("concepts", lambda g=group, r=g_runs, t=title, p=path: plot_concepts(g, r, t, p)))
            md += [f"### {title}\n", markdown_table(["backbone", "best layer", "concept top-5 at best (%)",
                                                      "concept top-5 at final (%)"], rows), "",
                   f"![concept accuracy, {encoder}]({path.name})", ""]
    return md, jobs


def umap_section(results: Any, runs: Sequence[Mapping[str, Any]], summaries: Sequence[BackboneSummary],
                 out_dir: Path, runs_of: RunsOf) -> tuple[list[str], list[Job]]:
    """Markdown and figure jobs of the UMAP section; a one-sentence note when umap-learn is missing."""
    from sa.report.plotting import _slug
    from sa.report.umap import MISSING, plot_umap, umap_runs
    from sa.train.embeddings import FOLDER, read_embeddings

    if not (results.path / FOLDER).is_dir():
        return [], []
    md: list[str] = []
    jobs: list[Job] = []
    for (dataset, fold, variant), sec in sections(summaries).items():
        for encoder, group in by_encoder(sec).items():
            g_runs = _group_runs(runs, dataset, fold, group, runs_of)
            for s in group:
                if not s.chosen:
                    continue
                picked = umap_runs([r for r in g_runs if str(r["backbone"]) == s.backbone], s.best, results.path)
                if not picked:
                    continue
                panels = [(f"{name} ({row['subject']}, seed {row['seed']}, test top-1 {row['top1']:.1f} %)",
                           read_embeddings(results.path, str(row["run_id"]))) for name, row in picked]
                title = f"{s.backbone} · {encoder} · {section_title(dataset, fold, variant)}"
                tag = f"-{_slug(variant)}" if variant else ""
                path = out_dir / f"umap-{_slug(dataset)}-{fold}{tag}-{_slug(s.backbone)}-{_slug(encoder)}.png"
                jobs.append(("umap", lambda pn=panels, t=title, p=path: plot_umap(pn, t, p)))
                md += [f"![UMAP, {s.backbone} {encoder}]({path.name})", ""]
    if not jobs:
        return [], []
    head = ["## UMAP of the test embeddings (`--save-embeddings`)\n",
            "Each panel: one run's projected test embeddings (brain: repetition-averaged test trials, dots; image: "
            "the gallery, crosses; grey line: trial to its target image), L2-normalised and embedded together by "
            "umap-learn (cosine metric, 15 neighbours, seed 0); colour: the target's category when the sweep had "
            "--categories, else its concept. Best layer (chosen on validation top-1) beside the final layer; the "
            "run is the first subject's lowest seed. UMAP distances are for looking only: the accuracies above "
            "come from cosine scores in the full space.\n"]
    if importlib.util.find_spec("umap") is None:
        return head + [f"Note: {MISSING}\n"], []
    return head + md, jobs


def analyses_section(results: Any, runs: Sequence[Mapping[str, Any]], summaries: Sequence[BackboneSummary],
                     out_dir: Path, runs_of: RunsOf) -> tuple[list[str], list[Job]]:
    """Concept accuracy, UMAP and RSA sections (each only when its inputs are present); runs_of is figures' _runs_of."""
    from sa.report.rsa import rsa_section

    md: list[str] = []
    jobs: list[Job] = []
    for part_md, part_jobs in (concept_section(runs, summaries, out_dir, runs_of),
                               umap_section(results, runs, summaries, out_dir, runs_of),
                               rsa_section(results.path, out_dir)):
        md += part_md
        jobs += part_jobs
    return md, jobs
