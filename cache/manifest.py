"""The group manifest (`attrs["sa"]`): what is filled in at creation and the summary `GroupInfo`.

The caller (the extractor) supplies the provenance it knows (backbone spec,
weights, transform, layers...); `base_manifest` adds what the cache owns:
format version, ids, status, shapes, block size, creation time/host/user and
library versions. Digests and status "complete" are added by finalize.

Feature arrays are stored float16; an array holding finite values beyond
float16's range (|x| > 65504) is stored float32 instead, its entry saying why
(`storage_values` is the one rule for both), so no value is ever stored as inf.
"""

from __future__ import annotations

import getpass
import platform
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np

from sa.errors import SAError

FORMAT_VERSION = 1
POOLS = ("cls", "mean", "gap")
FEATURE_DTYPE = "float16"
WIDE_DTYPE = "float32"  # an array float16 cannot hold (|x| > 65504) is stored in this, and its manifest entry says why
STORAGE_DTYPES = (FEATURE_DTYPE, WIDE_DTYPE)
IDS_ARRAY = "ids"


def now_iso() -> str:
    """The current UTC time as ISO 8601 (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_array_name(name: str) -> None:
    """Accept `final` or `<pool>/<label>` (pool in cls/mean/gap); raise an SAError naming the bad name otherwise."""
    if name == "final":
        return
    pool, _, label = name.partition("/")
    if pool in POOLS and label and "/" not in label and label.replace("_", "").isalnum():
        return
    raise SAError(f"array name {name!r} is not valid; use 'final' or '<pool>/<label>' with pool in {', '.join(POOLS)} (e.g. 'mean/07').")


def label_key(label: str) -> tuple[int, Any]:
    """Sort key putting numeric labels in depth order and anything else after them."""
    return (0, int(label)) if label.isdigit() else (1, label)


def pools_of(arrays: Mapping[str, Any]) -> list[str]:
    """Pools present among array names, in the canonical order."""
    present = {name.split("/", 1)[0] for name in arrays if "/" in name}
    return [p for p in POOLS if p in present]


def layers_of(arrays: Mapping[str, Any], pool: str | None = None) -> list[str]:
    """Layer labels (depth order, without 'final') of `pool`, or of all pools together."""
    labels = {name.split("/", 1)[1] for name in arrays if "/" in name and (pool is None or name.split("/", 1)[0] == pool)}
    return sorted(labels, key=label_key)


def libraries() -> dict[str, str]:
    """Versions of the libraries that shape the stored bytes."""
    import numpy
    import zarr

    from sa import __version__

    return {"sa": __version__, "zarr": zarr.__version__, "numpy": numpy.__version__, "python": platform.python_version()}


class Float16Overflow(SAError):
    """A block holds finite values beyond float16's range for some arrays; `wide` maps each to the reason.

    The extractor answers by storing those arrays as float32 (`CacheRoot.create(..., wide=...)`) and redoing the block.
    """

    def __init__(self, message: str, wide: Mapping[str, str]) -> None:
        super().__init__(message)
        self.wide = dict(wide)

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.wide))


def storage_values(x: Any, dtype: str) -> tuple[np.ndarray, float | None]:
    """(the values as stored in `dtype`, the largest finite magnitude float16 cannot hold, or None).

    float16 arrays: the float16 rounding (the magnitude is set when a finite value would become inf).
    float32 (widened) arrays: the float16 rounding wherever float16 holds the value, the float32 value
    elsewhere, so an array widened half-way through holds the same bytes as one stored wide from the start.
    """
    x = np.asarray(x)
    with np.errstate(over="ignore", invalid="ignore"):
        half = x.astype(np.float16)
    if dtype == FEATURE_DTYPE:
        lost = np.isinf(half) & np.isfinite(x)
        peak = float(np.abs(x[lost]).max()) if lost.any() else None
        return np.ascontiguousarray(half), peak
    keep_half = np.isfinite(half) | ~np.isfinite(x)
    return np.ascontiguousarray(np.where(keep_half, half.astype(np.float32), x.astype(np.float32))), None


def array_entry(n: int, width: int, wide_reason: str | None = None) -> dict[str, Any]:
    """The manifest entry of one feature array: shape and storage dtype (float32 with the reason when widened)."""
    entry: dict[str, Any] = {"shape": [int(n), int(width)], "dtype": FEATURE_DTYPE}
    if wide_reason:
        entry.update(dtype=WIDE_DTYPE, wide_because=wide_reason)
    return entry


def base_manifest(caller: Mapping[str, Any], *, image_set_id: str, backbone_key: str, n: int,
                  arrays: Mapping[str, int], block_rows: int, wide: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The caller's manifest plus the fields the cache owns, with status 'partial'.

    `wide` maps the arrays stored as float32 instead of float16 to the reason (values beyond float16's range).
    """
    wide = wide or {}
    from sa import __version__

    manifest = dict(caller)
    manifest.update({
        "format": FORMAT_VERSION,
        "sa_version": manifest.get("sa_version", __version__),
        "status": "partial",
        "image_set_id": image_set_id,
        "backbone_key": backbone_key,
        "n": int(n),
        "block_rows": int(block_rows),
        "dtype": FEATURE_DTYPE,
        "pools": manifest.get("pools") or pools_of(arrays),
        "arrays": {name: array_entry(n, width, wide.get(name)) for name, width in arrays.items()},
    })
    manifest.setdefault("layers", [{"label": label} for label in layers_of(arrays)])
    manifest.setdefault("skipped", [])
    manifest.setdefault("created", {"time": now_iso(), "host": socket.gethostname(), "user": _user()})
    libs = dict(manifest.get("libraries") or {})
    for name, version in libraries().items():
        libs.setdefault(name, version)
    manifest["libraries"] = libs
    return manifest


def _user() -> str:
    """The login name, or 'unknown' where there is none (containers)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - getpass raises various errors without a login
        return "unknown"


@dataclass
class GroupInfo:
    """One line of `sa cache ls`: a group's key, contents, size and status."""

    key: str
    image_set_id: str
    backbone_key: str
    backbone: str
    layers: list[str]
    pools: list[str]
    n: int
    nbytes: int
    status: str
    created: str
    manifest: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_manifest(cls, key: str, manifest: Mapping[str, Any], nbytes: int) -> "GroupInfo":
        """Summarise a manifest (tolerating missing fields in damaged groups)."""
        arrays = manifest.get("arrays") or {}
        backbone = manifest.get("backbone") or {}
        iset, _, bkey = key.partition("/")
        return cls(
            key=key,
            image_set_id=str(manifest.get("image_set_id", iset)),
            backbone_key=str(manifest.get("backbone_key", bkey)),
            backbone=str(backbone.get("name", "?")) if isinstance(backbone, Mapping) else str(backbone),
            layers=layers_of({k: v for k, v in arrays.items() if k != IDS_ARRAY}),
            pools=list(manifest.get("pools") or pools_of(arrays)),
            n=int(manifest.get("n", 0)),
            nbytes=int(nbytes),
            status=str(manifest.get("status", "partial")),
            created=str((manifest.get("created") or {}).get("time", "")),
            manifest=dict(manifest),
        )
