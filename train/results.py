"""The results table: `runs.csv` (one row per finished run) and `curves.csv` (per-epoch losses).

Both files are append-only CSV. A row is written with one `write` under an
exclusive file lock, then flushed and fsynced, so an interrupted sweep leaves
at most one torn last line; the next append cuts it off and readers skip it.
A rerun asks `existing_run_ids()` and skips those runs. Curves are written
before their run row, so a run whose row exists has complete curves; curves of
an interrupted run that is redone appear twice, and readers keep the last.

One process writes a results folder at a time (`ResultsDir.writing`, a lock
file naming its holder), so two sweeps started into one folder cannot both
train and write the same runs. Every setting that changes a run's numbers is
a column (`SETTING_COLUMNS`); a runs.csv from an older sa that lacks some of
them is read with those cells empty ("not recorded") and upgraded in place to
the current columns on the next append.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import socket
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sa.errors import DamagedError, SAError

try:  # POSIX advisory locks keep concurrent appenders from interleaving.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

RUN_COLUMNS: tuple[str, ...] = (
    "run_id", "dataset", "subject", "fold", "backbone", "cache_key", "backbone_params",
    "n_blocks", "pool", "layer", "depth", "encoder", "encoder_params", "image_proj", "embed_dim", "seed",
    "epochs", "lr", "weight_decay", "batch_size", "temperature_init", "learn_temperature",
    "temperature_final", "select", "channels", "window", "single_trials", "val_fraction", "split_seed",
    "gallery", "eval_seed", "precision", "status", "best_epoch", "top1", "top5", "k2", "k4", "k10", "k50", "k100",
    "mean_rank", "val_top1", "concept_top5", "train_seconds", "code_version", "created",
)  # fmt: skip
# The columns of sa's first runs.csv schema; a file with only these is read, its new cells empty ("not recorded").
LEGACY_RUN_COLUMNS: tuple[str, ...] = (
    "run_id", "dataset", "subject", "fold", "backbone", "cache_key", "backbone_params",
    "n_blocks", "pool", "layer", "depth", "encoder", "encoder_params", "image_proj", "seed",
    "epochs", "lr", "weight_decay", "batch_size", "temperature_init", "learn_temperature",
    "temperature_final", "select", "best_epoch", "top1", "top5", "k2", "k4", "k10", "k50", "k100",
    "mean_rank", "val_top1", "train_seconds", "code_version", "created",
)  # fmt: skip
CURVE_COLUMNS: tuple[str, ...] = ("run_id", "epoch", "train_loss", "val_loss", "val_top1")
# Columns every sa-written runs.csv has had; a header without them is not sa's.
REQUIRED_RUN_COLUMNS = ("run_id", "dataset", "subject", "fold", "backbone", "layer", "encoder", "seed")

# Every runs.csv column that changes a run's numbers besides its identity (dataset, subject, fold, backbone,
# pool, layer, encoder, seed): runs averaged together must agree on all of them.
SETTING_COLUMNS: tuple[str, ...] = (
    "cache_key", "epochs", "lr", "weight_decay", "batch_size", "embed_dim", "temperature_init", "learn_temperature",
    "image_proj", "select", "channels", "window", "single_trials", "val_fraction", "split_seed", "gallery", "eval_seed",
)  # fmt: skip

# Values of the `select` column: each rule ranks the state after every epoch by a score known at that epoch,
# never by test (sa.train.trainer.epoch_score). The default was measured: bench/selection.py, docs/selection.md.
SELECT_RULES: dict[str, str] = {
    "val": "best validation top-1",
    "val-loss": "lowest validation loss",
    "smooth": "best validation top-1 averaged over the last 3 epochs",
    "last": "the last epoch",
}
DEFAULT_SELECT = "smooth"  # best mean test top-1 over both budgets of docs/selection.md

# `status` of a run: ok, or why its numbers are not a result (diverged) or its layer cannot be chosen.
STATUS_OK = "ok"
STATUS_DIVERGED = "diverged"
FEATURE_FLAGS = ("constant-features", "near-constant-features", "non-finite-features")

INT_COLUMNS = frozenset({"backbone_params", "n_blocks", "encoder_params", "seed", "epochs", "batch_size", "best_epoch",
                         "epoch", "embed_dim", "split_seed", "eval_seed"})
FLOAT_COLUMNS = frozenset({
    "depth", "lr", "weight_decay", "temperature_init", "temperature_final", "top1", "top5", "k2", "k4",
    "k10", "k50", "k100", "mean_rank", "val_top1", "concept_top5", "train_seconds", "train_loss", "val_loss", "val_fraction",
})  # fmt: skip
BOOL_COLUMNS = frozenset({"learn_temperature", "image_proj", "single_trials"})
RUN_ID_KEYS: tuple[str, ...] = ("dataset", "subject", "fold", "cache_key", "pool", "layer", "encoder", "seed")

RUNS_FILE = "runs.csv"
CURVES_FILE = "curves.csv"
LOCK_FILE = ".sa-writer.lock"


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


def _decode(data: bytes, path: Path) -> str:
    """The text of a results CSV; DamagedError naming the file when it holds binary bytes."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DamagedError(f"{path} holds binary data (a NUL byte at byte {nul}), not sa's CSV; it is damaged: "
                           "move it aside and rerun (the runs it held will be trained again).")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DamagedError(f"{path} holds bytes that are not text (at byte {exc.start}), not sa's CSV; it is damaged: "
                           "move it aside and rerun (the runs it held will be trained again).") from None


def _header_problem(header: list[str], columns: tuple[str, ...], path: Path) -> str | None:
    """Why `header` cannot be read as this schema (None when it can: the columns, or an older subset of them)."""
    if tuple(header) == columns:
        return None
    unknown = [c for c in header if c not in columns]
    required = REQUIRED_RUN_COLUMNS if columns == RUN_COLUMNS else columns
    missing = [c for c in required if c not in header]
    if unknown or missing or len(set(header)) != len(header):
        what = f"has column(s) {', '.join(unknown[:4])} this sa does not know" if unknown else \
            f"lacks column(s) {', '.join(missing) or '(a column repeats)'}"
        return f"{path} {what}; it was not written by this sa (see docs/internals.md for the columns)"
    return None


class ResultsDir:
    """A folder holding `runs.csv` and `curves.csv`; created on the first append."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise SAError(f"{self.path} is a file; give a results folder (it will hold {RUNS_FILE} and {CURVES_FILE}).")
        self.runs_path = self.path / RUNS_FILE
        self.curves_path = self.path / CURVES_FILE
        self.lock_path = self.path / LOCK_FILE

    def __repr__(self) -> str:
        return f"ResultsDir({str(self.path)!r})"

    # -- one writer ------------------------------------------------------------

    @contextmanager
    def writing(self, what: str = "sa") -> Iterator["ResultsDir"]:
        """Hold the folder's writer lock for the block: SAError naming the holder when another process has it.

        Taking it creates the folder and a small lock file, so an unwritable folder is found here,
        before any training; the lock goes with the process (flock), so a killed sweep leaves none.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        for existing in (self.runs_path, self.curves_path):
            if existing.exists():
                open(existing, "ab").close()  # an existing table that cannot be appended to is found now
        fh = open(self.lock_path, "a+", encoding="utf-8")
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    fh.seek(0)
                    holder = fh.read().strip() or "another process"
                    raise SAError(f"results folder {self.path} is being written by {holder}; wait for it to finish, "
                                  "or give another --out (one folder has one writer).") from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"{what} (pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{datetime.now(timezone.utc).isoformat(timespec='seconds')})\n")
            fh.flush()
            try:
                yield self
            finally:
                fh.seek(0)
                fh.truncate()
        finally:
            fh.close()  # closing releases the flock

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
        while True:
            with open(path, "a+b") as fh:
                if fcntl is not None:
                    fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    if os.fstat(fh.fileno()).st_ino != os.stat(path).st_ino:
                        continue  # another writer upgraded the file to a new one meanwhile: append to that
                    size = fh.seek(0, os.SEEK_END)
                    if size:
                        self._cut_torn_tail(fh, size)
                    if fh.seek(0, os.SEEK_END) == 0:
                        fh.write((",".join(columns) + "\n").encode())
                    elif not self._check_header(fh, path, columns):
                        self._upgrade(fh, path, columns)
                        continue
                    fh.seek(0, os.SEEK_END)
                    fh.write(buf.getvalue().encode())
                    fh.flush()
                    os.fsync(fh.fileno())
                    return
                finally:
                    if fcntl is not None:
                        fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _check_header(fh: Any, path: Path, columns: tuple[str, ...]) -> bool:
        """True when the header is this schema, False for an older subset (to upgrade); SAError for anything else."""
        fh.seek(0)
        line = _decode(fh.readline(), path).rstrip("\r\n")
        header = next(csv.reader([line]), [])
        problem = _header_problem(header, columns, path)
        if problem:
            raise SAError(f"{problem}: move it aside and rerun.")
        return tuple(header) == columns

    @staticmethod
    def _upgrade(fh: Any, path: Path, columns: tuple[str, ...]) -> None:
        """Rewrite an older-schema file with the current columns (new cells empty), atomically, under the held lock."""
        fh.seek(0)
        reader = csv.reader(io.StringIO(_decode(fh.read(), path)))
        header = next(reader)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for cells in reader:
            if cells:
                old = dict(zip(header, cells))
                writer.writerow([old.get(c, "") for c in columns])
        tmp = path.with_name(path.name + ".upgrade.tmp")
        with open(tmp, "wb") as out:
            out.write(buf.getvalue().encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

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
        """Rows of a results CSV with typed cells (columns an older file lacks are None); a torn last line is skipped."""
        if not path.exists():
            return []
        text = _decode(path.read_bytes(), path)
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        reader = csv.reader(io.StringIO(text))
        try:
            header = next(reader, None)
            if header is None:
                return []
            problem = _header_problem(header, columns, path)
            if problem:
                raise SAError(problem + ".")
            out = []
            for lineno, cells in enumerate(reader, start=2):
                if not cells:
                    continue
                if len(cells) != len(header):
                    raise DamagedError(f"{path} line {lineno} has {len(cells)} cells, not {len(header)}; it is damaged: "
                                       "fix or delete that line.")
                where = f"{path} line {lineno}"
                cell = dict(zip(header, cells))
                out.append({c: _parse(c, cell[c], where) if c in cell else None for c in columns})
        except csv.Error as exc:
            raise DamagedError(f"{path} line {reader.line_num} is not valid CSV ({exc}); it is damaged: fix or delete "
                               "that line.") from None
        return out

    def missing_columns(self) -> list[str]:
        """Columns runs.csv lacks because an older sa wrote it (their cells read as None: not recorded)."""
        if not self.runs_path.exists():
            return []
        with open(self.runs_path, "rb") as fh:
            line = _decode(fh.readline(), self.runs_path).rstrip("\r\n")
        header = next(csv.reader([line]), [])
        return [c for c in RUN_COLUMNS if c not in header] if header else []

    def runs(self) -> list[dict[str, Any]]:
        """Every run row (numbers as int/float, booleans as bool, empty cells as None); [] if none yet."""
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
