"""Per-array digests and checks: sha256 over each array's decoded little-endian bytes (C order), block by block.

Digests are written into the manifest when a group is completed and
recomputed by `sa cache verify`, which names every array whose digest
changed, whose chunks are missing or no longer decode, or (float arrays) that
holds a NaN or Inf outside the rows of images the manifest lists as skipped.
Export, push and pull recompute the digests of what they read as they read it.
An array is hashed in its stored dtype: float16, or float32 where the
extractor stored a wider one (float16 digests are those of the float16 bytes).
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any, Iterable, Mapping

import numpy as np

from sa.errors import DamagedError, SAError, explain


class VerifyFailed(DamagedError):
    """One or more arrays of a cache group no longer match their digests, or hold non-finite values (exit 1)."""


def _le_bytes(block: np.ndarray) -> bytes:
    """The little-endian C-order bytes of `block` in its own dtype."""
    block = np.asarray(block)
    return np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<")).tobytes()


def digest_blocks(blocks: Iterable[np.ndarray]) -> str:
    """'sha256:<hex>' of the little-endian bytes (C order, stored dtype) of consecutive row blocks."""
    h = hashlib.sha256()
    for block in blocks:
        h.update(_le_bytes(block))
    return "sha256:" + h.hexdigest()


class BlockDigest:
    """A digest computed while blocks stream past (export, push, pull): feed blocks in order, then `hexdigest`."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, block: np.ndarray) -> None:
        """Add the next row block."""
        self._h.update(_le_bytes(block))

    def hexdigest(self) -> str:
        """'sha256:<hex>', equal to `digest_blocks` over the same blocks."""
        return "sha256:" + self._h.hexdigest()


def digest_ids(ids: Iterable[str]) -> str:
    """'sha256:<hex>' of the ids, each as an 8-byte length then its UTF-8 bytes."""
    h = hashlib.sha256()
    for image_id in ids:
        raw = str(image_id).encode("utf-8")
        h.update(struct.pack("<Q", len(raw)))
        h.update(raw)
    return "sha256:" + h.hexdigest()


def manifest_digests(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """name -> digest of every array a manifest lists (ids included)."""
    return {name: meta.get("digest") for name, meta in (manifest.get("arrays") or {}).items()}


def _unreadable(exc: Exception) -> str:
    """The short reason an array could not be read; re-raises faults of the environment (network, permission)."""
    if isinstance(exc, SAError):
        return getattr(exc, "reason", None) or "cannot be read"
    known = explain(exc)
    if known is not None and not isinstance(exc, (FileNotFoundError, KeyError)):
        raise known from None  # not damage: the server or the permissions stopped the check
    return f"does not decode ({type(exc).__name__})"


def _check_array(group: Any, name: str, digest: Any, skipped_rows: np.ndarray | None) -> str | None:
    """What is wrong with one array of `group` (None when it is fine): digest, unreadable chunks, non-finite values."""
    from sa.cache.manifest import IDS_ARRAY

    try:
        if name == IDS_ARRAY:
            return None if group.digest(name) == digest else "digest differs"
        h = BlockDigest()
        bad, first = 0, None
        for start, block in group._reader(name).iter_blocks():
            h.update(block)
            if skipped_rows is not None and block.dtype.kind == "f":
                finite = np.isfinite(block).all(axis=1)
                finite |= skipped_rows[start:start + block.shape[0]]
                if not finite.all():
                    bad += int((~np.isfinite(block[~finite])).sum())
                    first = start + int(np.flatnonzero(~finite)[0]) if first is None else first
    except Exception as exc:  # noqa: BLE001 - zarr raises many types for undecodable chunks
        return _unreadable(exc)
    if h.hexdigest() != digest:
        return "digest differs"
    if bad:
        try:
            image = f", image {str(group.ids[first])!r}"
        except SAError:
            image = ""
        return f"holds {bad} NaN/Inf value(s) (first in row {first}{image})"
    return None


def array_problems(group: Any, expected: Mapping[str, Any], label: str, progress: bool, *,
                   finite: bool = False) -> dict[str, str]:
    """name -> what is wrong, for each of `group`'s arrays whose digest differs from `expected`, that no longer
    decodes, or (finite=True) that holds NaN/Inf outside the rows of skipped images."""
    from sa.progress import make_progress

    skipped_rows = None
    if finite:
        skipped = set(group.manifest.get("skipped") or [])
        skipped_rows = np.zeros(group.n_rows, dtype=bool)
        if skipped:
            try:
                skipped_rows = np.isin(group.ids, list(skipped))
            except SAError:
                pass  # the ids array is damaged: its own check names it
    problems: dict[str, str] = {}
    with make_progress("array", disable=not progress, transient=True) as bar:
        task = bar.add_task(label, total=len(expected))
        for name, digest in expected.items():
            why = _check_array(group, name, digest, skipped_rows)
            if why is not None:
                problems[name] = why
            bar.advance(task)
    return problems


def mismatched_arrays(group: Any, expected: Mapping[str, Any], label: str, progress: bool) -> list[str]:
    """Names of `group`'s arrays whose recomputed digest differs from `expected` or which no longer decode."""
    return list(array_problems(group, expected, label, progress))
