"""One sweep job, run where it lands: load a subject's data and a backbone's layers, train every run, make its rows.

A `Job` is one subject/fold x backbone x encoder x seed group; `run_job` trains
it in this process or on a dask worker (sa.train.distributed) and `record`
appends its rows and curves. `DataOptions` are the options that shape the data
a run sees. sa.train.sweep plans jobs; this module only runs them.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from sa.errors import SAError
from sa.train.trainer import TrainConfig


@dataclass
class DataOptions:
    """How a subject is loaded: channels, time window, single trials, validation share, split seed."""

    channels: str | list[str] = "all"
    window: tuple[float, float] | None = None
    single_trials: bool = False
    val_fraction: float = 0.1
    split_seed: int = 0
    layout: str = "auto"
    image_root: str | None = None
    meta: str | None = None

    def check(self) -> None:
        """SAError naming the option when the validation share or split seed cannot work."""
        v = self.val_fraction
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise SAError(f"--val-fraction {v} must be at least 0 and below 1 (the share of training concepts held out).")
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int) or self.split_seed < 0:
            raise SAError(f"--split-seed {self.split_seed} must be a whole number of at least 0.")
        if self.window is not None and not all(np.isfinite(self.window)):
            raise SAError(f"--window {self.window} must be two finite times in seconds, e.g. 0,1.")

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of BrainDataset.load / load_loso."""
        return {"channels": self.channels, "window": self.window, "average_reps": not self.single_trials,
                "val_fraction": self.val_fraction, "seed": self.split_seed}

    def id_fields(self) -> dict[str, Any]:
        """The options that change the data a run sees (for run ids)."""
        return {"channels": self.channels, "window": None if self.window is None else list(self.window),
                "single_trials": self.single_trials, "val_fraction": self.val_fraction, "split_seed": self.split_seed}

    def row_fields(self) -> dict[str, Any]:
        """The same options as runs.csv cells (the whole epoch is 'all', never an empty cell: that means 'not recorded')."""
        channels = self.channels if isinstance(self.channels, str) else ",".join(self.channels)
        window = "all" if self.window is None else f"{self.window[0]!r}:{self.window[1]!r}"
        return {"channels": channels, "window": window, "single_trials": self.single_trials,
                "val_fraction": self.val_fraction, "split_seed": self.split_seed}


def data_options(channels: Any = "all", window: Any = None, single_trials: bool = False, val_fraction: float = 0.1,
                 split_seed: int = 0, layout: str = "auto", image_root: Any = None, meta: Any = None) -> DataOptions:
    """Checked DataOptions from the sweep/train arguments."""
    options = DataOptions(channels=channels if isinstance(channels, str) else list(channels), window=parse_window(window),
                          single_trials=single_trials, val_fraction=val_fraction, split_seed=split_seed, layout=layout,
                          image_root=None if image_root is None else os.fspath(image_root),
                          meta=None if meta is None else os.fspath(meta))
    options.check()
    return options


def check_training(cfg: TrainConfig, options: DataOptions) -> None:
    """Every training and data option checked together, before any data are read."""
    cfg.check()
    options.check()
    if cfg.needs_validation and options.val_fraction <= 0:
        raise SAError(f"--select {cfg.select} needs a validation split; set --val-fraction above 0 or use --select last.")


@dataclass
class Job:
    """One unit of work, picklable and array-free: a subject/fold, a cache group and pool, an encoder, runs."""

    data: str
    dataset: str
    subject: str
    fold: str  # "intra" | "loso"
    options: DataOptions
    cache: str  # the cache root URL
    cache_key: str
    gallery_key: str | None
    pool: str
    encoder: str
    runs: list[tuple[str, int, str]]  # (layer, seed, run_id)
    cfg: TrainConfig
    backbone: dict = field(default_factory=dict)  # name, params, n_blocks, depth per layer
    categories: str | None = None  # --categories CSV (concept,category): adds concept_top5 (sa.train.concepts)
    mix: dict | None = None  # a mix run's {"label", "layers", "options" (sa.train.mix.MixOptions)}: --layers mix
    save_embeddings: bool = False  # --save-embeddings: each run's test embeddings to embeddings/<run_id>.npz

    @property
    def title(self) -> str:
        seeds = sorted({s for _, s, _ in self.runs})
        where = self.subject if self.fold == "intra" else f"LOSO {self.subject}"
        return f"{where} · {self.backbone.get('name', self.cache_key)} · {self.encoder} · seed {','.join(map(str, seeds))}"


def parse_window(window: str | Sequence[float] | None) -> tuple[float, float] | None:
    """'0,1' or (0, 1) -> (0.0, 1.0) seconds; None keeps the whole epoch."""
    if window is None or window == "":
        return None
    parts = re.split(r"[,:]", window) if isinstance(window, str) else list(window)
    try:
        lo, hi = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise SAError(f"--window {window!r} is not 'tmin,tmax' in seconds, e.g. 0,1.") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo >= hi:
        raise SAError(f"--window {window!r} must be two finite times in seconds with tmin < tmax, e.g. 0,1.")
    return lo, hi


class Loader:
    """Keeps the current subject's data and its feature tables/galleries, so jobs of one subject load once."""

    def __init__(self) -> None:
        self._data_key: tuple | None = None
        self._subject: Any = None
        self._datasets: dict[tuple, Any] = {}
        self._roots: dict[str, Any] = {}
        self._tables: dict[tuple, Any] = {}

    def dataset(self, job: Job) -> Any:
        from sa.brain.data import open_dataset

        key = (job.data, job.options.layout, job.options.image_root, job.options.meta)
        if key not in self._datasets:
            self._datasets[key] = open_dataset(job.data, layout=job.options.layout, image_root=job.options.image_root,
                                                   meta=job.options.meta)
        return self._datasets[key]

    def root(self, url: str) -> Any:
        from sa.cache import open_root

        if url not in self._roots:
            self._roots[url] = open_root(url, read_only=True)
        return self._roots[url]

    def subject(self, job: Job) -> Any:
        """The job's SubjectData (or LOSO fold), loaded once while consecutive jobs share it."""
        key = (job.data, job.subject, job.fold, repr(job.options))
        if key != self._data_key:
            self._subject, self._tables, self._data_key = None, {}, None
            ds = self.dataset(job)
            load = ds.load_loso if job.fold == "loso" else ds.load
            self._subject, self._data_key = load(job.subject, **job.options.load_kwargs()), key
        return self._subject

    def features(self, job: Job) -> tuple[Any, Any]:
        """(FeatureTable of the subject's images, Gallery) for the job's cache group (per layer read once)."""
        from sa.train.features import FeatureTable, check_widths, concept_gallery, stimulus_gallery

        subj = self.subject(job)
        key = (job.cache, job.cache_key)
        if key not in self._tables:
            group = self.root(job.cache).open(job.cache_key)
            ids = np.concatenate([subj.train.image_ids, subj.val.image_ids, subj.test.image_ids])
            self._tables[key] = FeatureTable(group, ids)
        table = self._tables[key]
        layers = feature_layers(job)
        if job.gallery_key:
            other = self.root(job.cache).open(job.gallery_key)
            check_widths(table.group, other, job.pool, layers)
            return table, concept_gallery(other, subj.test, job.pool, layers)
        return table, stimulus_gallery(table, subj.test, job.pool, layers)


def feature_layers(job: Job) -> list[str]:
    """The cache layers a job reads: its runs' layers, with a mix run's layers in place of its label."""
    mix = job.mix or {}
    plain = {lyr for lyr, _, _ in job.runs if lyr != mix.get("label")}
    return sorted(plain | set(mix.get("layers") or ()))


def precision_name(cfg: TrainConfig) -> str:
    """The precision a run trains in on this machine (the `precision` column): fp32 or bf16."""
    from sa.train.trainer import resolve_device, resolve_precision

    return "fp32" if resolve_precision(cfg.precision, resolve_device(cfg.device)) is None else "bf16"


def _row(job: Job, lyr: str, seed: int, rid: str, cfg: TrainConfig, res: Any, status: str, has_val: bool) -> dict:
    """The runs.csv row of one run; `res` is its RunResult, or None for a layer that was not trained."""
    from sa import __version__

    num = (lambda v: None if v is None or (isinstance(v, float) and not np.isfinite(v)) else v)  # noqa: E731
    kway = res.kway if res is not None else {}
    return {
        "run_id": rid, "dataset": job.dataset, "subject": job.subject, "fold": job.fold,
        "backbone": job.backbone.get("name"), "cache_key": job.cache_key, "backbone_params": job.backbone.get("params"),
        "n_blocks": job.backbone.get("n_blocks"), "pool": "" if lyr == "final" else job.pool, "layer": lyr,
        "depth": job.backbone.get("depth", {}).get(lyr), "encoder": job.encoder,
        "encoder_params": None if res is None else res.encoder_params, "image_proj": cfg.image_proj,
        "embed_dim": cfg.embed_dim, "seed": seed, "epochs": cfg.epochs, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
        "batch_size": cfg.batch_size, "temperature_init": cfg.temperature, "learn_temperature": cfg.learn_temperature,
        "temperature_final": None if res is None else res.temperature_final, "select": cfg.select,
        **job.options.row_fields(), "gallery": job.gallery_key or "stimuli", "eval_seed": cfg.eval_seed,
        "precision": precision_name(cfg), "status": status,
        "best_epoch": None if res is None or status == "diverged" else res.best_epoch,
        "top1": num(res and res.top1), "top5": num(res and res.top5),
        **{k: num(kway.get(k)) for k in ("k2", "k4", "k10", "k50", "k100")},
        "mean_rank": num(res and res.mean_rank), "val_top1": num(res.val_top1) if res is not None and has_val else None,
        "train_seconds": None if res is None else res.train_seconds, "code_version": __version__,
    }  # fmt: skip


def train_job(job: Job, loader: Loader | None = None, *, keep_models: bool = False) -> list[tuple[dict, list[dict], Any]]:
    """Train a job's runs; returns per run (runs.csv row, curves, model or None) in job.runs order.

    A layer with non-finite features is not trained (its rows say so); constant and
    near-constant layers are trained and flagged, so the summary never chooses them.
    """
    from sa.train.features import feature_health, layer_health, split_features
    from sa.train.results import FEATURE_FLAGS, STATUS_DIVERGED, STATUS_OK
    from sa.train.trainer import RunSpec, train_runs

    loader = loader or Loader()
    subj = loader.subject(job)
    table, gallery = loader.features(job)
    layers = feature_layers(job)
    health = layer_health(table, job.pool, layers)
    if job.gallery_key:  # concept centres come from another group: check them too, the worse verdict wins
        for lyr in layers:
            flag = feature_health(gallery.feats[lyr])
            if flag != STATUS_OK and (health[lyr] == STATUS_OK or FEATURE_FLAGS.index(flag) > FEATURE_FLAGS.index(health[lyr])):
                health[lyr] = flag
    trainable = [lyr for lyr in layers if health[lyr] != FEATURE_FLAGS[2]]
    has_val = len(subj.val) > 0
    cfg = TrainConfig(**{**asdict(job.cfg), "encoder": job.encoder})
    todo = [(lyr, seed) for lyr, seed, _ in job.runs if lyr in trainable]
    trained: dict[tuple[str, int], Any] = {}
    if todo:
        train_f = split_features(table, subj.train, job.pool, trainable)
        val_f = split_features(table, subj.val, job.pool, trainable) if has_val else None
        test_f = {lyr: gallery.feats[lyr] for lyr in trainable}
        specs = [RunSpec(lyr, seed, job.encoder) for lyr, seed in todo]
        runner = train_runs
        if job.encoder == "ridge":  # closed form, all layers from one eigendecomposition (sa.train.ridge)
            from sa.train.ridge import ridge_runs as runner
        results = runner(subj.train.x, train_f, subj.val.x if has_val else None, val_f, subj.test.x, test_f,
                             specs, cfg, test_targets=gallery.targets, progress=False,
                             val_ids=subj.val.image_ids if has_val else None)
        trained = dict(zip(todo, results))
    mixed: dict = {}
    if job.mix:  # one run per seed whose image side mixes the job's mix layers (sa.train.mix)
        from sa.train.mix import train_mix_job

        mixed = train_mix_job(job, subj, table, gallery, health, cfg, has_val, _row, keep_models)
    out = []
    for lyr, seed, rid in job.runs:
        if (lyr, seed) in mixed:
            out.append(mixed[(lyr, seed)])
            continue
        res = trained.get((lyr, seed))
        status = STATUS_DIVERGED if res is not None and res.diverged else health[lyr]
        if res is not None and res.diverged and health[lyr] != STATUS_OK:
            status = health[lyr]  # a degenerate layer is the cause to report, not the divergence it led to
        row = _row(job, lyr, seed, rid, cfg, res, status, has_val)
        if job.categories and res is not None and status != STATUS_DIVERGED:
            from sa.train.concepts import read_categories, run_concept_top5

            row["concept_top5"] = run_concept_top5(res, subj.test.x, gallery.feats[lyr], gallery.targets,
                                                   gallery.labels, read_categories(job.categories))
        if job.save_embeddings and res is not None and status != STATUS_DIVERGED:  # for the report's UMAP
            from sa.train.concepts import read_categories
            from sa.train.embeddings import embedding_arrays

            row["embeddings"] = embedding_arrays(res, subj.test.x, gallery.feats[lyr], gallery.labels, gallery.targets,
                                                 read_categories(job.categories) if job.categories else None)
        out.append((row, [] if res is None else res.curves, res.model if keep_models and res is not None else None))
    return out


_WORKER_LOADER: Loader | None = None


def run_job(job: Job) -> list[tuple[dict, list[dict]]]:
    """Dask task: train a job on a worker (reading data and features itself); rows and curves, no models."""
    global _WORKER_LOADER
    if _WORKER_LOADER is None:
        _WORKER_LOADER = Loader()
    return [(row, curves) for row, curves, _ in train_job(job, _WORKER_LOADER)]


def record(results: Any, outputs: Iterable[tuple[dict, list[dict]] | tuple[dict, list[dict], Any]]) -> int:
    """Append each run's curves, then its row (the row marks the run finished); returns the number of rows."""
    n = 0
    for item in outputs:
        row, curves = item[0], item[1]
        results.append_curves(row["run_id"], curves)
        if "mix_weights" in row:  # a mix run's learned layer weights go to mix_weights.csv, before its row
            from sa.train.mix import append_weights

            row = dict(row)
            append_weights(results, row.pop("mix_weights"))
        if "embeddings" in row:  # --save-embeddings: the npz first, then the row that marks the run finished
            from sa.train.embeddings import save_embeddings

            row = dict(row)
            save_embeddings(results.path, row["run_id"], row.pop("embeddings"))
        results.append_run(row)
        n += 1
    return n


# ---------------------------------------------------------------- the sweep
