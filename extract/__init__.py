"""Feature extraction: run frozen vision backbones once over an image set and cache every layer.

`extract` is the entry point; `load_backbone` / `list_backbones` expose the
registry and loading; `ImageSet` defines image ids and their order.
"""

from __future__ import annotations

from typing import Any

__all__ = ["extract", "load_backbone", "list_backbones", "ImageSet"]


def __getattr__(name: str) -> Any:
    """Import lazily so `import sa.extract.cli` (and `sa --help`) does not load torch."""
    if name == "extract":
        from sa.extract.runner import extract

        return extract
    if name == "load_backbone":
        from sa.extract.backbones import load_backbone

        return load_backbone
    if name == "list_backbones":
        from sa.extract.backbones import list_backbones

        return list_backbones
    if name == "ImageSet":
        from sa.extract.images import ImageSet

        return ImageSet
    raise AttributeError(f"module 'sa.extract' has no attribute {name!r}")
