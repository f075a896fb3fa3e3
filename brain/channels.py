"""Channel presets and picking channels by name (case-insensitive, in the order asked)."""

from __future__ import annotations

from typing import Sequence

from sa.errors import SAError

# The 17 occipito-parietal channels used by UBP and the Shallow Alignment paper.
OCCIPITAL_PARIETAL: tuple[str, ...] = (
    "P7", "P5", "P3", "P1", "Pz", "P2", "P4", "P6", "P8",
    "PO7", "PO3", "POz", "PO4", "PO8", "O1", "Oz", "O2",
)

PRESETS: dict[str, tuple[str, ...]] = {"occipital-parietal": OCCIPITAL_PARIETAL}


def parse_channels(spec: str | Sequence[str] | None) -> list[str] | None:
    """Turn a channel option into a list of names; None means all channels.

    Accepts "all", a preset name, a comma-separated string, or a sequence of names.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        key = spec.strip()
        if key.lower() in ("all", ""):
            return None
        if key.lower() in PRESETS:
            return list(PRESETS[key.lower()])
        return [c.strip() for c in key.split(",") if c.strip()]
    names = list(spec)
    if len(names) == 1 and names[0].lower() in PRESETS:
        return list(PRESETS[names[0].lower()])
    return names


def pick_channels(spec: str | Sequence[str] | None, available: Sequence[str], where: str) -> list[int]:
    """Indices into `available` of the asked channels; SAError listing the existing names if any is missing."""
    wanted = parse_channels(spec)
    if wanted is None:
        return list(range(len(available)))
    lookup = {name.lower(): i for i, name in enumerate(available)}
    missing = [name for name in wanted if name.lower() not in lookup]
    if missing:
        raise SAError(
            f"channel(s) {', '.join(missing)} not found in {where}; it has: {', '.join(available)} "
            "(use --channels all, the preset occipital-parietal, or names from that list)."
        )
    picked = [lookup[name.lower()] for name in wanted]
    if len(set(picked)) != len(picked):
        raise SAError(f"the channel list for {where} names a channel twice; give each channel once.")
    return picked
