"""`sa stream`: decode a live LSL EEG stream and publish each decision (a thin wrapper over sa.decode.online)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from sa.clikit import cache_option, console, err_console, friendly
from sa.errors import SAError


def _baseline(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise SAError(f"--baseline {text!r} must be two times in seconds, e.g. -0.2,0.") from None
    return a, b


def _display(status: Any) -> Any:
    """The live panel: streams, counts, the last decision and latency."""
    import numpy as np
    from rich.table import Table

    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    t.add_row("EEG", status.eeg)
    t.add_row("markers", status.markers)
    t.add_row("state", status.state)
    t.add_row("samples", f"{status.samples}  ({status.dropped} dropped)")
    t.add_row("epochs", f"{status.epochs} seen, {status.decisions} decided, {status.skipped} skipped, "
                        f"{status.pending} waiting")
    last = status.last
    if last is not None:
        cmd = f"  -> command {last.command!r}" if last.command else ""
        t.add_row("last", f"#{last.index} marker {last.marker!r} -> {last.ids[0]} ({last.scores[0]:.3f}){cmd}")
        lat = np.asarray(status.latencies[-500:])
        t.add_row("latency", f"{last.latency_ms:.1f} ms (p50 {np.percentile(lat, 50):.1f}, "
                             f"p99 {np.percentile(lat, 99):.1f} over the last {len(lat)})")
    return t


def stream_cmd(
    checkpoint: Optional[Path] = typer.Argument(None, help="Checkpoint written by `sa train`."),
    gallery: Optional[str] = typer.Option(None, "--gallery", help="Cache key (or unique prefix) of the candidate images, extracted with the checkpoint's backbone."),
    cache: Optional[str] = cache_option("Feature cache root of the gallery (default: $SA_CACHE, else the checkpoint's)."),
    eeg: Optional[str] = typer.Option(None, "--eeg", help="Name of the EEG stream (default: the one stream of type --eeg-type)."),
    eeg_type: str = typer.Option("EEG", "--eeg-type", help="Type of the EEG stream when --eeg is not given (case-insensitive)."),
    markers: Optional[str] = typer.Option(None, "--markers", help="Name of the marker stream of stimulus onsets."),
    marker_type: str = typer.Option("Markers", "--marker-type", help="Type of the marker stream when --markers is not given."),
    trigger: Optional[str] = typer.Option(None, "--trigger", help="Take onsets from this channel of the EEG stream instead of a marker stream."),
    only: Optional[str] = typer.Option(None, "--only", help="Regular expression: decode only markers whose label matches."),
    top_k: int = typer.Option(5, "--top-k", help="Candidates per decision."),
    repeat: int = typer.Option(1, "--repeat", help="Average this many epochs of the same marker label before deciding."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Decide before --repeat epochs once top-1 minus top-2 cosine score reaches this."),
    accumulate: str = typer.Option("trials", "--accumulate", help="trials (average the epochs) or scores (average their gallery scores)."),
    commands: Optional[Path] = typer.Option(None, "--commands", help="CSV of `image id or concept,command`; the command is published on its own outlet."),
    log: Optional[Path] = typer.Option(None, "--log", help="Session log (JSON lines; default sa-stream-<time>.jsonl here)."),
    outlet: str = typer.Option("sa-decisions", "--outlet", help="Name of the LSL outlet of decisions (JSON strings)."),
    command_outlet: str = typer.Option("sa-commands", "--command-outlet", help="Name of the LSL outlet of commands."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Subtract the mean of this window, e.g. -0.2,0 (s), if the training epochs were baseline-corrected."),
    marker_delay: float = typer.Option(0.0, "--marker-delay", help="Seconds to add to every marker time (measured screen latency)."),
    scale: float = typer.Option(1.0, "--scale", help="Multiply incoming samples (1e-6: microvolt stream, volt-trained checkpoint)."),
    jitter: float = typer.Option(0.005, "--jitter", help="Timestamp wobble (s) tolerated before samples count as dropped (chunks stamped on arrival)."),
    max_pending: int = typer.Option(64, "--max-pending", help="Markers that may wait for data; a burst beyond drops the oldest."),
    stall: float = typer.Option(2.0, "--stall", help="Seconds without EEG before the stream counts as stalled."),
    lost: float = typer.Option(10.0, "--lost", help="Seconds a vanished stream may take to come back before the session ends."),
    connect_timeout: float = typer.Option(10.0, "--connect-timeout", help="Seconds to wait for the streams at start."),
    max_decisions: Optional[int] = typer.Option(None, "--max-decisions", help="End after this many decisions."),
    duration: Optional[float] = typer.Option(None, "--duration", help="End after this many seconds."),
    display: Optional[bool] = typer.Option(None, "--display/--no-display", help="Live panel (default: on a terminal); off prints one line per decision."),
    list_streams: bool = typer.Option(False, "--list", help="List the LSL streams this machine sees, and exit."),
) -> None:
    """Decode a live LSL EEG stream at each stimulus marker and publish every decision (closed loop)."""
    from sa.decode.lsl import StreamSpec, describe_stream, visible_streams
    from sa.decode.online import OnlineOptions, StreamSession

    if list_streams:
        found = visible_streams(1.0)
        for s in found:
            console.print(describe_stream(s), highlight=False, soft_wrap=True)
        if not found:
            console.print("no LSL stream is visible from this machine.")
        return
    if checkpoint is None or gallery is None:
        raise SAError("give the CHECKPOINT and --gallery KEY (or --list to see the streams).")
    opts = OnlineOptions(top_k=top_k, repeat=repeat, threshold=threshold, accumulate=accumulate,
                         baseline=_baseline(baseline), marker_delay=marker_delay, scale=scale, only=only,
                         max_pending=max_pending, stall_s=stall, lost_s=lost, jitter_s=jitter)
    opts.check()
    if trigger and markers:
        raise SAError("give either --markers or --trigger, not both.")
    log = log or Path(f"sa-stream-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    live_on = console.is_terminal if display is None else display

    def say(text: str) -> None:
        err_console.print(text, highlight=False, soft_wrap=True, markup=False)

    session_args = dict(
        eeg=StreamSpec(name=eeg) if eeg else StreamSpec(stype=eeg_type),
        markers=None if trigger else (StreamSpec(name=markers) if markers else StreamSpec(stype=marker_type)),
        trigger=trigger, options=opts, log=log, commands=commands, root=cache, outlet_name=outlet,
        command_outlet_name=command_outlet, resolve_timeout=connect_timeout, notify=say)
    if not live_on:
        session = StreamSession(checkpoint, gallery, notify=lambda text: console.print(text, highlight=False, markup=False, soft_wrap=True),
                                **{k: v for k, v in session_args.items() if k != "notify"})
        decisions = session.run(max_decisions=max_decisions, duration=duration)
    else:
        from rich.live import Live

        with Live(console=console, auto_refresh=False, transient=False) as live:
            def show(status: Any) -> None:
                live.update(_display(status), refresh=True)

            session_args["notify"] = lambda text: live.console.print(text, highlight=False, markup=False, soft_wrap=True)
            session = StreamSession(checkpoint, gallery, on_status=show, **session_args)
            decisions = session.run(max_decisions=max_decisions, duration=duration)
    st = session.status
    lat = sorted(d.latency_ms for d in decisions)
    tail = f"; latency p50 {lat[len(lat) // 2]:.1f} ms" if lat else ""
    console.print(f"session ended: {len(decisions)} decision(s) from {st.epochs} epoch(s), {st.skipped} marker(s) "
                  f"skipped, {st.dropped} sample(s) dropped{tail}; log: {log}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `sa stream` to the root app."""
    app.command("stream")(friendly(stream_cmd))
