"""From run rows to the paper's tables: per backbone the best layer (chosen on validation), its test scores, the final layer's.

Aggregation everywhere: the mean over seeds within a subject, then the mean and
sample sd over subjects (with a single subject, the sd is over its seeds).
The best layer is the one with the highest validation top-1 aggregated that
way; the test set is only scored, never used to choose. Intra-subject and
leave-one-subject-out results (`fold`) and datasets are kept apart, and so are
runs whose settings differ (`SETTING_COLUMNS`: channels, window, lr, ...): each
setting is its own section, titled by the columns that differ. A diverged run
is left out of every mean and counted; a layer whose features are constant,
near-constant or non-finite is flagged and never chosen.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sa.errors import SAError
from sa.train.results import FEATURE_FLAGS, SETTING_COLUMNS, STATUS_DIVERGED

Row = Mapping[str, Any]
NOT_RECORDED = "not recorded"
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
    """One (pool, layer) of a backbone: test top-1/top-5 and validation top-1, aggregated over seeds and subjects.

    `flag` names degenerate features (constant, near-constant, non-finite): such a layer is never chosen.
    `diverged` counts its runs left out of the means because they diverged.
    """

    pool: str
    layer: str
    depth: float | None
    top1: Stat
    top5: Stat
    val_top1: Stat
    flag: str | None = None
    diverged: int = 0

    @property
    def name(self) -> str:
        return f"{self.pool}/{self.layer}" if self.pool else self.layer


EMPTY = Stat(math.nan, math.nan, 0)
# What `best` holds when no layer can be chosen (all diverged or degenerate): every cell prints as '–'.
NO_LAYER = LayerScore("", "–", None, EMPTY, EMPTY, EMPTY)


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
    """The paper's table row for one backbone (and encoder) in one dataset, fold and setting."""

    dataset: str
    fold: str
    encoder: str
    backbone: str
    params: int | None
    n_blocks: int | None
    layers: list[LayerScore]
    best: LayerScore  # NO_LAYER when no layer can be chosen
    final: LayerScore | None
    subjects: list[SubjectScore] = field(default_factory=list)
    n_seeds: int = 0
    variant: tuple[tuple[str, str], ...] = ()  # the setting columns that differ within the dataset and fold

    @property
    def chosen(self) -> bool:
        """Whether a best layer could be chosen (some layer has healthy features and non-diverged runs)."""
        return self.best is not NO_LAYER

    @property
    def gain(self) -> float | None:
        """Best-layer minus final-layer test top-1, in percentage points."""
        if not self.chosen or self.final is None or self.final.top1.n == 0 or self.best.top1.n == 0:
            return None
        return self.best.top1.mean - self.final.top1.mean

    @property
    def best_label(self) -> str:
        """The best layer's label, with its pool when the backbone was swept over several pools."""
        pools = {ls.pool for ls in self.layers}
        return f"{self.best.pool}/{self.best.layer}" if len(pools) > 1 and self.chosen else self.best.layer

    @property
    def variant_label(self) -> str:
        """'lr=0.001, channels=all' for the settings that set this summary apart; '' when nothing differs."""
        return ", ".join(f"{k}={v}" for k, v in self.variant)

    @property
    def flagged(self) -> list[LayerScore]:
        """Layers (and the final layer) whose features are degenerate."""
        return [ls for ls in self.layers + ([self.final] if self.final else []) if ls.flag]

    @property
    def n_diverged(self) -> int:
        """Runs left out because they diverged."""
        return sum(ls.diverged for ls in self.layers + ([self.final] if self.final else []))


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


def _diverged(row: Row) -> bool:
    return row.get("status") == STATUS_DIVERGED


def _score(pool: str, layer: str, rows: Sequence[Row]) -> LayerScore:
    """A layer's aggregate over its runs that did not diverge; flagged when any run saw degenerate features."""
    ok = [r for r in rows if not _diverged(r)]
    flag = next((str(r["status"]) for r in rows if r.get("status") in FEATURE_FLAGS), None)
    return LayerScore(
        pool, layer, _depth(rows, layer) if layer != "final" else None,
        seeds_then_subjects(ok, "top1"), seeds_then_subjects(ok, "top5"), seeds_then_subjects(ok, "val_top1"),
        flag, len(rows) - len(ok),
    )  # fmt: skip


def _seed_stat(rows: Sequence[Row], column: str) -> Stat:
    return _mean_sd([float(r[column]) for r in rows if _finite(r.get(column))], "seeds")


def _first(rows: Sequence[Row], column: str) -> Any:
    return next((r[column] for r in rows if _finite(r.get(column))), None)


def summarize_backbone(rows: Sequence[Row], variant: tuple[tuple[str, str], ...] = (),
                       backbone: str | None = None) -> BackboneSummary:
    """Summarize the runs of one (dataset, fold, setting, encoder, backbone): the best layer by validation top-1
    among layers with healthy features, and the final layer."""
    by_layer: dict[tuple[str, str], list[Row]] = defaultdict(list)
    final_rows: list[Row] = []
    for r in rows:
        if str(r["layer"]) == "final":
            final_rows.append(r)
        elif str(r["layer"]).startswith("mix"):  # a learned mix of layers is not a layer to choose (docs/mix.md)
            continue
        else:
            by_layer[(str(r.get("pool") or ""), str(r["layer"]))].append(r)
    head = rows[0]
    label = backbone or str(head["backbone"])
    name = f"{label} ({head['encoder']}, {head['dataset']}, {head['fold']})"
    if not by_layer:
        raise SAError(f"runs.csv has only final-layer runs for {name}; sweep intermediate layers (`sa sweep --layers all`).")
    layers = [_score(p, lyr, by_layer[(p, lyr)]) for p, lyr in sorted(by_layer, key=lambda k: _layer_sort_key(*k))]
    scored = [ls for ls in layers if ls.val_top1.n > 0]
    unusable = any(ls.flag or ls.diverged for ls in layers)
    if not scored and not unusable:
        raise SAError(f"runs.csv has no val_top1 for {name}; the best layer is chosen on validation, so rerun with a validation split.")
    eligible = [ls for ls in scored if not ls.flag]
    best = max(eligible, key=lambda ls: ls.val_top1.mean) if eligible else NO_LAYER  # max keeps the shallowest of ties
    final = _score(str(final_rows[0].get("pool") or ""), "final", final_rows) if final_rows else None
    best_rows = [r for r in by_layer.get((best.pool, best.layer), []) if not _diverged(r) and _finite(r.get("top1"))]
    finals = [r for r in final_rows if not _diverged(r) and _finite(r.get("top1"))]
    subjects = []
    for subj in sorted({str(r["subject"]) for r in best_rows}):
        b = [r for r in best_rows if str(r["subject"]) == subj]
        f = [r for r in finals if str(r["subject"]) == subj]
        subjects.append(SubjectScore(
            subj, _seed_stat(b, "top1"), _seed_stat(b, "top5"),
            _seed_stat(f, "top1") if f else None, _seed_stat(f, "top5") if f else None,
        ))  # fmt: skip
    return BackboneSummary(
        dataset=str(head["dataset"]), fold=str(head["fold"]), encoder=str(head["encoder"]), backbone=label,
        params=_first(rows, "backbone_params"), n_blocks=_first(rows, "n_blocks"), layers=layers, best=best,
        final=final, subjects=subjects, n_seeds=len({r["seed"] for r in best_rows}), variant=variant,
    )  # fmt: skip


def _cell(value: Any) -> str:
    """A setting's value as a label ('not recorded' for a cell an older runs.csv lacks)."""
    if value is None:
        return NOT_RECORDED
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


# The setting columns a section is split by (cache_key differs between backbones by nature: it splits a backbone only).
VARIANT_COLUMNS = tuple(c for c in SETTING_COLUMNS if c != "cache_key")


def varying_settings(rows: Iterable[Row]) -> list[str]:
    """The setting columns that take more than one value among rows."""
    rows = list(rows)
    return [c for c in VARIANT_COLUMNS if len({_cell(r.get(c)) for r in rows}) > 1]


def summarize(runs: Iterable[Row]) -> list[BackboneSummary]:
    """One summary per (dataset, fold, setting, encoder, backbone), ordered by dataset, fold (intra first), setting,
    encoder, parameters.

    Runs that differ in a setting column are never averaged together: each setting is its own group, labelled
    by the columns that differ (`BackboneSummary.variant`). A backbone extracted twice (two cache keys, e.g.
    other weights) is two rows, named with the key. A run id written twice counts once (the last row).
    """
    unique = [r for r in {str(r["run_id"]): r for r in runs}.values() if not str(r["layer"]).startswith("mix")]
    by_fold: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in unique:
        by_fold[(str(r["dataset"]), str(r["fold"]))].append(r)
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for (dataset, fold), rows in by_fold.items():
        columns = varying_settings(rows)
        for r in rows:
            variant = tuple((c, _cell(r.get(c))) for c in columns)
            groups[(dataset, fold, variant, str(r["encoder"]), str(r["backbone"]))].append(r)
    out = []
    for (dataset, fold, variant, encoder, backbone), rows in groups.items():
        keys = sorted({str(r.get("cache_key")) for r in rows})
        for key in keys:
            part = [r for r in rows if str(r.get("cache_key")) == key] if len(keys) > 1 else rows
            label = f"{backbone} [{key.rsplit('/', 1)[-1]}]" if len(keys) > 1 else backbone
            out.append(summarize_backbone(part, variant, label))
    fold_order = {"intra": 0, "loso": 1}
    width = defaultdict(int)  # encoders run on more backbones (the main sweep) come first
    for s in out:
        width[(s.dataset, s.fold, s.variant, s.encoder)] += 1
    return sorted(out, key=lambda s: (
        s.dataset, fold_order.get(s.fold, 2), s.fold, s.variant, -width[(s.dataset, s.fold, s.variant, s.encoder)],
        s.encoder, s.params or 0, s.backbone,
    ))  # fmt: skip


def sections(summaries: Iterable[BackboneSummary]) -> dict[tuple[str, str, str], list[BackboneSummary]]:
    """Summaries split by (dataset, fold, setting label), order kept."""
    out: dict[tuple[str, str, str], list[BackboneSummary]] = {}
    for s in summaries:
        out.setdefault((s.dataset, s.fold, s.variant_label), []).append(s)
    return out


def section_title(dataset: str, fold: str, variant: str = "") -> str:
    """'things-eeg2, intra-subject' plus ', lr=0.001' when the section is one of several settings."""
    return f"{dataset}, {FOLD_TITLES.get(fold, fold)}" + (f", {variant}" if variant else "")


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
    """One sentence on what the numbers are, for under a table (subjects and seeds that have a result)."""
    n_subj = max((len(s.subjects) for s in summaries), default=0)
    n_seeds = max((s.n_seeds for s in summaries), default=0)
    spread = "sd over subjects of the seed means" if n_subj > 1 else "sd over seeds"
    return (
        f"Test accuracy in %, mean ± {spread}; {n_subj} subject(s), "
        f"up to {n_seeds} seed(s). Best layer chosen by validation top-1, never test. Gain = best − final top-1 (points)."
    )


def flag_notes(summaries: Sequence[BackboneSummary]) -> list[str]:
    """One sentence per backbone with degenerate layers, diverged runs, or no layer that could be chosen."""
    notes = []
    for s in summaries:
        flagged = s.flagged
        if flagged:
            kinds = []
            for kind in FEATURE_FLAGS:
                names = [ls.name for ls in flagged if ls.flag == kind]
                if names:
                    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
                    kinds.append(f"{kind.replace('-features', '')}: {shown}")
            notes.append(f"{s.backbone} ({s.encoder}): layers with degenerate features ({'; '.join(kinds)}) are never "
                         "chosen (a random-init backbone, an fp16 underflow or a dead stage looks like this; check the "
                         "cache or the weights).")
        if s.n_diverged:
            notes.append(f"{s.backbone} ({s.encoder}): {s.n_diverged} run(s) diverged (loss or temperature not finite); "
                         "they are left out of every mean, not counted as 0 % (lower --lr).")
        if not s.chosen:
            notes.append(f"{s.backbone} ({s.encoder}): no layer can be chosen: every layer diverged or has "
                         "degenerate features.")
    return notes


def to_markdown(summaries: Sequence[BackboneSummary]) -> str:
    """Summary and per-subject tables for every dataset, fold, setting and encoder."""
    parts = []
    for (dataset, fold, variant), sec in sections(summaries).items():
        for encoder, group in by_encoder(sec).items():
            parts.append(f"### {section_title(dataset, fold, variant)}, encoder {encoder}\n")
            parts.append(markdown_table(summary_header(), [summary_cells(s) for s in group]))
            parts.append("\n" + spread_note(group) + "\n")
            parts += [f"Note: {n}\n" for n in flag_notes(group)]
            parts.append("Per subject (mean ± sd over seeds):\n")
            parts.append(markdown_table(subject_header(), [row for s in group for row in subject_rows(s)]) + "\n")
    return "\n".join(parts)


def rich_tables(summaries: Sequence[BackboneSummary]) -> list[Any]:
    """The summary tables as rich Tables (one per dataset, fold, setting and encoder), compact enough for 80 columns."""
    from rich import box
    from rich.table import Table

    tables = []
    header = ["backbone", "params", "blocks", "best l", "best\ntop-1/top-5", "final\ntop-1/top-5", "gain"]
    for (dataset, fold, variant), sec in sections(summaries).items():
        for encoder, group in by_encoder(sec).items():
            title = " · ".join([dataset, FOLD_TITLES.get(fold, fold), encoder] + ([variant] if variant else []))
            caption = "\n".join([spread_note(group)] + [f"Note: {n}" for n in flag_notes(group)])
            t = Table(title=title, caption=caption, caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                      show_edge=False, collapse_padding=True)  # fmt: skip
            for h in header:
                t.add_column(h, justify="left" if h == "backbone" else "right", no_wrap=True)
            for s in group:
                cells = summary_cells(s)
                final = f"{s.final.top1.fmt()}\n{s.final.top5.fmt()}" if s.final and s.final.top1.n else "–"
                t.add_row(*cells[:4], f"{s.best.top1.fmt()}\n{s.best.top5.fmt()}", final, cells[7])
            tables.append(t)
    return tables
