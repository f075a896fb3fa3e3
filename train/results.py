"""The results table: `runs.csv` (one row per finished run) and `curves.csv` (per-epoch losses).

Both files are append-only CSV. A row is written with one `write` under an
exclusive file lock, then flushed and fsynced, so an interrupted sweep leaves
at most one torn last line; the next append cuts it off and readers skip it.
A rerun asks `existing_run_ids()` and skips those runs. Curves are written
before their run row, so a run whose row exists has complete curves; curves of
an interrupted run that is redone appear twice, and readers keep the last.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sa.errors import SAError

try:  # POSIX advisory locks keep concurrent appenders from interleaving.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

RUN_COLUMNS: tuple[str, ...] = (
    "run_id", "dataset", "subject", "fold", "backbone", "cache_key", "backbone_params",
    "n_blocks", "pool", "layer", "depth", "encoder", "encoder_params", "image_proj", "seed",
    "epochs", "lr", "weight_decay", "batch_size", "temperature_init", "learn_temperature",
    "temperature_final", "select", "best_epoch", "top1", "top5", "k2", "k4", "k10", "k50", "k100",
    "mean_rank", "val_top1", "train_seconds", "code_version", "created",
)  # fmt: skip
CURVE_COLUMNS: tuple[str, ...] = ("run_id", "epoch", "train_loss", "val_loss", "val_top1")

INT_COLUMNS = frozenset({"backbone_params", "n_blocks", "encoder_params", "seed", "epochs", "batch_size", "best_epoch", "epoch"})
FLOAT_COLUMNS = frozenset({
    "depth", "lr", "weight_decay", "temperature_init", "temperature_final", "top1", "top5", "k2", "k4",
    "k10", "k50", "k100", "mean_rank", "val_top1", "train_seconds", "train_loss", "val_loss",
})  # fmt: skip
BOOL_COLUMNS = frozenset({"learn_temperature"})
RUN_ID_KEYS: tuple[str, ...] = ("dataset", "subject", "fold", "cache_key", "pool", "layer", "encoder", "seed")

RUNS_FILE = "runs.csv"
CURVES_FILE = "curves.csv"


def _canonical(value: Any) -> Any:
    """A JSON-stable form of a config value: numpy scalars to Python, paths to str, tuples to lists."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    elif hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def run_id(**config: Any) -> str:
    """16 hex chars identifying a run: the sha256 of the canonical JSON of its configuration.

    Needs `dataset, subject, fold, cache_key, pool, layer, encoder, seed`; any other keyword (the
    hyperparameters, flat or as a `hyperparameters=` dict) enters the digest too. Keys whose value is
    None are left out, so a new optional hyperparameter left at None keeps old ids valid.
    """
    missing = [k for k in RUN_ID_KEYS if config.get(k) is None]
    if missing:
        raise TypeError(f"run_id() needs {', '.join(missing)}")
    text = json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _format(value: Any) -> str:
    """One CSV cell: empty for None/NaN, repr-exact floats, lower-case booleans."""
    if value is None:
        return ""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def _parse(column: str, text: str, where: str) -> Any:
    """Convert one cell by its column's type; empty cells become None."""
    if text == "":
        return None
    try:
        if column in INT_COLUMNS:
            return int(float(text)) if "." in text or "e" in text.lower() else int(text)
        if column in FLOAT_COLUMNS:
            return float(text)
        if column in BOOL_COLUMNS:
            low = text.strip().lower()
            if low not in {"true", "false", "1", "0"}:
                raise ValueError(text)
            return low in {"true", "1"}
    except ValueError:
        raise SAError(f"{where}: column {column!r} holds {text!r}, not a number; fix or delete that line.") from None
    return text


class ResultsDir:
    """A folder holding `runs.csv` and `curves.csv`; created on the first append."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise SAError(f"{self.path} is a file; give a results folder (it will hold {RUNS_FILE} and {CURVES_FILE}).")
        self.runs_path = self.path / RUNS_FILE
        self.curves_path = self.path / CURVES_FILE

    def __repr__(self) -> str:
        return f"ResultsDir({str(self.path)!r})"

    # -- writing ---------------------------------------------------------------

    def append_run(self, row: Mapping[str, Any]) -> None:
        """Append one finished run (keys from RUN_COLUMNS; missing ones are left empty, `created` defaults to now)."""
        unknown = sorted(set(row) - set(RUN_COLUMNS))
        if unknown:
            raise ValueError(f"runs.csv has no column(s) {', '.join(unknown)}; the columns are {', '.join(RUN_COLUMNS)}")
        if not row.get("run_id"):
            raise ValueError("a runs.csv row needs a run_id (see sa.train.results.run_id)")
        full = dict(row)
        full.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self._append(self.runs_path, RUN_COLUMNS, [full])

    def append_curves(self, run_id: str, curves: Iterable[Mapping[str, Any]]) -> None:
        """Append a run's per-epoch rows (`epoch, train_loss, val_loss, val_top1`) in one write; call before append_run."""
        rows = []
        for c in curves:
            unknown = sorted(set(c) - set(CURVE_COLUMNS))
            if unknown:
                raise ValueError(f"curves.csv has no column(s) {', '.join(unknown)}")
            rows.append({**c, "run_id": run_id})
        if rows:
            self._append(self.curves_path, CURVE_COLUMNS, rows)

    def _append(self, path: Path, columns: tuple[str, ...], rows: list[Mapping[str, Any]]) -> None:
        """Write rows as one block under a lock: header if new, torn last line cut off first, then flush + fsync."""
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        for r in rows:
            writer.writerow([_format(r.get(c)) for c in columns])
        with open(path, "a+b") as fh:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                size = fh.seek(0, os.SEEK_END)
                if size == 0:
                    fh.write((",".join(columns) + "\n").encode())
                else:
                    self._check_header(fh, path, columns)
                    self._cut_torn_tail(fh, size)
                fh.write(buf.getvalue().encode())
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                if fcntl is not None:
                    fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _check_header(fh: Any, path: Path, columns: tuple[str, ...]) -> None:
        """Refuse to append to a file whose header is not this schema."""
        fh.seek(0)
        header = fh.readline().decode(errors="replace").rstrip("\r\n").split(",")
        if tuple(header) != columns:
            raise SAError(
                f"{path} has header {','.join(header)[:80]!r}, not the {path.name} schema; "
                "move it aside and rerun (see docs/internals.md for the columns)."
            )

    @staticmethod
    def _cut_torn_tail(fh: Any, size: int) -> None:
        """If the file does not end in a newline the last write was interrupted: truncate after the last newline."""
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        back = min(size, 1 << 20)
        fh.seek(size - back)
        tail = fh.read(back)
        cut = size - back + tail.rfind(b"\n") + 1
        fh.truncate(cut)
        fh.seek(cut)

    # -- reading ---------------------------------------------------------------

    def _read(self, path: Path, columns: tuple[str, ...]) -> list[dict[str, Any]]:
        """Rows of a results CSV with typed cells; a torn last line (no newline) is skipped."""
        if not path.exists():
            return []
        with open(path, encoding="utf-8", newline="") as fh:
            text = fh.read()
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if header is None:
            return []
        if tuple(header) != columns:
            missing = [c for c in columns if c not in header]
            raise SAError(f"{path} lacks column(s) {', '.join(missing) or '(order differs)'}; it was not written by sa.")
        out = []
        for lineno, cells in enumerate(reader, start=2):
            if not cells:
                continue
            if len(cells) != len(columns):
                raise SAError(f"{path} line {lineno} has {len(cells)} cells, not {len(columns)}; fix or delete that line.")
            where = f"{path} line {lineno}"
            out.append({c: _parse(c, v, where) for c, v in zip(columns, cells)})
        return out

    def runs(self) -> list[dict[str, Any]]:
        """Every run row (numbers as int/float, `learn_temperature` as bool, empty cells as None); [] if none yet."""
        return self._read(self.runs_path, RUN_COLUMNS)

    def existing_run_ids(self) -> set[str]:
        """The run ids already in runs.csv, for a rerun to skip."""
        return {r["run_id"] for r in self.runs()}

    def curves(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Per-epoch rows (all runs, or one), sorted by run then epoch; a repeated (run, epoch) keeps its last row."""
        latest: dict[tuple[str, int], dict[str, Any]] = {}
        for r in self._read(self.curves_path, CURVE_COLUMNS):
            if run_id is None or r["run_id"] == run_id:
                latest[(r["run_id"], r["epoch"])] = r
        return [latest[k] for k in sorted(latest, key=lambda k: (k[0], k[1] if k[1] is not None else -1))]


def require_runs(results: str | os.PathLike[str] | ResultsDir) -> list[dict[str, Any]]:
    """The run rows of a results folder, or an SAError naming runs.csv when there are none."""
    rd = results if isinstance(results, ResultsDir) else ResultsDir(results)
    rows = rd.runs()
    if not rows:
        state = "is empty" if rd.runs_path.exists() else "does not exist"
        raise SAError(f"{rd.runs_path} {state}; run `sa sweep` first to fill it with results.")
    return rows
