"""Shared pieces of the CLI: the consoles and turning SAError into one red line and an exit code."""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console

from sa.errors import explain

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)


def friendly(fn: F) -> F:
    """Wrap a command so an SAError, or an expected fault (`sa.errors.explain`), prints as one sentence and exits."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - explain() decides; bugs re-raise
            known = explain(exc)
            if known is None:
                raise
            err_console.print(f"[bold red]error:[/] {known}", highlight=False, soft_wrap=True)
            raise typer.Exit(known.exit_code) from None

    return wrapper  # type: ignore[return-value]


# Options that several rooms' commands share: one name, one meaning, defined once (docs/cli-options.md).
CACHE_HELP = ("Feature cache root: a folder or an fsspec URL (https://, s3://, gs://, memory://; HTTP roots are "
              "read-only). Default: $SA_CACHE, else ~/.cache/sa/features.")
DATA_HELP = ("Brain dataset folder (THINGS-EEG2 official/NICE/ATM/UBP/NeuroBridge, THINGS-MEG, own arrays); "
             "see `sa data check`.")
IMAGES_HELP = "THINGS image root (training_images/, test_images/) if it is not found next to the data."


def cache_option(help: str = CACHE_HELP) -> Any:
    """--cache: the feature cache root, on every command that reads or writes one."""
    return typer.Option(None, "--cache", "-c", envvar="SA_CACHE", show_envvar=True, help=help)


def data_option() -> Any:
    """--data: the brain dataset folder."""
    return typer.Option(..., "--data", "-d", help=DATA_HELP)


def images_option(help: str = IMAGES_HELP) -> Any:
    """--images: the image root (optional where it is found next to the data)."""
    return typer.Option(None, "--images", "-i", help=help)


def layout_option() -> Any:
    """--layout: force a brain-data layout instead of detecting it."""
    return typer.Option("auto", "--layout", help="Force a data layout (default: detect; see docs/data-layouts.md).")


def meta_option() -> Any:
    """--meta: the THINGS metadata folder (THINGS-MEG image_concept_index.csv / image_paths.csv)."""
    return typer.Option(None, "--meta", help="THINGS metadata folder holding image_concept_index.csv and "
                        "image_paths.csv (THINGS-MEG), if it is not found near the data.")


def device_option() -> Any:
    """--device: where the work runs."""
    return typer.Option("auto", "--device", help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N.")


def quiet_option() -> Any:
    """--quiet: no progress bars or tables."""
    return typer.Option(False, "--quiet", "-q", help="No progress bars or tables; print only the closing summary.")
