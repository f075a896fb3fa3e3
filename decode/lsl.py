"""Lab Streaming Layer I/O for online decoding: finding streams, reading EEG and markers, publishing decisions.

Everything LSL goes through mne-lsl (its wheels bundle liblsl). liblsl reads its
network configuration once, from the file named by $LSLAPICFG, on its first
call: `LOOPBACK_CONFIG` keeps every packet on this machine (tests and
benchmarks use it; docs/stream.md shows it to users).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sa.errors import SAError

# liblsl's own keys (src/api_config.cpp, sccn/liblsl): IPv4 only, discovery answered and sent on 127.0.0.1 only,
# unicast discovery to 127.0.0.1 only, TTL 0 ("machine" scope). Log only fatal errors: sa says what went wrong
# with a stream itself, in one line, and liblsl's own INFO/ERR lines would interleave with the session's output.
LOOPBACK_CONFIG = """\
[ports]
IPv6 = disable

[multicast]
ResolveScope = machine
ListenAddress = 127.0.0.1
AddressesOverride = {127.0.0.1}

[lab]
KnownPeers = {127.0.0.1}

[log]
level = -3
"""


def write_loopback_config(path: str | os.PathLike[str]) -> Path:
    """Write an lsl_api.cfg that keeps LSL on 127.0.0.1; point $LSLAPICFG at it before liblsl starts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(LOOPBACK_CONFIG)
    return path


def mne_lsl() -> Any:
    """The mne_lsl.lsl module, or one sentence saying how to install it."""
    try:
        from mne_lsl import lsl
    except ImportError:
        raise SAError("online decoding needs mne-lsl, which is not installed; run `pip install 'sa[lsl]'` "
                      "(or `pip install mne-lsl`).") from None
    return lsl


@dataclass
class StreamSpec:
    """Which LSL stream to use: by exact name, else by type (compared case-insensitively)."""

    name: str | None = None
    stype: str | None = None

    def describe(self) -> str:
        return f"named {self.name!r}" if self.name else f"of type {self.stype!r}"

    def matches(self, info: Any) -> bool:
        if self.name:
            return info.name == self.name
        return (info.stype or "").lower() == (self.stype or "").lower()


def visible_streams(timeout: float = 1.0) -> list[Any]:
    """Every LSL stream this machine can see (waits `timeout` seconds for answers)."""
    return sorted(mne_lsl().resolve_streams(timeout=timeout), key=lambda s: (s.name, s.source_id))


def describe_stream(info: Any) -> str:
    """'name' (type, N ch, F Hz, host) for messages and --list."""
    rate = "irregular" if info.sfreq == 0 else f"{info.sfreq:g} Hz"
    return f"{info.name!r} ({info.stype or 'no type'}, {info.n_channels} ch, {rate}, on {info.hostname})"


def find_stream(role: str, spec: StreamSpec, timeout: float, option: str) -> Any:
    """The one visible stream matching `spec`, waiting up to `timeout` s; SAError when none or several match."""
    import time

    lsl = mne_lsl()
    deadline = time.monotonic() + max(timeout, 0.1)
    found: list[Any] = []
    while True:
        left = max(deadline - time.monotonic(), 0.1)
        if spec.name:
            found = [s for s in lsl.resolve_streams(timeout=min(left, 1.0), name=spec.name) if spec.matches(s)]
        else:
            found = [s for s in lsl.resolve_streams(timeout=min(left, 0.5)) if spec.matches(s)]
        found = list({s.uid: s for s in found}.values())
        if found or time.monotonic() >= deadline:
            break
    if not found:
        seen = visible_streams(0.3)
        listing = "; visible: " + ", ".join(describe_stream(s) for s in seen[:6]) if seen else "; no LSL stream is visible"
        raise SAError(f"no {role} LSL stream {spec.describe()} appeared within {timeout:g} s{listing}; start it, or "
                      f"pick one with {option} (`sa stream --list` shows what this machine sees).")
    if len(found) > 1:
        raise SAError(f"{len(found)} LSL streams {spec.describe()} are visible ("
                      f"{', '.join(describe_stream(s) for s in found[:4])}); pick one by name with {option}.")
    return found[0]


class Lost(Exception):
    """The stream's outlet is gone (liblsl reported the connection lost)."""


class Inlet:
    """An open inlet on one stream: full metadata, and pulls that return (samples, timestamps) in local time."""

    def __init__(self, info: Any, max_buffered: int = 60) -> None:
        lsl = mne_lsl()
        self.inlet = lsl.StreamInlet(info, max_buffered=max_buffered, recover=False, processing_flags=["clocksync"])
        try:
            self.inlet.open_stream(timeout=5.0)
            self.info = self.inlet.get_sinfo(timeout=5.0)
        except Exception as exc:  # noqa: BLE001 - liblsl raises TimeoutError or its private LostError
            if not isinstance(exc, TimeoutError) and type(exc).__name__ != "LostError":
                raise
            self.close()
            raise SAError(f"LSL stream {describe_stream(info)} is visible but did not answer within 5 s; "
                          "check that its outlet is running and the firewall allows local TCP.") from None
        try:  # the first clock-offset estimate blocks a pull for ~0.5 s: take it now, not at the first marker
            self.inlet.time_correction(timeout=2.0)
        except Exception:  # noqa: BLE001 - no estimate yet; liblsl keeps trying in the background
            pass
        self.name, self.sfreq, self.n_channels = info.name, float(info.sfreq), int(info.n_channels)
        self.source_id, self.uid = info.source_id, info.uid
        self.ch_names = self.info.get_channel_names()
        self.is_string = isinstance(info.dtype, str) and info.dtype == "string"

    def pull(self, wait: float = 0.0, max_samples: int = 4096) -> tuple[Any, np.ndarray]:
        """Samples and their timestamps; waits up to `wait` s for the first sample, then takes all that are there.

        liblsl wakes a waiting pull as soon as a sample arrives, so `wait` adds no latency. A string pull costs
        one malloc and one free per *requested* sample (liblsl's lsl_pull_chunk_str fills the whole buffer,
        mne-lsl frees it in a Python loop: ~4 ms for 4096), so string streams are asked for one sample, then,
        only while more wait, for batches of STRING_BATCH.
        """
        try:
            if self.is_string:
                return self._pull_strings(wait)
            data, ts = self.inlet.pull_chunk(timeout=wait, max_samples=1) if wait > 0 else ([], np.zeros(0))
            if wait > 0 and len(ts) == 0:
                return data, np.zeros(0)
            more, more_ts = self.inlet.pull_chunk(timeout=0.0, max_samples=max_samples)
        except Exception as exc:  # noqa: BLE001 - liblsl's LostError lives in a private module
            if type(exc).__name__ == "LostError":
                raise Lost(self.name) from None
            raise
        if len(ts) == 0:
            return more, np.array(more_ts, dtype=np.float64)
        return np.concatenate([np.asarray(data), np.asarray(more)]), np.concatenate([ts, more_ts])

    STRING_BATCH = 32

    def _pull_strings(self, wait: float) -> tuple[list, np.ndarray]:
        """Every waiting string sample: one asked for first (so a lost stream still raises), the rest in batches."""
        data, ts = self.inlet.pull_chunk(timeout=max(wait, 0.0), max_samples=1)
        if len(ts) == 0:
            return [], np.zeros(0)
        rows = list(data)
        stamps = [np.array(ts, dtype=np.float64)]  # a copy: mne-lsl reuses its timestamp buffer on the next pull
        while self.inlet.samples_available:
            data, ts = self.inlet.pull_chunk(timeout=0.0, max_samples=self.STRING_BATCH)
            if len(ts) == 0:
                break
            rows += data
            stamps.append(np.array(ts, dtype=np.float64))
        return rows, np.concatenate(stamps)

    def close(self) -> None:
        inlet, self.inlet = getattr(self, "inlet", None), None
        if inlet is not None:
            try:
                inlet._del()
            except Exception:  # noqa: BLE001 - closing a dead connection may fail; nothing to keep
                pass


def still_visible(spec_info: Any, timeout: float = 1.0) -> Any | None:
    """The stream with the same source id (or name) if it can still be resolved, else None.

    liblsl answers a resolve no sooner than its MulticastMinRTT (0.5 s by default): give `timeout` >= 1 s.
    """
    lsl = mne_lsl()
    if spec_info.source_id:
        found = lsl.resolve_streams(timeout=timeout, source_id=spec_info.source_id)
    else:
        found = lsl.resolve_streams(timeout=timeout, name=spec_info.name)
    found = [s for s in found if s.name == spec_info.name]
    return found[0] if found else None


def marker_labels(samples: Any, ch_names: Sequence[str] | None, is_string: bool) -> list[str | None]:
    """One label per marker sample: the string, a numeric code, or the channel that fired (one-hot streams)."""
    labels: list[str | None] = []
    if is_string:
        for row in samples:
            labels.append(str(row[0]).strip() if len(row) else None)
        return labels
    rows = np.atleast_2d(np.asarray(samples, dtype=np.float64))
    for row in rows:
        if len(row) == 1:
            labels.append(f"{row[0]:g}")
            continue
        hot = np.flatnonzero(row != 0)
        if not len(hot):
            labels.append(None)
        else:
            labels.append(ch_names[hot[0]] if ch_names and ch_names[hot[0]] else str(int(hot[0])))
    return labels


class Outlet:
    """A string marker outlet (irregular rate): decisions as JSON, or command strings."""

    def __init__(self, name: str, stype: str, channel: str) -> None:
        lsl = mne_lsl()
        info = lsl.StreamInfo(name, stype, 1, 0.0, "string", f"sa-{name}-{socket.gethostname()}-{os.getpid()}")
        info.set_channel_names([channel])
        self.name = name
        self.outlet = lsl.StreamOutlet(info, chunk_size=1)
        self.local_clock = lsl.local_clock

    def push(self, text: str) -> float:
        """Publish one sample now; returns the LSL time just after it left."""
        self.outlet.push_sample([text])
        return self.local_clock()

    def push_json(self, record: dict) -> float:
        return self.push(json.dumps(record, separators=(",", ":")))

    def close(self) -> None:
        outlet, self.outlet = getattr(self, "outlet", None), None
        if outlet is not None:
            try:
                outlet._del()
            except Exception:  # noqa: BLE001 - tearing down; nothing to keep
                pass
