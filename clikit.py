"""Shared pieces of the CLI: the consoles and turning SAError into one red line and an exit code."""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import typer
from rich.console import Console

from sa.errors import SAError, explain

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
