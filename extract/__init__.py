"""Feature extraction: run frozen vision backbones once over an image set and cache every layer.

`extract` is the entry point; `load_backbone` / `list_backbones` / `describe`
expose the registry and loading (open_clip, timm, torchvision, transformers);
`ImageSet` defines image ids and their order. Names load on first use so
`import sa.extract.cli` (and `sa --help`) does not load torch.
"""

from __future__ import annotations

from sa._lazy import lazy_exports

_WHERE = {
    "extract": "sa.extract.runner", "load_backbone": "sa.extract.backbones",
    "list_backbones": "sa.extract.backbones", "describe": "sa.extract.backbones", "ImageSet": "sa.extract.images",
}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
