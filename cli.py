"""The `sa` command line: a thin typer app over the Python API.

Each room keeps its commands in its own `cli` module; this file only mounts
them, in pipeline order. Command modules import heavy libraries (torch, zarr)
inside the command functions so that `sa --help` stays fast.
"""

from __future__ import annotations

from typing import Optional

import typer

from sa import __version__, demo
from sa.brain import cli as brain_cli
from sa.cache import cli as cache_cli
from sa.decode import cli as decode_cli
from sa.extract import cli as extract_cli
from sa.report import cli as report_cli
from sa.threads import configure as configure_threads
from sa.train import cli as train_cli

app = typer.Typer(
    name="sa",
    help=(
        "Shallow Alignment: decode seen images from EEG/MEG by aligning brain responses "
        "with the intermediate layers of frozen vision models.\n\n"
        "Typical workflow: `sa data check` -> `sa extract` (once per backbone, on a GPU) -> "
        "`sa sweep --layers all` -> `sa report`. Try `sa demo` first."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sa {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, envvar="SA_THREADS",
                                          help="torch intra-op threads (default: free physical cores by the load "
                                               "average, 1 on a busy machine; an explicit OMP_NUM_THREADS stands)."),
) -> None:
    """Shallow Alignment toolkit."""
    configure_threads(threads)


demo.register(app)
app.add_typer(cache_cli.app, name="cache", help="Inspect, verify, export and share feature caches.")
app.add_typer(brain_cli.app, name="data", help="Check brain data layouts; write the synthetic THINGS-format dataset.")
extract_cli.register(app)
train_cli.register(app)
decode_cli.register(app)
report_cli.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
