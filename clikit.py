"""Shared pieces of the CLI: the consoles and turning SAError into one red line and an exit code."""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import typer
from rich.console import Console

from sa.errors import SAError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)


def friendly(fn: F) -> F:
    """Wrap a command so an SAError prints as one sentence (no traceback) and exits with its code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SAError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]
