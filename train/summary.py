"""From run rows to the paper's tables: per backbone the best layer (chosen on validation), its test scores, the final layer's.

Aggregation everywhere: the mean over seeds within a subject, then the mean and
sample sd over subjects (with a single subject, the sd is over its seeds).
The best layer is the one with the highest validation top-1 aggregated that
way; the test set is only scored, never used to choose. Intra-subject and
leave-one-subject-out results (`fold`) and datasets are kept apart.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sa.errors import SAError

Row = Mapping[str, Any]
FOLD_TITLES = {"intra": "intra-subject", "loso": "leave-one-subject-out"}


@dataclass(frozen=True)
class Stat:
    """A mean with its sample sd (NaN when n < 2); `over` says what the sd spans: subjects or seeds."""

    mean: float
    sd: float
    n: int
    over: str = "subjects"

    def fmt(self, digits: int = 1) -> str:
        """'67.7 ± 1.2', or '67.7' without an sd, or '–' when empty."""
        if self.n == 0 or math.isnan(self.mean):
            return "–"
        if math.isnan(self.sd):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


def _finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _mean_sd(values: Sequence[float], over: str) -> Stat:
    """Mean and sample sd (ddof=1) of values; NaN sd for a single value."""
    if not values:
        return Stat(math.nan, math.nan, 0, over)
    a = np.asarray(values, dtype=float)
    return Stat(float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else math.nan, int(a.size), over)


def seeds_then_subjects(rows: Iterable[Row], column: str) -> Stat:
    """Mean over seeds within each subject, then mean ± sd over subjects (over seeds if there is one subject)."""
    by_subject: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if _finite(r.get(column)):
            by_subject[str(r["subject"])].append(float(r[column]))
    if len(by_subject) == 1:
        return _mean_sd(next(iter(by_subject.values())), "seeds")
    return _mean_sd([float(np.mean(v)) for v in by_subject.values()], "subjects")


@dataclass(frozen=True)
class LayerScore:
    """One (pool, layer) of a backbone: test top-1/top-5 and validation top-1, aggregated over seeds and subjects."""

    pool: str
    layer: str
    depth: float | None
    top1: Stat
    top5: Stat
    val_top1: Stat


@dataclass(frozen=True)
class SubjectScore:
    """One subject's best-layer and final-layer test scores, mean ± sd over seeds."""

    subject: str
    best_top1: Stat
    best_top5: Stat
    final_top1: Stat | None
    final_top5: Stat | None


@dataclass(frozen=True)
class BackboneSummary:
    """The paper's table row for one backbone (and encoder) in one dataset and fold."""

    dataset: str
    fold: str
    encoder: str
    backbone: str
    params: int | None
    n_blocks: int | None
    layers: list[LayerScore]
    best: LayerScore
    final: LayerScore | None
    subjects: list[SubjectScore] = field(default_factory=list)
    n_seeds: int = 0

    @property
    def gain(self) -> float | None:
        """Best-layer minus final-layer test top-1, in percentage points."""
        if self.final is None or self.final.top1.n == 0:
            return None
        return self.best.top1.mean - self.final.top1.mean

    @property
    def best_label(self) -> str:
        """The best layer's label, with its pool when the backbone was swept over several pools."""
        pools = {ls.pool for ls in self.layers}
        return f"{self.best.pool}/{self.best.layer}" if len(pools) > 1 else self.best.layer


def _layer_sort_key(pool: str, layer: str) -> tuple[str, float, str]:
    """Layers in depth order within a pool (numeric labels; anything else after)."""
    try:
        return (pool, float(int(layer)), layer)
    except ValueError:
        return (pool, math.inf, layer)


def _depth(rows: Sequence[Row], layer: str) -> float | None:
    """The rows' relative depth, or (l - 1) / (L - 1) from n_blocks when the column is empty."""
    depths = [float(r["depth"]) for r in rows if _finite(r.get("depth"))]
    if depths:
        return float(np.mean(depths))
    blocks = next((r["n_blocks"] for r in rows if _finite(r.get("n_blocks"))), None)
    try:
        return (int(layer) - 1) / (blocks - 1) if blocks and blocks > 1 else None
    except ValueError:
        return None


def _score(pool: str, layer: str, rows: Sequence[Row]) -> LayerScore:
    return LayerScore(
        pool, layer, _depth(rows, layer) if layer != "final" else None,
        seeds_then_subjects(rows, "top1"), seeds_then_subjects(rows, "top5"), seeds_then_subjects(rows, "val_top1"),
    )  # fmt: skip


def _seed_stat(rows: Sequence[Row], column: str) -> Stat:
    return _mean_sd([float(r[column]) for r in rows if _finite(r.get(column))], "seeds")


def _first(rows: Sequence[Row], column: str) -> Any:
    return next((r[column] for r in rows if _finite(r.get(column))), None)


def summarize_backbone(rows: Sequence[Row]) -> BackboneSummary:
    """Summarize the runs of one (dataset, fold, encoder, backbone): best layer by validation top-1, and the final layer."""
    by_layer: dict[tuple[str, str], list[Row]] = defaultdict(list)
    final_rows: list[Row] = []
    for r in rows:
        if str(r["layer"]) == "final":
            final_rows.append(r)
        else:
            by_layer[(str(r.get("pool") or ""), str(r["layer"]))].append(r)
    head = rows[0]
    name = f"{head['backbone']} ({head['encoder']}, {head['dataset']}, {head['fold']})"
    if not by_layer:
        raise SAError(f"runs.csv has only final-layer runs for {name}; sweep intermediate layers (`sa sweep --layers all`).")
    layers = [_score(p, lyr, by_layer[(p, lyr)]) for p, lyr in sorted(by_layer, key=lambda k: _layer_sort_key(*k))]
    scored = [ls for ls in layers if ls.val_top1.n > 0]
    if not scored:
        raise SAError(f"runs.csv has no val_top1 for {name}; the best layer is chosen on validation, so rerun with a validation split.")
    best = max(scored, key=lambda ls: ls.val_top1.mean)  # max keeps the first (shallowest) of ties
    final = _score(str(final_rows[0].get("pool") or ""), "final", final_rows) if final_rows else None
    best_rows = by_layer[(best.pool, best.layer)]
    subjects = []
    for subj in sorted({str(r["subject"]) for r in best_rows}):
        b = [r for r in best_rows if str(r["subject"]) == subj]
        f = [r for r in final_rows if str(r["subject"]) == subj]
        subjects.append(SubjectScore(
            subj, _seed_stat(b, "top1"), _seed_stat(b, "top5"),
            _seed_stat(f, "top1") if f else None, _seed_stat(f, "top5") if f else None,
        ))  # fmt: skip
    return BackboneSummary(
        dataset=str(head["dataset"]), fold=str(head["fold"]), encoder=str(head["encoder"]), backbone=str(head["backbone"]),
        params=_first(rows, "backbone_params"), n_blocks=_first(rows, "n_blocks"), layers=layers, best=best,
        final=final, subjects=subjects, n_seeds=len({r["seed"] for r in best_rows}),
    )  # fmt: skip


# Columns of runs.csv that must agree among the runs averaged into one summary row.
SETTING_COLUMNS = ("epochs", "lr", "weight_decay", "batch_size", "temperature_init", "learn_temperature", "image_proj", "select")


def _require_one_setting(rows: Sequence[Row]) -> None:
    """SAError when one (dataset, fold, encoder, backbone) group mixes training settings: averaging them would mislead."""
    for col in SETTING_COLUMNS:
        values = sorted({str(r.get(col)) for r in rows})
        if len(values) > 1:
            r = rows[0]
            raise SAError(
                f"runs.csv mixes runs of {r['backbone']} ({r['encoder']}, {r['fold']}, {r['dataset']}) with different {col} "
                f"({', '.join(values)}); sweep each setting into its own --out folder, or remove the other rows, before summarising.")


def summarize(runs: Iterable[Row]) -> list[BackboneSummary]:
    """One summary per (dataset, fold, encoder, backbone), ordered by dataset, fold (intra first), encoder, parameters."""
    groups: dict[tuple[str, str, str, str], list[Row]] = defaultdict(list)
    for r in runs:
        groups[(str(r["dataset"]), str(r["fold"]), str(r["encoder"]), str(r["backbone"]))].append(r)
    for rows in groups.values():
        _require_one_setting(rows)
    out = [summarize_backbone(rows) for rows in groups.values()]
    fold_order = {"intra": 0, "loso": 1}
    width = defaultdict(int)  # encoders run on more backbones (the main sweep) come first
    for s in out:
        width[(s.dataset, s.fold, s.encoder)] += 1
    return sorted(out, key=lambda s: (
        s.dataset, fold_order.get(s.fold, 2), s.fold, -width[(s.dataset, s.fold, s.encoder)], s.encoder, s.params or 0, s.backbone,
    ))  # fmt: skip


def sections(summaries: Iterable[BackboneSummary]) -> dict[tuple[str, str], list[BackboneSummary]]:
    """Summaries split by (dataset, fold), order kept."""
    out: dict[tuple[str, str], list[BackboneSummary]] = {}
    for s in summaries:
        out.setdefault((s.dataset, s.fold), []).append(s)
    return out


def by_encoder(summaries: Iterable[BackboneSummary]) -> dict[str, list[BackboneSummary]]:
    """Summaries split by encoder, order kept."""
    out: dict[str, list[BackboneSummary]] = {}
    for s in summaries:
        out.setdefault(s.encoder, []).append(s)
    return out


# -- scaling and the encoder grid ----------------------------------------------


@dataclass(frozen=True)
class ScalingFit:
    """Least-squares line of top-1 (%) on log10(parameters), with Pearson r and its two-sided p."""

    slope: float
    intercept: float
    r: float
    p: float
    n: int


def scaling_fit(params: Sequence[float], top1: Sequence[float]) -> ScalingFit | None:
    """Regress top-1 on log10(params); None when fewer than 3 backbones or all parameter counts are equal."""
    pairs = [(math.log10(p), t) for p, t in zip(params, top1) if _finite(p) and p > 0 and _finite(t)]
    if len(pairs) < 3 or len({x for x, _ in pairs}) < 2:
        return None
    from scipy.stats import linregress

    x, y = np.array(pairs).T
    fit = linregress(x, y)
    return ScalingFit(float(fit.slope), float(fit.intercept), float(fit.rvalue), float(fit.pvalue), len(pairs))


def encoder_grid(summaries: Sequence[BackboneSummary]) -> tuple[list[str], list[str], np.ndarray]:
    """Encoders (rows) x backbones (columns, by parameter count) of best-layer test top-1; NaN where not run."""
    backbones = list(dict.fromkeys(s.backbone for s in sorted(summaries, key=lambda s: (s.params or 0, s.backbone))))
    encoders = sorted({s.encoder for s in summaries})
    grid = np.full((len(encoders), len(backbones)), np.nan)
    for s in summaries:
        grid[encoders.index(s.encoder), backbones.index(s.backbone)] = s.best.top1.mean
    return encoders, backbones, grid


# -- rendering -------------------------------------------------------------------


def fmt_params(n: int | None) -> str:
    """Parameter counts the way the paper writes them: 38M, 632M, 1.14B, 5.4M."""
    if not n:
        return "?"
    if n >= 1e9:
        return f"{n / 1e9:.3g}B"
    if n >= 1e6:
        return f"{n / 1e6:.0f}M" if n >= 1e7 else f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.0f}K" if n >= 1e3 else str(n)


def _pair(a: Stat | None, b: Stat | None) -> str:
    if a is None or b is None or a.n == 0:
        return "–"
    return f"{a.fmt()} / {b.fmt()}"


def summary_header() -> list[str]:
    return ["backbone", "params", "blocks", "best l", "depth", "best top-1 / top-5", "final top-1 / top-5", "gain"]


def summary_cells(s: BackboneSummary) -> list[str]:
    """One table row: backbone | params | blocks | best l | depth | best top-1/top-5 | final top-1/top-5 | gain."""
    return [
        s.backbone, fmt_params(s.params), str(s.n_blocks or "?"), s.best_label,
        f"{s.best.depth:.2f}" if s.best.depth is not None else "–",
        _pair(s.best.top1, s.best.top5),
        _pair(s.final.top1, s.final.top5) if s.final else "–",
        f"{s.gain:+.1f}" if s.gain is not None else "–",
    ]  # fmt: skip


def subject_header() -> list[str]:
    return ["backbone", "subject", "best l", "best top-1 / top-5", "final top-1 / top-5", "seeds"]


def subject_rows(s: BackboneSummary) -> list[list[str]]:
    """Per-subject rows at the backbone's best layer (mean ± sd over seeds)."""
    return [
        [s.backbone, sub.subject, s.best_label, _pair(sub.best_top1, sub.best_top5), _pair(sub.final_top1, sub.final_top5), str(sub.best_top1.n)]
        for sub in s.subjects
    ]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def spread_note(summaries: Sequence[BackboneSummary]) -> str:
    """One sentence on what the numbers are, for under a table."""
    n_subj = max((len(s.subjects) for s in summaries), default=0)
    n_seeds = max((s.n_seeds for s in summaries), default=0)
    spread = "sd over subjects of the seed means" if n_subj > 1 else "sd over seeds"
    return (
        f"Test accuracy in %, mean ± {spread}; {n_subj} subject(s), "
        f"up to {n_seeds} seed(s). Best layer chosen by validation top-1, never test. Gain = best − final top-1 (points)."
    )


def to_markdown(summaries: Sequence[BackboneSummary]) -> str:
    """Summary and per-subject tables for every dataset, fold and encoder."""
    parts = []
    for (dataset, fold), sec in sections(summaries).items():
        for encoder, group in by_encoder(sec).items():
            parts.append(f"### {dataset}, {FOLD_TITLES.get(fold, fold)}, encoder {encoder}\n")
            parts.append(markdown_table(summary_header(), [summary_cells(s) for s in group]))
            parts.append("\n" + spread_note(group) + "\n")
            parts.append("Per subject (mean ± sd over seeds):\n")
            parts.append(markdown_table(subject_header(), [row for s in group for row in subject_rows(s)]) + "\n")
    return "\n".join(parts)


def rich_tables(summaries: Sequence[BackboneSummary]) -> list[Any]:
    """The summary tables as rich Tables (one per dataset, fold and encoder), compact enough for 80 columns."""
    from rich import box
    from rich.table import Table

    tables = []
    header = ["backbone", "params", "blocks", "best l", "best\ntop-1/top-5", "final\ntop-1/top-5", "gain"]
    for (dataset, fold), sec in sections(summaries).items():
        for encoder, group in by_encoder(sec).items():
            t = Table(title=f"{dataset} · {FOLD_TITLES.get(fold, fold)} · {encoder}", caption=spread_note(group),
                      caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)  # fmt: skip
            for h in header:
                t.add_column(h, justify="left" if h == "backbone" else "right", no_wrap=True)
            for s in group:
                cells = summary_cells(s)
                final = f"{s.final.top1.fmt()}\n{s.final.top5.fmt()}" if s.final and s.final.top1.n else "–"
                t.add_row(*cells[:4], f"{s.best.top1.fmt()}\n{s.best.top5.fmt()}", final, cells[7])
            tables.append(t)
    return tables
