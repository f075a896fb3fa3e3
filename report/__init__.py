"""Reporting: figures and results.md from a results folder (runs.csv, curves.csv).

`write_report(results)` draws the per-layer curves, best vs final bars, the
scaling scatter, the encoder grid and loss curves, and writes the tables; the
numbers come from `sa.train.summary`, so the report and the sweep never disagree.
"""

from __future__ import annotations

from sa._lazy import lazy_exports

_WHERE = {"write_report": "sa.report.figures", "Report": "sa.report.figures",
          "run_rsa": "sa.report.rsa", "time_resolved_rsa": "sa.report.rsa", "RSAResult": "sa.report.rsa"}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
