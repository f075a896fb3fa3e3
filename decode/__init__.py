"""Trained checkpoints at work: offline decoding of recorded trials (`sa decode`) and online decoding of a live
LSL EEG stream (`sa stream`).

`decode` ranks gallery images for prepared trials and `decode_dataset` does it
for a split of a brain dataset (sa.decode.offline). `StreamSession` runs the
closed loop; `OnlineDecoder`, `Epocher`, `Evidence`, `CommandMap` and
`SessionLog` are its parts (sa.decode.online). LSL I/O and the loopback network
configuration live in sa.decode.lsl.
"""

from __future__ import annotations

from sa._lazy import lazy_exports

_ONLINE = ["StreamSession", "OnlineOptions", "OnlineDecoder", "Epocher", "Evidence", "CommandMap", "SessionLog",
           "Decision", "Status", "StreamLost", "Skip", "read_session_log"]
_LSL = ["StreamSpec", "LOOPBACK_CONFIG", "write_loopback_config", "visible_streams"]
_WHERE = {"decode": "sa.decode.offline", "decode_dataset": "sa.decode.offline",
          "DatasetPredictions": "sa.decode.offline",
          **{name: "sa.decode.online" for name in _ONLINE}, **{name: "sa.decode.lsl" for name in _LSL}}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
