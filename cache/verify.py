"""Per-array digests: sha256 over each array's decoded float16 bytes (C order), block by block, plus the ids.

Written into the manifest when a group is completed and recomputed by
`sa cache verify`, which names every array whose digest changed or whose
chunks no longer decode.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Iterable

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
