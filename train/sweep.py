"""The sweep: every (subject or LOSO fold) x backbone x layer x encoder x seed, one results row per run.

`sweep(...)` plans the runs, skips those whose run id is already in runs.csv,
groups the rest into jobs (one subject/fold x backbone x encoder x seed group),
and runs each job as one `train_runs` call: the subject's data are loaded once,
each layer's features read once, every layer of a seed trained as one stack.
A job's curves and rows are appended as soon as it finishes, so an interrupted
sweep resumes where it stopped. Jobs run in-process or as dask tasks
(distributed.py); a job itself runs in jobs.py, where workers read data and features themselves.

Every option is checked before any data are read, and the results folder is
claimed (one writer, `ResultsDir.writing`) before any run is trained. A row's
`status` says when its numbers are not a result: the run diverged, or its
layer's features are constant, near-constant or non-finite (such a layer is
never chosen; a non-finite one is not trained at all).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from sa.errors import SAError
from sa.train.distributed import run_jobs_dask
from sa.train.mix import MixOptions, is_mix, mix_layers
from sa.train.jobs import DataOptions, Job, Loader, check_training, data_options, record, train_job
from sa.train.trainer import TrainConfig

# TrainConfig fields that change no trained number, so they stay out of run ids.
NOT_IN_RUN_ID = ("device", "precision", "encoder")  # ks and eval_seed change the k-way numbers: they stay in


@dataclass
class SweepResult:
    """What a sweep did: the results folder, the summary of its runs, how many runs it trained and skipped."""

    results: Any  # sa.train.results.ResultsDir
    summary: list  # list[sa.train.summary.BackboneSummary]
    planned: int
    trained: int
    skipped: int
    run_ids: list[str]

    def rows(self) -> list[dict]:
        """The runs.csv rows of this sweep's runs."""
        wanted = set(self.run_ids)
        return [r for r in self.results.runs() if r["run_id"] in wanted]


# ---------------------------------------------------------------- options


def parse_seeds(seeds: int | Sequence[int] | str) -> list[int]:
    """5 -> [0..4]; '0,3,7' or a list -> those seeds (each at least 0)."""
    if isinstance(seeds, str):
        text = seeds.strip()
        try:
            seeds = int(text) if re.fullmatch(r"[+-]?\d+", text) else [int(s) for s in text.split(",") if s.strip()]
        except ValueError:
            raise SAError(f"--seeds {seeds!r} is neither a count (5) nor a comma list of seeds (0,1,2).") from None
    if isinstance(seeds, int):
        if seeds < 1:
            raise SAError(f"--seeds {seeds} must be at least 1 (the number of seeds), or a list like 0,1,2.")
        return list(range(seeds))
    out = list(dict.fromkeys(int(s) for s in seeds))
    if not out:
        raise SAError("--seeds lists no seed; give a count (5) or a list (0,1,2).")
    negative = [s for s in out if s < 0]
    if negative:
        raise SAError(f"--seeds lists {negative[0]}; seeds must be at least 0 (a count like 5, or a list like 0,1,2).")
    return out


def parse_names(value: str | Sequence[str]) -> list[str]:
    """'a,b' or ['a', 'b,c'] -> ['a', 'b', 'c']."""
    items = [value] if isinstance(value, str) else list(value)
    return [p.strip() for v in items for p in str(v).split(",") if p.strip()]


def canonical_encoder(name: str) -> str:
    """The registry name of an encoder; SAError listing the known ones."""
    from sa.train.encoders import ENCODERS

    key = name.lower().replace("-", "").replace("_", "")
    if key == "ridge":  # the closed-form decoder (sa.train.ridge), not a trained module
        return key
    if key not in ENCODERS:
        raise SAError(f"unknown encoder {name!r}; choose one of {', '.join(sorted([*ENCODERS, 'ridge']))}.")
    return key


def dataset_name(data: Any) -> str:
    """The dataset column: the data folder's (or file's) name."""
    return Path(os.path.abspath(os.fspath(data))).name or "data"


def make_run_id(job_fields: dict, layer: str, seed: int, cfg: TrainConfig, options: DataOptions) -> str:
    """The run's id from its identity and every setting that changes its numbers."""
    from sa.train.results import run_id

    hyper = {k: v for k, v in asdict(cfg).items() if k not in NOT_IN_RUN_ID}
    return run_id(**job_fields, layer=layer, seed=seed, hyperparameters=hyper, data_options=options.id_fields())


# ---------------------------------------------------------------- planning


def select_subjects(ds: Any, subjects: str | int | Sequence[str | int]) -> list[str]:
    """'all' or a list (names or numbers) -> stored subject names."""
    if isinstance(subjects, (str, int)) and str(subjects).strip().lower() == "all":
        return ds.subjects
    names = parse_names(subjects if not isinstance(subjects, int) else str(subjects))
    return list(dict.fromkeys(ds.subject_name(s) for s in names))


def gallery_key_for(root: Any, gallery: str, group: Any) -> str:
    """The gallery group for a backbone: --gallery-cache names an image set (id or any of its keys)."""
    image_set = gallery if re.fullmatch(r"[0-9a-f]{16}", gallery.strip()) else root.resolve(gallery).split("/", 1)[0]
    key = f"{image_set}/{group.backbone_key}"
    if root.status(key) != "complete":
        raise SAError(f"--gallery-cache image set {image_set} has no complete group for backbone {group.backbone_key} "
                      f"under {root.url}; extract the gallery images with that backbone (sa extract).")
    return key


def dataset_ids(ds: Any, subjects: Sequence[str]) -> list[str]:
    """Every image id (train and test) of the subjects, for matching the cache."""
    ids: dict[str, None] = {}
    for s in subjects:
        raw = ds.raw(s)
        for split in (raw.train, raw.test):
            if split.image_ids is None:
                raise SAError(f"subject {s}: the rows have no image ids; pass --images pointing at the THINGS image root.")
            ids.update(dict.fromkeys(str(i) for i in split.image_ids))
    return list(ids)


def plan_jobs(*, data: Any, ds: Any, root: Any, backbones: Sequence[str], layers: str | Sequence[str], pool: str,
              encoders: Sequence[str], subjects: Sequence[str], seeds: Sequence[int], loso: bool, cfg: TrainConfig,
              options: DataOptions, gallery_cache: str | None, seeds_per_job: int | None = None,
              mix: Any = None) -> list[Job]:
    """Every job of the sweep (including runs that are already done), in subject-major order."""
    from sa.train.features import expand_layers, layer_depth, resolve_group, resolve_pool

    ids = dataset_ids(ds, subjects)
    per = max(1, seeds_per_job or 1)
    seed_groups = [list(seeds[i:i + per]) for i in range(0, len(seeds), per)]
    name = dataset_name(data)
    groups = []
    for b in backbones:
        group = resolve_group(root, b, ids)
        p = resolve_pool(group, pool) if layers != "final" else (pool if pool != "auto" else "")
        mixing = None
        if is_mix(layers):  # one run per seed over the chosen layers (sa.train.mix)
            label, mixed_layers = mix_layers(layers, group, p)
            mixing = {"label": label, "layers": mixed_layers, "options": mix or MixOptions()}
            lyr = [label]
        else:
            lyr = expand_layers(layers, group, p) if layers != "final" else expand_layers("final", group, p or "mean")
        bmeta = group.manifest.get("backbone") or {}
        meta = {"name": bmeta.get("name") or group.backbone_key, "params": bmeta.get("params"),
                "n_blocks": bmeta.get("n_blocks"), "depth": {lbl: layer_depth(group, lbl) for lbl in lyr}}
        if mixing:
            meta["depth"].update({lbl: layer_depth(group, lbl) for lbl in mixing["layers"]})
        gkey = gallery_key_for(root, gallery_cache, group) if gallery_cache else None
        groups.append((group, p, lyr, meta, gkey, mixing))
    jobs = []
    fold = "loso" if loso else "intra"
    for subject in subjects:
        for group, p, lyr, meta, gkey, mixing in groups:
            for enc in encoders:
                for sg in seed_groups:
                    fields = {"dataset": name, "subject": subject, "fold": fold, "cache_key": group.key,
                              "encoder": enc, "gallery": gkey}
                    if mixing:
                        fields["mix"] = mixing["options"].id_fields()
                    runs = [(lbl, s, make_run_id({**fields, "pool": "" if lbl == "final" else p}, lbl, s, cfg, options))
                            for s in sg for lbl in lyr]
                    jobs.append(Job(data=os.path.abspath(os.fspath(data)), dataset=name, subject=subject, fold=fold,
                                    options=options, cache=root.url, cache_key=group.key, gallery_key=gkey, pool=p,
                                    encoder=enc, runs=runs, cfg=cfg, backbone=meta, mix=mixing))
    return jobs


# ---------------------------------------------------------------- running one job


def sweep(data: Any, backbones: str | Sequence[str], *, cache: Any = None, layers: str | Sequence[str] = "all",
          pool: str = "auto", encoders: str | Sequence[str] = ("eegproject",), subjects: Any = "all",
          seeds: int | Sequence[int] | str = 5, out: Any = "results", loso: bool = False,
          gallery_cache: str | None = None, config: TrainConfig | None = None, channels: Any = "all",
          window: Any = None, single_trials: bool = False, val_fraction: float = 0.1, split_seed: int = 0,
          layout: str = "auto", image_root: Any = None, meta: Any = None, scheduler: str | None = None, workers: int | None = None,
          seeds_per_job: int | None = None, progress: bool = True, console: Any = None, mix: Any = None,
          on_job: Callable[[Job, int], None] | None = None, categories: Any = None,
          save_embeddings: bool = False) -> SweepResult:
    """Run (or resume) a sweep and return its summary and results folder.

    config holds the training options (TrainConfig; its encoder is overridden per
    --encoders). scheduler/workers run jobs as dask tasks; otherwise in-process.
    """
    from sa.cache import default_root, open_root
    from sa.brain.data import open_dataset
    from sa.train.results import ResultsDir

    cfg = config or TrainConfig()
    options = data_options(channels, window, single_trials, val_fraction, split_seed, layout, image_root, meta)
    check_training(cfg, options)
    layer_text = (layers if isinstance(layers, str) else ",".join(map(str, layers))).strip().lower()
    if mix is not None:
        mix.check()
        if mix.per_subject and not (is_mix(layer_text) and loso):
            raise SAError("--mix-per-subject gives each training subject its own layer weights; it needs --layers mix "
                          "and --loso.")
    if is_mix(layer_text) and not cfg.image_proj:
        raise SAError("--layers mix projects every layer into the shared space; drop --no-image-proj.")
    seed_list = parse_seeds(seeds)
    encoder_names = [canonical_encoder(e) for e in parse_names(encoders)]
    results = ResultsDir(out)
    ds = open_dataset(data, layout=layout, image_root=image_root, meta=meta)
    subject_names = select_subjects(ds, subjects)
    if loso and len(ds.subjects) < 2:
        raise SAError(f"--loso needs at least two subjects; {data} has only {', '.join(ds.subjects)}.")
    root = open_root(cache if cache is not None else default_root(), read_only=True)
    layer_spec = layers if isinstance(layers, str) else ",".join(map(str, layers))
    jobs = plan_jobs(data=data, ds=ds, root=root, backbones=parse_names(backbones), layers=layer_spec.strip().lower(),
                     pool=pool, encoders=encoder_names, subjects=subject_names, seeds=seed_list, loso=loso, cfg=cfg,
                     options=options, gallery_cache=gallery_cache, seeds_per_job=seeds_per_job, mix=mix)
    if categories is not None:  # --categories: every test concept needs a category before anything is trained
        from sa.train.concepts import check_concepts, read_categories
        from sa.brain.things import concepts_of_ids

        table = read_categories(categories)
        for s in subject_names:
            check_concepts(table, concepts_of_ids(ds.raw(s).test.image_ids), os.fspath(categories))
        for j in jobs:
            j.categories = os.path.abspath(os.fspath(categories))
    for j in jobs:
        j.save_embeddings = save_embeddings  # each run's test embeddings for the report's UMAP
    with results.writing(f"sa sweep into {results.path}"):
        done = results.existing_run_ids()
        all_ids = [rid for j in jobs for _, _, rid in j.runs]
        todo = [j for j in (_pending(j, done) for j in jobs) if j.runs]
        n_todo = sum(len(j.runs) for j in todo)
        if scheduler or workers:

            trained = run_jobs_dask(todo, results, scheduler=scheduler, n_workers=workers, progress=progress,
                                    on_job=on_job)
        else:
            trained = _run_in_process(todo, results, progress=progress, on_job=on_job)
    summary = _summary(results, all_ids)
    if progress:
        print_summary(summary, console)
    return SweepResult(results=results, summary=summary, planned=len(all_ids), trained=trained,
                       skipped=len(all_ids) - n_todo, run_ids=all_ids)


def _pending(job: Job, done: set[str]) -> Job:
    """The job with its finished runs removed."""
    from dataclasses import replace

    return replace(job, runs=[r for r in job.runs if r[2] not in done])


def _run_in_process(jobs: list[Job], results: Any, *, progress: bool, on_job) -> int:
    """Train jobs one after another (subject data loaded once per subject), appending as each finishes."""
    from sa.progress import make_progress

    loader, trained = Loader(), 0
    with make_progress("run", disable=not progress) as bar:
        task = bar.add_task("sweep", total=sum(len(j.runs) for j in jobs))
        for job in jobs:
            bar.update(task, description=f"{job.title} ({len(job.runs)} runs)")
            n = record(results, train_job(job, loader))
            trained += n
            bar.advance(task, n)
            if on_job is not None:
                on_job(job, n)
        bar.update(task, description="sweep done")
    return trained


def _summary(results: Any, run_ids: Sequence[str]) -> list:
    """Summaries of this sweep's rows (none when it holds only final-layer runs)."""
    from sa.train.summary import summarize

    wanted = set(run_ids)
    rows = [r for r in results.runs() if r["run_id"] in wanted]
    if not rows:
        return []
    try:
        return summarize(rows)
    except SAError:
        return []


def print_summary(summary: Sequence[Any], console: Any = None) -> None:
    """Print the rich summary tables (best layer by validation, final layer, gain)."""
    from sa.train.summary import rich_tables

    if console is None:
        from sa.clikit import console as default_console

        console = default_console
    if not summary:
        console.print("No summary: the sweep has no intermediate-layer runs with a validation score.")
        return
    for table in rich_tables(summary):
        console.print(table)


# ---------------------------------------------------------------- one run, saved


def train_one(data: Any, backbone: str, *, out: Any, cache: Any = None, layer: str = "final", pool: str = "auto",
              encoder: str = "eegproject", subject: Any = None, seed: int = 0, loso: bool = False,
              gallery_cache: str | None = None, config: TrainConfig | None = None, channels: Any = "all",
              window: Any = None, single_trials: bool = False, val_fraction: float = 0.1, split_seed: int = 0,
              layout: str = "auto", image_root: Any = None, meta: Any = None,
              results: Any = None) -> tuple[dict, Path]:
    """Train one configuration and save it as a checkpoint at `out`; returns (its runs.csv row, the path).

    With `results`, the row and curves are also appended there (a sweep rerun then skips the run).
    """
    from contextlib import nullcontext

    from sa.cache import default_root, open_root
    from sa.train.checkpoint import Checkpoint, check_checkpoint_path, save_checkpoint
    from sa.brain.data import open_dataset
    from sa.train.features import feature_widths
    from sa.train.results import FEATURE_FLAGS, STATUS_DIVERGED, ResultsDir

    cfg = config or TrainConfig()
    options = data_options(channels, window, single_trials, val_fraction, split_seed, layout, image_root, meta)
    check_training(cfg, options)
    check_checkpoint_path(out)
    if canonical_encoder(encoder) == "ridge":  # closed form (sa.train.ridge): no torch model to checkpoint
        raise SAError("--encoder ridge is a closed-form layer scan with no trained model to save as a checkpoint; run "
                      "it with `sa sweep --encoders ridge`, and train a checkpoint with a brain encoder such as "
                      "eegproject.")
    ds = open_dataset(data, layout=layout, image_root=image_root, meta=meta)
    if subject is None:
        if len(ds.subjects) != 1:
            raise SAError(f"{data} has {len(ds.subjects)} subjects ({', '.join(ds.subjects[:5])}); pick one with --subject.")
        subject = ds.subjects[0]
    root = open_root(cache if cache is not None else default_root(), read_only=True)
    label = str(layer).strip().lower()
    if is_mix(label):
        raise SAError(f"--layer {layer} is a mix of layers, which `sa train` does not save as a checkpoint yet; "
                      "train it with `sa sweep --layers mix` (its row and weights go to the results folder).")
    (job,) = plan_jobs(data=data, ds=ds, root=root, backbones=[backbone], layers=label, pool=pool,
                       encoders=[canonical_encoder(encoder)], subjects=[ds.subject_name(subject)], seeds=[int(seed)],
                       loso=loso, cfg=cfg, options=options, gallery_cache=gallery_cache)
    job.runs = [r for r in job.runs if r[0] == label or (label.isdigit() and r[0] != "final")][:1]
    if not job.runs:
        raise SAError(f"--layer {layer!r} is not a layer of {job.cache_key}; give a label like 07, or final.")
    rd = ResultsDir(results) if results is not None else None
    with rd.writing(f"sa train into {rd.path}") if rd is not None else nullcontext():
        loader = Loader()
        ((row, curves, model),) = train_job(job, loader, keep_models=True)
        if rd is not None and row["run_id"] not in rd.existing_run_ids():
            record(rd, [(row, curves)])  # a diverged run is a result too: a sweep rerun skips it
        if row["status"] == FEATURE_FLAGS[2]:
            raise SAError(f"layer {row['layer']} of {job.cache_key} holds NaN/Inf features for this subject's images, "
                          "so it cannot be trained; re-extract them (sa cache verify names damaged arrays) or pick "
                          "another --layer.")
        if row["status"] == STATUS_DIVERGED:
            raise SAError(f"the run diverged (its training loss stopped being finite), so no checkpoint was written to "
                          f"{out}; lower --lr (it was {cfg.lr:g}) and train again.")
        subj = loader.subject(job)
        lyr = job.runs[0][0]
        ckpt = Checkpoint(
            model=model, config={**asdict(cfg), "encoder": job.encoder, "ks": list(cfg.ks)}, encoder=job.encoder,
            n_channels=int(subj.train.x.shape[1]), n_times=int(subj.train.x.shape[2]),
            feat_dim=int(feature_widths(loader.root(job.cache).open(job.cache_key), job.pool, [lyr])[lyr]),
            ch_names=list(subj.ch_names), times=[float(t) for t in subj.times], sfreq=float(subj.sfreq),
            window=None if options.window is None else list(options.window), average_reps=not single_trials,
            zscore_mean=subj.zscore_mean, zscore_std=subj.zscore_std, cache_key=job.cache_key, cache_root=job.cache,
            pool=job.pool if lyr != "final" else (job.pool or "mean"), layer=lyr, seed=int(seed),
            meta={"dataset": job.dataset, "subject": job.subject, "fold": job.fold, "run_id": row["run_id"],
                  "data_options": options.id_fields(), "backbone": job.backbone.get("name"), "status": row["status"],
                  "metrics": {k: row[k] for k in ("top1", "top5", "val_top1", "best_epoch")}},
        )  # fmt: skip
        path = save_checkpoint(out, ckpt)
    return row, path
