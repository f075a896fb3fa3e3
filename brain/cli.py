"""`sa data`: check a brain dataset's layout and contents; write the synthetic THINGS-format dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sa.clikit import console, err_console, friendly, images_option, layout_option, meta_option
from sa.errors import SAError

app = typer.Typer(no_args_is_help=True, help="Check brain data layouts; write the synthetic THINGS-format dataset.")


class _ProblemsFound(SAError):
    """`sa data check` found problems (already printed)."""

    exit_code = 1


@app.command("check")
@friendly
def check_cmd(
    path: Path = typer.Argument(..., help="Dataset folder (or file): THINGS-EEG2 official/NICE/ATM/UBP/NeuroBridge, THINGS-MEG -epo.fif, or own arrays with CSV/TSV image tables."),
    images: Optional[Path] = images_option(),
    layout: str = layout_option(),
    meta: Optional[Path] = meta_option(),
    values: bool = typer.Option(True, "--values/--no-values", help="Read every value to find NaN/Inf and flat channels (slower on full datasets)."),
) -> None:
    """Detect the layout and print subjects, shapes, channels, sampling rate, time window, repetitions, the image folder and every problem (exit 1 if any)."""
    from sa.brain.data import open_dataset

    ds = open_dataset(path, layout=layout, image_root=images, meta=meta)
    report = ds.check(scan=values, progress=True)
    console.print(f"[bold]layout[/]: {report.layout}   [bold]root[/]: {report.root}", highlight=False)
    console.print(f"[bold]image folder[/]: {report.image_root or 'not found (pass --images; THINGS layouts need it for image ids)'}", highlight=False)
    console.print(f"[bold]subjects[/] ({len(ds.subjects)}): {', '.join(ds.subjects)}", highlight=False)
    for name in report.unreadable:
        console.print(f"  {name}: could not be read (see below)", highlight=False)
    for s in report.subjects:
        console.print(
            f"  {s.subject}: train {s.train_shape} test {s.test_shape} ({s.dtype}; images x reps x channels x times), "
            f"{len(s.ch_names)} channels, {s.sfreq:g} Hz, {s.tmin:.3f}..{s.tmax:.3f} s, "
            f"reps {s.train_shape[1]}/{s.test_shape[1]}, image ids from {s.ids_from}", highlight=False)
        console.print(f"    channels: {' '.join(s.ch_names[:20])}{' ...' if len(s.ch_names) > 20 else ''}", highlight=False)
        for note in s.notes:
            console.print(f"    note: {note}", highlight=False)
    if len(report.problems) == 1:
        raise _ProblemsFound(report.problems[0])
    if report.problems:
        for p in report.problems:
            err_console.print(f"[bold red]problem:[/] {p}", highlight=False, soft_wrap=True)
        raise _ProblemsFound(f"{len(report.problems)} problems found in {path} (listed above).")
    console.print("[green]no problems found[/]")


@app.command("synth")
@friendly
def synth_cmd(
    out: Path = typer.Argument(..., help="New folder for the dataset (images/, eeg/sub-XX/, cache/, synth.json)."),
    train_concepts: int = typer.Option(40, help="Training concepts."),
    images_per_concept: int = typer.Option(6, help="Images per training concept."),
    test_concepts: int = typer.Option(20, help="Test concepts (one image each; disjoint from training)."),
    subjects: int = typer.Option(2, "--n-subjects", help="Simulated subjects."),
    channels: int = typer.Option(17, "--n-channels", help="Channels (the 17 occipito-parietal names first)."),
    times: int = typer.Option(100, "--n-times", help="Time points per epoch."),
    sfreq: float = typer.Option(100.0, help="Sampling rate (Hz); epochs start at -0.2 s."),
    reps_train: int = typer.Option(4, help="Repetitions per training image."),
    reps_test: int = typer.Option(20, help="Repetitions per test image."),
    backbone: str = typer.Option("torchvision:mobilenet_v2", help="Backbone whose layer drives the EEG (see `sa backbones`)."),
    weights: Optional[str] = typer.Option("auto", help="Local weights file; 'auto' = the bundled MobileNetV2 weights if installed, else random init."),
    random_init: bool = typer.Option(False, "--random-init", help="Use seeded random weights for the planted backbone."),
    layer: Optional[str] = typer.Option(None, help="Planted layer label (e.g. 09); default: the middle layer."),
    pool: Optional[str] = typer.Option(None, help="Pooling of the planted layer (gap, mean, cls); default gap for CNNs, else mean."),
    snr: float = typer.Option(0.5, help="Single-trial signal-to-noise power ratio."),
    sources: int = typer.Option(8, help="Latent sources the planted features are projected to."),
    image_size: int = typer.Option(64, help="Image side in pixels."),
    cache: Optional[str] = typer.Option(None, "--cache", "-c", help="Feature cache root for the planted backbone (default OUT/cache, not $SA_CACHE: the dataset stays self-contained)."),
    seed: int = typer.Option(0, help="Seed for images, projection, mixing and noise."),
) -> None:
    """Write a small synthetic dataset in the official THINGS-EEG layout whose EEG is driven by one known layer."""
    from sa.brain.synth import SynthOptions, make_synth

    opts = SynthOptions(
        n_train_concepts=train_concepts, images_per_concept=images_per_concept, n_test_concepts=test_concepts,
        n_subjects=subjects, n_channels=channels, n_times=times, sfreq=sfreq, n_reps_train=reps_train,
        n_reps_test=reps_test, backbone=backbone, weights=None if weights in (None, "none") else weights,
        random_init=random_init, layer=layer, pool=pool, snr=snr, n_sources=sources, image_size=image_size, seed=seed)
    record = make_synth(out, opts, cache=cache, log=lambda m: err_console.print(m, highlight=False))
    p = record["planted"]
    console.print(f"wrote {out}: {record['n_train_images']} train / {record['n_test_images']} test images, {subjects} subjects; "
                  f"planted {p['backbone']} {p['array']} (cache {p['cache_key']})", highlight=False)
