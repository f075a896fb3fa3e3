"""`sa report`: figures and tables from a results folder (a thin wrapper over sa.report.figures.write_report)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sa.clikit import (cache_option, console, data_option, friendly, images_option, layout_option, meta_option,
                       quiet_option)


def report(
    results: Path = typer.Argument(..., help="Results folder holding runs.csv (and curves.csv), as written by `sa sweep`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the PNGs and results.md (default: RESULTS/report)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the path of results.md (no tables, no progress)."),
) -> None:
    """Write the report: per-layer accuracy curves, best vs final layer bars, the scaling plot, the encoder x backbone heat map, per-layer loss curves (PNG) and results.md with the summary and per-subject tables.

    Intra-subject and leave-one-subject-out runs are reported apart. The best layer of each backbone is the one with the highest validation top-1 (mean over seeds, then subjects); its test accuracy is what is reported.
    """  # noqa: E501  (typer rewraps the help; one line per paragraph keeps it from breaking mid-sentence)
    from sa.report.figures import write_report
    from sa.train.summary import rich_tables

    rep = write_report(results, out, progress=not quiet)
    if quiet:
        console.print(str(rep.markdown), highlight=False, soft_wrap=True)
        return
    for table in rich_tables(rep.summaries):
        console.print(table)
    console.print(f"[green]wrote[/] {len(rep.figures)} figures and {rep.markdown}", highlight=False, soft_wrap=True)


def rsa(
    data: Path = data_option(),
    backbone: str = typer.Option(..., "--backbone", "-b", help="Cache key, unique prefix or alias of the backbone whose layers are compared."),
    subject: Optional[str] = typer.Option(None, "--subject", help="Subject whose test EEG is used (needed when the data hold several)."),
    cache: Optional[str] = cache_option(),
    layers: str = typer.Option("all", "--layers", help="all | final | 1,4,8 | every:4 (the final layer is always added)."),
    pool: str = typer.Option("auto", "--pool", help="Pooling: mean, cls or gap; auto = mean for token models, gap for CNNs."),
    channels: str = typer.Option("all", "--channels", help="Channels: all, occipital-parietal (the 17 of the paper) or a comma list of names."),
    window: Optional[str] = typer.Option(None, "--window", help="Time window 'tmin,tmax' in seconds (default: the whole epoch)."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Folder for rsa-<subject>-<backbone>.csv, its two PNGs and captions (.md); a results folder makes `sa report` include them."),
    layout: str = layout_option(), images: Optional[Path] = images_option(), meta: Optional[Path] = meta_option(),
    quiet: bool = quiet_option(),
) -> None:
    """Time-resolved RSA: each layer's RDM of the test images against the EEG's RDM at every time point.

    EEG RDMs are cross-validated Euclidean (crossnobis) distances across repetitions, layer RDMs correlation distances of the cached features, compared by Spearman r, with a split-half noise ceiling. Writes a layer x time heat map, each layer's peak latency, and the correlations as CSV.
    """  # noqa: E501
    from sa.report.rsa import captions, check_out, run_rsa, write_rsa

    check_out(out)
    res = run_rsa(data, backbone, subject=subject, cache=cache, layers=layers, pool=pool, channels=channels,
                  window=window, layout=layout, image_root=images, meta=meta)
    paths = write_rsa(res, out)
    if not quiet:
        for kind in ("heatmap", "peaks"):
            console.print(f"{paths[kind]}: {captions(res)[kind]}", highlight=False, soft_wrap=True)
        best = res.best_layer()
        t, r = res.peak(best)
        console.print(f"best layer {best}: Spearman r {r:.3f} at {t * 1000:.0f} ms", highlight=False)
    console.print(f"[green]wrote[/] {paths['csv']}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `sa report` and `sa rsa` to the root app."""
    app.command("report")(friendly(report))
    app.command("rsa")(friendly(rsa))
