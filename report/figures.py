"""`sa report`: the paper's figures and tables from a results folder (runs.csv, curves.csv).

Per dataset and fold (intra-subject and LOSO apart) and per brain encoder:
per-layer top-1 against relative depth, best vs final layer bars, the scaling
plot (top-1 against log10 parameters, with Pearson r), per-layer loss curves;
per dataset and fold: the encoder x backbone heat map. `results.md` holds the
tables and links the PNGs. Best layers are always chosen on validation top-1.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from sa.errors import SAError
from sa.report.plotting import STYLE, _plt, _save, _slug  # noqa: F401  (also imported from here)
from sa.train.results import SETTING_COLUMNS, STATUS_DIVERGED, ResultsDir, require_runs
from sa.train.summary import (
    NOT_RECORDED,
    BackboneSummary,
    _cell,
    ScalingFit,
    by_encoder,
    encoder_grid,
    flag_notes,
    fmt_params,
    markdown_table,
    scaling_fit,
    section_title,
    sections,
    spread_note,
    subject_header,
    subject_rows,
    summarize,
    summary_cells,
    summary_header,
)

BEST_COLOR, FINAL_COLOR = "#1f77b4", "#7f7f7f"


@dataclass
class Report:
    """What `write_report` produced: the folder, the markdown file, every PNG, and the summaries behind them."""

    out: Path
    markdown: Path
    figures: list[Path] = field(default_factory=list)
    summaries: list[BackboneSummary] = field(default_factory=list)


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(max_cols, n)
    return math.ceil(n / cols), cols


def _context(dataset: str, fold: str, encoder: str | None = None, variant: str = "") -> str:
    enc = f", encoder {encoder}" if encoder else ""
    return f"{section_title(dataset, fold, variant)}{enc}"


# -- (1) per-layer curves ----------------------------------------------------------------


def plot_layers(group: Sequence[BackboneSummary], path: Path) -> Path:
    """One panel per backbone: test top-1 (mean ± sd band) against relative depth, best layer starred, final layer dashed."""
    plt = _plt()
    rows, cols = _grid(len(group))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(max(5.5, 3.3 * cols + 0.4), 2.7 * rows + 0.9), sharey=True, squeeze=False, layout="constrained")
        for ax in axes.flat[len(group):]:
            ax.set_visible(False)
        ymax = 0.0
        for ax, s in zip(axes.flat, group):
            pools = list(dict.fromkeys(ls.pool for ls in s.layers))
            for i, pool in enumerate(pools):
                pts = [ls for ls in s.layers if ls.pool == pool and ls.depth is not None and ls.top1.n > 0]
                x = np.array([ls.depth for ls in pts])
                m = np.array([ls.top1.mean for ls in pts])
                sd = np.nan_to_num(np.array([ls.top1.sd for ls in pts]))
                color = f"C{i}" if len(pools) > 1 else BEST_COLOR
                label = f"layer ({pool} pool)" if len(pools) > 1 else "layer, mean ± sd"
                ax.fill_between(x, m - sd, m + sd, color=color, alpha=0.2, linewidth=0)
                ax.plot(x, m, "-o", color=color, markersize=3, linewidth=1.5, label=label)
                ymax = max(ymax, float(np.max(m + sd)) if m.size else 0.0)
            bad = [ls for ls in s.layers if ls.flag and ls.depth is not None]
            if bad:
                ax.plot([ls.depth for ls in bad], [ls.top1.mean if ls.top1.n else 0.0 for ls in bad], marker="x",
                        markersize=7, color="#8c564b", linestyle="none", label="degenerate features (never chosen)")
            if s.best.depth is not None:
                ax.plot([s.best.depth], [s.best.top1.mean], marker="*", markersize=13, color="#d62728", linestyle="none",
                        label="best layer (by validation)", zorder=5)  # fmt: skip
            if s.final is not None and s.final.top1.n > 0:
                ax.axhline(s.final.top1.mean, color=FINAL_COLOR, linestyle="--", linewidth=1.3, label="final layer")
                ymax = max(ymax, s.final.top1.mean)
            ax.set_title(f"{s.backbone} ({fmt_params(s.params)}, {s.n_blocks} blocks)")
        for ax in axes[-1]:
            ax.set_xlabel("relative depth (l−1)/(L−1)")
        for ax in axes[:, 0]:
            ax.set_ylabel("test top-1 (%)")
        axes[0, 0].set_ylim(0, min(100.0, ymax * 1.1 + 1))
        seen: dict[str, Any] = {}
        for ax in axes.flat[: len(group)]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(lab, h)
        handles, labels = list(seen.values()), list(seen)
        s0 = group[0]
        fig.suptitle(f"Per-layer test top-1 — {_context(s0.dataset, s0.fold, s0.encoder, s0.variant_label)}")
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels) if cols > 1 else 2, frameon=False)
        return _save(fig, path)


# -- (2) best vs final bars -----------------------------------------------------------------


def plot_best_vs_final(group: Sequence[BackboneSummary], path: Path) -> Path:
    """Grouped bars per backbone: best layer vs final layer, top-1 and top-5 panels, sd error bars."""
    plt = _plt()
    x = np.arange(len(group))
    width = 0.38
    with plt.rc_context({**STYLE, "axes.grid.axis": "y"}):
        fig, axes = plt.subplots(1, 2, figsize=(max(7.5, 1.2 * len(group) + 3), 4.4), sharey=True, layout="constrained")
        for ax, metric in zip(axes, ("top1", "top5")):
            best = [getattr(s.best, metric) for s in group]
            final = [getattr(s.final, metric) if s.final else None for s in group]
            bm = [b.mean for b in best]
            fm = [f.mean if f else np.nan for f in final]
            err_kw = {"capsize": 3, "error_kw": {"elinewidth": 1}}
            ax.bar(x - width / 2, bm, width, yerr=_yerr([b.sd for b in best]), color=BEST_COLOR,
                   label="best layer (chosen on validation)", **err_kw)  # fmt: skip
            ax.bar(x + width / 2, fm, width, yerr=_yerr([f.sd if f else np.nan for f in final]), color=FINAL_COLOR,
                   label="final layer", **err_kw)  # fmt: skip
            for xi, b, f in zip(x, bm, fm):  # values written inside the bars' feet, clear of the error bars
                for dx, v in ((-width / 2, b), (width / 2, f)):
                    if np.isfinite(v) and v >= 8:
                        ax.text(xi + dx, 1.5, f"{v:.0f}", ha="center", va="bottom", fontsize=7.5, color="white")
            ax.set_xticks(x, [s.backbone for s in group], rotation=35, ha="right")
            ax.set_title(f"test {'top-1' if metric == 'top1' else 'top-5'}")
            ax.set_ylim(0, 105)
        axes[0].set_ylabel("accuracy (%)")
        s0 = group[0]
        fig.suptitle(f"Best vs final layer — {_context(s0.dataset, s0.fold, s0.encoder, s0.variant_label)}")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False)
        return _save(fig, path)


def _yerr(sds: Sequence[float]) -> list[float] | None:
    """Error bar half-lengths, or None (no bars) when no sd is known (a single subject and seed)."""
    return None if all(np.isnan(v) for v in sds) else [float(np.nan_to_num(v)) for v in sds]


# -- (3) scaling -----------------------------------------------------------------------------


def scaling_fits(group: Sequence[BackboneSummary]) -> tuple[ScalingFit | None, ScalingFit | None]:
    """Regressions of best-layer and final-layer test top-1 on log10(parameters) (None below 3 backbones)."""
    params = [float(s.params) if s.params else np.nan for s in group]
    best = scaling_fit(params, [s.best.top1.mean for s in group])
    final = scaling_fit(params, [s.final.top1.mean if s.final else np.nan for s in group])
    return best, final


def _log_limits(log_x: Sequence[float]) -> tuple[float, float]:
    """x limits in log10 units around the points, at least half a decade wide."""
    lo, hi = min(log_x), max(log_x)
    pad = max(0.15, 0.08 * (hi - lo), (0.5 - (hi - lo)) / 2)
    return lo - pad, hi + pad


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Round parameter counts (1, 2, 3, 5 x 10^k) inside [10^lo, 10^hi]: the sparsest set giving at least 3 ticks."""
    for mults in ((1,), (1, 3), (1, 2, 5), (1, 2, 3, 5)):
        ticks = [m * 10.0**k for k in range(math.floor(lo), math.ceil(hi) + 1) for m in mults if lo <= math.log10(m * 10.0**k) <= hi]
        if len(ticks) >= 3:
            return ticks
    return ticks


def _fit_text(fit: ScalingFit | None, n: int) -> str:
    if fit is None:
        return f"regression needs ≥ 3 backbones with different sizes (have {n})"
    return f"r = {fit.r:.2f}, p = {fit.p:.2g}"


def plot_scaling(group: Sequence[BackboneSummary], path: Path) -> Path:
    """Best-layer (and final-layer) test top-1 against log10 parameter count, with regression lines and Pearson r, p."""
    plt = _plt()
    fits = scaling_fits(group)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8.2, 4.8), layout="constrained")
        n = sum(1 for s in group if s.params)
        all_x: list[float] = []
        for which, fit, color, marker in (("best", fits[0], BEST_COLOR, "o"), ("final", fits[1], FINAL_COLOR, "s")):
            pts = [(s, s.best if which == "best" else s.final) for s in group if s.params]
            pts = [(s, ls) for s, ls in pts if ls is not None and ls.top1.n > 0]
            if not pts:
                continue
            lx = np.log10([s.params for s, _ in pts])
            y = np.array([ls.top1.mean for _, ls in pts])
            label = f"{which} layer" + (f": r = {fit.r:.2f}, p = {fit.p:.2g}" if fit else "")
            ax.errorbar(lx, y, yerr=_yerr([ls.top1.sd for _, ls in pts]), fmt=marker, color=color, capsize=3,
                        markersize=6, label=label)  # fmt: skip
            all_x.extend(lx)
            if fit is not None:
                xs = np.linspace(lx.min() - 0.1, lx.max() + 0.1, 50)
                ax.plot(xs, fit.intercept + fit.slope * xs, color=color, linewidth=1.3, linestyle="-" if which == "best" else "--")
            if which == "best":
                order = np.argsort(lx)  # neighbours in x get labels on alternating sides
                for k, i in enumerate(order):
                    up = k % 2 == 0
                    ax.annotate(pts[i][0].backbone, (lx[i], y[i]), xytext=(6, 7 if up else -12), textcoords="offset points",
                                fontsize=8, va="bottom" if up else "top")  # fmt: skip
        if all_x:
            lo, hi = _log_limits(all_x)
            ax.set_xlim(lo, hi)
            ticks = _log_ticks(lo, hi)
            ax.set_xticks(np.log10(ticks), [fmt_params(int(t)) for t in ticks])
        if fits[0] is None:
            ax.text(0.02, 0.03, _fit_text(None, n), transform=ax.transAxes, fontsize=9, color="0.35")
        ax.set_xlabel("backbone parameters (log10 scale)")
        ax.set_ylabel("test top-1 (%)")
        ax.set_ylim(0, 100)
        s0 = group[0]
        ax.set_title(f"Scaling — {_context(s0.dataset, s0.fold, s0.encoder, s0.variant_label)} ({n} backbone{'s' if n != 1 else ''})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        return _save(fig, path)


# -- (4) encoder x backbone heat map --------------------------------------------------------


def plot_encoder_grid(section: Sequence[BackboneSummary], path: Path) -> Path:
    """Encoders x backbones heat map of best-layer test top-1 (each encoder's own best layer), cells annotated, plus a mean column."""
    plt = _plt()
    encoders, backbones, grid = encoder_grid(section)
    with np.errstate(all="ignore"):
        means = np.array([np.nanmean(r) if np.isfinite(r).any() else np.nan for r in grid])[:, None]
    full = np.hstack([grid, means])
    cols = backbones + ["mean"]
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, ax = plt.subplots(figsize=(max(6.0, 0.95 * len(cols) + 2.6), max(3.2, 0.6 * len(encoders) + 2.0)), layout="constrained")
        finite = full[np.isfinite(full)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
        vmax = vmax if vmax > vmin else vmin + 1
        cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
        im = ax.imshow(np.ma.masked_invalid(full), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(full.shape[0]):
            for j in range(full.shape[1]):
                v = full[i, j]
                bright = np.isfinite(v) and (v - vmin) / (vmax - vmin) > 0.6
                ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.1f}", ha="center", va="center", fontsize=9,
                        color="black" if bright or not np.isfinite(v) else "white",
                        fontweight="bold" if j == full.shape[1] - 1 else "normal")  # fmt: skip
        ax.axvline(len(backbones) - 0.5, color="white", linewidth=3)
        ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right")
        ax.set_yticks(range(len(encoders)), encoders)
        ax.set_xlabel("backbone (by parameter count)")
        ax.set_ylabel("brain encoder")
        cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
        cb.set_label("best-layer test top-1 (%)")
        s0 = section[0]
        ax.set_title(f"Encoder × backbone: best-layer test top-1\n{_context(s0.dataset, s0.fold, None, s0.variant_label)}")
        return _save(fig, path)


# -- (5) loss curves ----------------------------------------------------------------------------


def _mean_curves(runs: Sequence[Mapping[str, Any]], curves: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], dict[str, np.ndarray]]:
    """(backbone, pool, layer) -> epochs, mean train loss and mean val loss over the runs' seeds and subjects."""
    key_of = {r["run_id"]: (str(r["backbone"]), str(r.get("pool") or ""), str(r["layer"])) for r in runs}
    acc: dict[tuple[str, str, str], dict[int, list[list[float]]]] = defaultdict(lambda: defaultdict(lambda: [[], []]))
    for c in curves:
        key = key_of.get(c["run_id"])
        if key is None or c["epoch"] is None:
            continue
        slot = acc[key][int(c["epoch"])]
        if c["train_loss"] is not None:
            slot[0].append(c["train_loss"])
        if c["val_loss"] is not None:
            slot[1].append(c["val_loss"])
    out = {}
    for key, per_epoch in acc.items():
        epochs = np.array(sorted(per_epoch))
        mean = lambda vals: float(np.mean(vals)) if vals else np.nan  # noqa: E731
        out[key] = {
            "epoch": epochs,
            "train": np.array([mean(per_epoch[e][0]) for e in epochs]),
            "val": np.array([mean(per_epoch[e][1]) for e in epochs]),
        }
    return out


def plot_loss_curves(group: Sequence[BackboneSummary], runs: Sequence[Mapping[str, Any]], curves: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """One panel per backbone: per-epoch train (solid) and validation (dashed) loss per layer, coloured by relative depth."""
    plt = _plt()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    means = _mean_curves(runs, curves)
    panels = [s for s in group if any(k[0] == s.backbone for k in means)]
    if not panels:
        return None
    rows, cols = _grid(len(panels), 3)
    cmap, norm = plt.get_cmap("viridis"), Normalize(0.0, 1.0)
    with plt.rc_context(STYLE):
        width = 6.6 if cols == 1 else 3.6 * cols + 1.2  # a lone panel gets room for its 2 x layers lines
        fig, axes = plt.subplots(rows, cols, figsize=(width, 2.8 * rows + 1.6 - 0.4 * (rows > 1)), squeeze=False, layout="constrained")
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for ax, s in zip(axes.flat, panels):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            for ls in s.layers + ([s.final] if s.final else []):
                c = means.get((s.backbone, ls.pool, ls.layer))
                if c is None:
                    continue
                color = "black" if ls.layer == "final" else cmap(norm(min(1.0, max(0.0, ls.depth if ls.depth is not None else 0.0))))
                ax.plot(c["epoch"], c["train"], color=color, linewidth=1.1)
                ax.plot(c["epoch"], c["val"], color=color, linewidth=1.1, linestyle="--")
            ax.set_title(f"{s.backbone} ({fmt_params(s.params)})")
        for ax in axes.flat[: len(panels)]:
            ax.set_xlabel("epoch")
            ax.set_ylabel("contrastive loss")
        fig.colorbar(ScalarMappable(norm, cmap), ax=axes, shrink=min(1.0, 0.5 + 0.25 * rows), aspect=30).set_label("relative depth of the layer")
        legend = [Line2D([], [], color="0.3", label="train"), Line2D([], [], color="0.3", linestyle="--", label="validation"),
                  Line2D([], [], color="black", label="final layer")]  # fmt: skip
        s0 = group[0]
        fig.suptitle(f"Loss per epoch and layer — {_context(s0.dataset, s0.fold, s0.encoder, s0.variant_label)}\n(mean over seeds and subjects)")
        fig.legend(handles=legend, loc="outside lower center", ncol=3, frameon=False)
        return _save(fig, path)


# -- the report --------------------------------------------------------------------------------


def _fits_line(group: Sequence[BackboneSummary]) -> str:
    best, final = scaling_fits(group)
    n = sum(1 for s in group if s.params)
    if best is None:
        return f"Scaling: {_fit_text(None, n)}."
    return f"Scaling (top-1 on log10 parameters, {n} backbones): best layer {_fit_text(best, n)}; final layer {_fit_text(final, n)}."


def _grid_markdown(section: Sequence[BackboneSummary]) -> str:
    encoders, backbones, grid = encoder_grid(section)
    rows = [[enc] + ["–" if not np.isfinite(v) else f"{v:.1f}" for v in row] for enc, row in zip(encoders, grid)]
    return markdown_table(["encoder"] + backbones, rows)


def prepare_folder(out_dir: Path) -> None:
    """Create the report folder and prove it can be written (before any plotting); drop a stale results.md.

    results.md is written last, so a report cut short never leaves an older complete-looking one beside new PNGs.
    """
    import tempfile

    if out_dir.exists() and not out_dir.is_dir():
        raise SAError(f"report folder {out_dir} is a file; give a folder with --out (it will hold PNGs and results.md).")
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".sa-probe-", dir=out_dir)
    os.close(fd)
    os.unlink(probe)
    (out_dir / "results.md").unlink(missing_ok=True)


def _write_atomic(path: Path, text: str) -> None:
    """Write text to a temporary file beside `path`, then rename it into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def legacy_note(missing: Sequence[str]) -> str | None:
    """What is assumed when runs.csv was written by an older sa without some setting columns."""
    settings = [c for c in missing if c in SETTING_COLUMNS or c in ("status", "precision")]
    if not settings:
        return None
    return (f"This runs.csv was written by an older sa without the column(s) {', '.join(settings)}: its rows are "
            f"assumed to share one value of each (shown as '{NOT_RECORDED}'), and runs with a missing status are "
            "taken as finished normally; runs written since are grouped apart from them.")


def write_report(results: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *, progress: bool = True) -> Report:
    """Write the PNGs and results.md for a results folder into `out` (default `<results>/report`); return what was written."""
    from sa.progress import make_progress

    rd = ResultsDir(results)
    runs = require_runs(rd)
    curves = rd.curves()
    summaries = summarize(runs)
    out_dir = Path(out) if out is not None else rd.path / "report"
    prepare_folder(out_dir)
    report = Report(out_dir, out_dir / "results.md", summaries=summaries)
    md = [
        "# Shallow Alignment results\n",
        f"From `{rd.runs_path}` ({len(runs)} runs), written {datetime.now(timezone.utc).isoformat(timespec='seconds')}. "
        "Accuracies in %. Best layers are chosen by validation top-1 (held-out training concepts); "
        "the test set is only scored. Runs that differ in any setting (channels, window, learning rate, ...) are "
        "never averaged together: each setting is its own section.\n",
    ]
    note = legacy_note(rd.missing_columns())
    if note:
        md.append(f"Note: {note}\n")
    secs = sections(summaries)
    jobs: list[tuple[str, Callable[[], Path | None]]] = []
    for (dataset, fold, variant), sec in secs.items():
        multi = len(by_encoder(sec)) > 1
        base = f"{_slug(dataset)}-{fold}" + (f"-{_slug(variant)}" if variant else "")
        md.append(f"## {section_title(dataset, fold, variant)}\n")
        for encoder, group in by_encoder(sec).items():
            stem = f"{base}-{_slug(encoder)}" if multi else base
            names = {k: out_dir / f"{stem}-{k}.png" for k in ("layers", "best-vs-final", "scaling", "loss-curves")}
            md += [f"### Encoder {encoder}\n", markdown_table(summary_header(), [summary_cells(s) for s in group]),
                   "", spread_note(group), "", _fits_line(group), ""]  # fmt: skip
            md += [f"Note: {n}\n" for n in flag_notes(group)]
            fold_runs = [r for r in runs if (str(r["dataset"]), str(r["fold"])) == (dataset, fold)]
            jobs += [
                ("layers", lambda g=group, p=names["layers"]: plot_layers(g, p)),
                ("best-vs-final", lambda g=group, p=names["best-vs-final"]: plot_best_vs_final(g, p)),
                ("scaling", lambda g=group, p=names["scaling"]: plot_scaling(g, p)),
                ("loss-curves", lambda g=group, r=_runs_of(fold_runs, group), p=names["loss-curves"]: plot_loss_curves(g, r, curves, p)),
            ]
            for kind, p in names.items():
                md.append(f"![{kind}, {encoder}]({p.name})")
            md += ["", "Per subject, at each backbone's best layer (mean ± sd over seeds):", "",
                   markdown_table(subject_header(), [row for s in group for row in subject_rows(s)]), ""]  # fmt: skip
        grid_png = out_dir / f"{base}-encoders.png"
        jobs.append(("encoders", lambda s=sec, p=grid_png: plot_encoder_grid(s, p)))
        md += ["### Encoder × backbone (best-layer test top-1)\n", _grid_markdown(sec), "", f"![encoder x backbone]({grid_png.name})", ""]
    from sa.report.mix import mix_section

    mix_md, mix_jobs = mix_section(rd, runs, out_dir)  # learned layer weights of --layers mix runs, if any
    md += mix_md
    jobs += mix_jobs
    from sa.report.analyses import analyses_section

    more_md, more_jobs = analyses_section(rd, runs, summaries, out_dir, _runs_of)  # issue 17: concepts, UMAP, RSA
    md += more_md
    jobs += more_jobs
    with make_progress("plot", disable=not progress) as bar:
        task = bar.add_task("plotting", total=len(jobs))
        for kind, job in jobs:
            bar.update(task, description=f"plotting {kind}")
            path = job()
            if path is not None:
                report.figures.append(path)
            bar.advance(task)
    written = {p.name for p in report.figures}
    text = "\n".join(line for line in md if not (line.startswith("![") and line[line.rfind("(") + 1 : -1] not in written))
    _write_atomic(report.markdown, text + "\n")
    return report


def _runs_of(fold_runs: Sequence[Mapping[str, Any]], group: Sequence[BackboneSummary]) -> list[Mapping[str, Any]]:
    """The runs behind a group's summaries (same encoder and setting; backbone named as the summary names it), for
    the loss curves; diverged runs are left out. `fold_runs` are all runs of the group's dataset and fold."""
    from sa.train.summary import varying_settings

    columns = varying_settings(fold_runs)  # as summarize() split this fold
    variants = {s.variant for s in group}
    labels = {s.backbone for s in group}
    encoders = {s.encoder for s in group}
    out = []
    for r in fold_runs:
        if r.get("status") == STATUS_DIVERGED or str(r["encoder"]) not in encoders:
            continue
        if tuple((c, _cell(r.get(c))) for c in columns) not in variants:
            continue
        plain = str(r["backbone"])
        keyed = f"{plain} [{str(r.get('cache_key')).rsplit('/', 1)[-1]}]"
        label = keyed if keyed in labels else plain if plain in labels else None
        if label is not None:
            out.append({**r, "backbone": label})
    return out
