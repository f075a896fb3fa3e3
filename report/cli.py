"""`sa report`: figures and tables from a results folder (a thin wrapper over sa.report.figures.write_report)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sa.clikit import console, friendly


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


def register(app: typer.Typer) -> None:
    """Add `sa report` to the root app."""
    app.command("report")(friendly(report))
