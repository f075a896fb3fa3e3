"""Rich progress bars with the columns long sa jobs show (rate and ETA)."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RateColumn(TextColumn):
    """Items per second, e.g. '38.2 img/s'."""

    def __init__(self, unit: str = "it") -> None:
        super().__init__("")
        self.unit = unit

    def render(self, task):  # type: ignore[override]
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.1f} {self.unit}/s", style="progress.data.speed")


def make_progress(unit: str = "it", *, disable: bool = False, transient: bool = False) -> Progress:
    """A Progress with description, bar, n/N, percent, rate, elapsed and ETA; `disable=True` prints nothing."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=disable,
        transient=transient,
    )
