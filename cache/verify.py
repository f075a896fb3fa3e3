"""Per-array digests: sha256 over each array's decoded float16 bytes (C order), block by block, plus the ids.

Written into the manifest when a group is completed and recomputed by
`sa cache verify`, which names every array whose digest changed or whose
chunks no longer decode.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any, Iterable, Mapping

import numpy as np

from sa.errors import SAError


class VerifyFailed(SAError):
    """One or more arrays of a cache group no longer match their digests."""

    exit_code = 1


def digest_blocks(blocks: Iterable[np.ndarray]) -> str:
    """'sha256:<hex>' of the little-endian float16 bytes of consecutive row blocks (C order)."""
    h = hashlib.sha256()
    for block in blocks:
        h.update(np.ascontiguousarray(block, dtype="<f2").tobytes())
    return "sha256:" + h.hexdigest()


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


def mismatched_arrays(group: Any, expected: Mapping[str, Any], label: str, progress: bool) -> list[str]:
    """Names of `group`'s arrays whose recomputed digest differs from `expected` or which no longer decode."""
    from sa.progress import make_progress

    bad = []
    with make_progress("array", disable=not progress, transient=True) as bar:
        task = bar.add_task(label, total=len(expected))
        for name, digest in expected.items():
            try:
                ok = group.digest(name) == digest
            except Exception:  # noqa: BLE001 - an undecodable or missing array is a failed check, whatever zarr raises
                ok = False
            if not ok:
                bad.append(name)
            bar.advance(task)
    return bad
