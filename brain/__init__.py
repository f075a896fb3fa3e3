"""Brain data: read every peer's THINGS-EEG/MEG layout, image ids, channels, splits, checks, synthetic data.

`open_dataset(path)` detects the layout and gives a `BrainDataset`; its
`load(subject, ...)` returns arrays aligned with image ids; `check()` lists
problems. `make_synth` writes a THINGS-format dataset driven by a planted layer.
Layouts and what sa takes from each: docs/data-layouts.md.
"""

from __future__ import annotations

from sa._lazy import lazy_exports

_WHERE = {
    "open_dataset": "sa.brain.data", "BrainDataset": "sa.brain.data",
    "detect": "sa.brain.layouts", "Layout": "sa.brain.layouts",
    "check_dataset": "sa.brain.check", "CheckReport": "sa.brain.check",
    "pick_channels": "sa.brain.channels", "OCCIPITAL_PARIETAL": "sa.brain.channels",
    "make_synth": "sa.brain.synth", "read_synth": "sa.brain.synth", "SynthOptions": "sa.brain.synth",
}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
