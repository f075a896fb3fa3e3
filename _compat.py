"""Make torchvision importable next to a CPU-only torch.

The torchvision wheels on some machines (all of them here) are CUDA builds.
Next to a CPU torch their C extension fails to load, and ``import torchvision``
then dies registering fake kernels for ``torchvision::nms`` because the
operator schema was never defined. timm and open_clip both import torchvision,
so everything in ``sa.extract`` calls :func:`ensure_torchvision` first. The
fix defines the missing schemas (no kernels: torchvision's C ops such as nms
stay unavailable, which sa never uses) and is applied only after the plain
import has failed that way.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

# Schemas of the operators torchvision registers fake kernels for
# unconditionally at import (see torchvision/_meta_registrations.py).
_MISSING_OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the torch.library.Library alive (it unregisters on GC)
applied = False  # True once the schemas had to be defined in this process


def _is_missing_op_error(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and "torchvision::" in str(exc) and "does not exist" in str(exc)


def _forget_torchvision() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def _define_missing_schemas() -> None:
    global _library, applied
    import torch

    _library = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _MISSING_OP_SCHEMAS.items():
        if not torch._C._dispatch_has_kernel(f"torchvision::{name}") and not _op_exists(name):
            _library.define(schema)
    applied = True


def _op_exists(name: str) -> bool:
    import torch

    try:
        torch._C._get_schema(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def ensure_torchvision() -> ModuleType:
    """Import torchvision, defining its missing operator schemas if (and only if) the import fails for lack of them."""
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as exc:
        if not _is_missing_op_error(exc):
            raise
    _forget_torchvision()
    _define_missing_schemas()
    return importlib.import_module("torchvision")
