"""Trained checkpoints at work: online decoding of a live LSL EEG stream (`sa stream`).

`StreamSession` runs the closed loop; `OnlineDecoder`, `Epocher`, `Evidence`,
`CommandMap` and `SessionLog` are its parts (sa.decode.online). LSL I/O and the
loopback network configuration live in sa.decode.lsl. Names load on first use so
importing the package (and `sa --help`) stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "StreamSession", "OnlineOptions", "OnlineDecoder", "Epocher", "Evidence", "CommandMap", "SessionLog",
    "Decision", "Status", "StreamLost", "Skip", "read_session_log",
    "StreamSpec", "LOOPBACK_CONFIG", "write_loopback_config", "visible_streams",
]

_LAZY = {name: "sa.decode.online" for name in __all__[:12]}
_LAZY.update({name: "sa.decode.lsl" for name in __all__[12:]})


def __getattr__(name: str) -> Any:
    """Import API names from their modules on first access."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sa.decode' has no attribute {name!r}")
