"""Deterministic names for cache groups: image-set ids, backbone keys and relative depth.

Both ids are digests of everything that changes the stored numbers, so the same
images and the same backbone settings give the same path on any machine, and a
change of weights, transform or dtype gives a different one.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from typing import Any, Callable, Mapping, Sequence

from sa.errors import SAError

IMAGE_SET_ID_CHARS = 16
BACKBONE_DIGEST_CHARS = 10
_NAME_OK = re.compile(r"[^a-z0-9._-]+")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, no spaces and ASCII only: the byte-stable form that gets hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=_json_default)


def _json_default(obj: Any) -> Any:
    """Turn tuples/sets/paths/numpy scalars into plain JSON values so specs hash the same everywhere."""
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"cannot hash a {type(obj).__name__} in a backbone spec; use plain str/int/float/bool/list/dict values")


def image_set_id(ids: Sequence[str], read_bytes: Callable[[str], bytes]) -> str:
    """Digest of the ordered ids and each image's bytes (16 hex chars): same images, same order, same id."""
    outer = hashlib.sha256()
    for image_id in ids:
        name = image_id.encode("utf-8")
        outer.update(struct.pack("<Q", len(name)))
        outer.update(name)
        outer.update(hashlib.sha256(read_bytes(image_id)).digest())
    return outer.hexdigest()[:IMAGE_SET_ID_CHARS]


def safe_name(name: str) -> str:
    """Lower-case `name` and replace anything but [a-z0-9._-] with '-', so it is a safe path part."""
    cleaned = _NAME_OK.sub("-", name.strip().lower()).strip("-.")
    if not cleaned:
        raise SAError(f"backbone name {name!r} has no usable characters; use letters, digits, '.', '_' or '-'.")
    return cleaned


def backbone_key(name: str, spec: Mapping[str, Any]) -> str:
    """`f"{name}-{10 hex}"`: a readable name plus a digest of the canonical JSON of everything that changes the numbers."""
    digest = hashlib.sha256(canonical_json(dict(spec)).encode("ascii")).hexdigest()
    return f"{safe_name(name)}-{digest[:BACKBONE_DIGEST_CHARS]}"


def relative_depth(layer: int, n_layers: int) -> float:
    """Relative depth `(l - 1) / (L - 1)` of block `l` of `L` (0 = first block, 1 = last); 0.0 when L == 1."""
    if n_layers <= 1:
        return 0.0
    return (layer - 1) / (n_layers - 1)


def is_image_set_id(text: str) -> bool:
    """True when `text` looks like an image-set id (16 lower-case hex chars)."""
    return len(text) == IMAGE_SET_ID_CHARS and all(c in "0123456789abcdef" for c in text)
