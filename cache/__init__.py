"""The feature cache: one zarr v3 group of float16 features per (image set, backbone run).

`from sa.cache import open_root` and see docs/internals.md ("sa.cache") for the
API. Heavy modules (zarr) load on first use so `sa --help` stays fast.
"""

from __future__ import annotations

from typing import Any

from sa.cache.location import DEFAULT_ROOT, ENV_VAR, default_root

__all__ = [
    "CacheRoot", "FeatureGroup", "FeatureWriter", "GroupInfo", "GroupLocked", "VerifyFailed", "CorruptChunk",
    "ENV_VAR", "DEFAULT_ROOT", "default_root", "open_root", "export_group", "import_group",
    "push", "pull", "copy_group", "wait_for_complete", "WriterGone",
]

_LAZY = {
    "CacheRoot": "sa.cache.store", "FeatureGroup": "sa.cache.store", "FeatureWriter": "sa.cache.store",
    "open_root": "sa.cache.store", "GroupInfo": "sa.cache.manifest", "GroupLocked": "sa.cache.lock",
    "VerifyFailed": "sa.cache.verify", "CorruptChunk": "sa.cache.read",
    "export_group": "sa.cache.export", "import_group": "sa.cache.export",
    "push": "sa.cache.share", "pull": "sa.cache.share", "copy_group": "sa.cache.share",
    "wait_for_complete": "sa.cache.wait", "WriterGone": "sa.cache.wait",
}


def __getattr__(name: str) -> Any:
    """Import API names from their modules on first access."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sa.cache' has no attribute {name!r}")
