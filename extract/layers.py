"""Which modules of a backbone are its layers, and tapping all of them in one forward pass.

Layers are named by module path (thingsvision style, e.g.
``visual.transformer.resblocks.6``). Layer 0 is the tokens entering block 1 (a
forward *pre*-hook on the first block) or a CNN's stem output; layer ``l`` is the
output of block/stage ``l``. Hooks pool each tap as soon as it is produced, so a
forward pass never holds more than one layer's full tokens, and in-place ops
later in the network cannot change what was captured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from sa.errors import SAError
from sa.extract.pooling import applicable_pools, pool_map, pool_tokens


@dataclass(frozen=True)
class Layer:
    """One tapped layer: its label ("07"), module path, index l, relative depth and hook side."""

    label: str
    module: str
    index: int
    depth: float
    hook: str = "output"  # "output" of the module, or "input" (layer 0 of token models)

    def manifest(self) -> dict:
        """The manifest entry `{label, module, index, depth}` (module gets ':input' for pre-hooks)."""
        module = self.module + (":input" if self.hook == "input" else "")
        return {"label": self.label, "module": module, "index": self.index, "depth": self.depth}


@dataclass
class LayerPlan:
    """The layers of a backbone and how to read its tokens."""

    family: str  # "tokens" (ViT-like) or "maps" (CNN)
    layers: list[Layer]
    n_prefix: int = 0  # class + register tokens at the front of each token sequence
    has_cls: bool = False
    seq_first: set[str] = field(default_factory=set)  # module paths whose outputs are (N, B, D)

    @property
    def n_blocks(self) -> int:
        """Number of blocks / stages (layers excluding layer 0)."""
        return len(self.layers) - 1

    @property
    def pools(self) -> tuple[str, ...]:
        """The poolings that apply to this backbone."""
        return applicable_pools(self.family, self.has_cls)


def relative_depth(index: int, n_blocks: int) -> float:
    """`(l - 1) / (L - 1)`, the depth convention of DESIGN.md (0 when there is a single block)."""
    return 0.0 if n_blocks <= 1 else (index - 1) / (n_blocks - 1)


def _labels(n_blocks: int) -> list[str]:
    width = 3 if n_blocks >= 100 else 2
    return [f"{i:0{width}d}" for i in range(n_blocks + 1)]


def _plan(family: str, stem: tuple[str, str], blocks: list[str], **kw) -> LayerPlan:
    """A plan from the stem/layer-0 tap (path, hook side) and the block paths."""
    labels = _labels(len(blocks))
    layers = [Layer(labels[0], stem[0], 0, relative_depth(0, len(blocks)), stem[1])]
    layers += [Layer(labels[i], p, i, relative_depth(i, len(blocks))) for i, p in enumerate(blocks, start=1)]
    return LayerPlan(family, layers, **kw)


def _children_paths(root: nn.Module, path: str) -> list[str]:
    seq = root.get_submodule(path)
    return [f"{path}.{name}" for name, _ in seq.named_children()]


def _timm_token_plan(model: nn.Module, prefix: str = "") -> LayerPlan:
    """timm ViT / EVA: blocks, with class and register tokens at the front (batch-first)."""
    blocks = _children_paths(model, "blocks")
    has_cls = getattr(model, "cls_token", None) is not None
    n_prefix = int(getattr(model, "num_prefix_tokens", int(has_cls)))
    paths = [prefix + p for p in blocks]
    return _plan("tokens", (paths[0], "input"), paths, n_prefix=n_prefix, has_cls=has_cls)


def plan_open_clip(model: nn.Module) -> LayerPlan:
    """open_clip: VisionTransformer (resblocks; may run sequence-first), ModifiedResNet stages, or a timm trunk."""
    visual = model.visual
    if hasattr(visual, "transformer") and hasattr(visual, "class_embedding"):
        blocks = _children_paths(model, "visual.transformer.resblocks")
        seq_first = set() if getattr(visual.transformer, "batch_first", True) else set(blocks)
        # Layer 0 = output of ln_pre, the tokens handed to the transformer (still batch-first there).
        return _plan("tokens", ("visual.ln_pre", "output"), blocks, n_prefix=1, has_cls=True, seq_first=seq_first)
    if hasattr(visual, "layer4") and hasattr(visual, "attnpool"):
        return _plan("maps", ("visual.avgpool", "output"), [f"visual.layer{i}" for i in range(1, 5)])
    if hasattr(visual, "trunk") and hasattr(visual.trunk, "blocks"):
        return _timm_token_plan(visual.trunk, prefix="visual.trunk.")
    raise SAError(f"open_clip visual tower {type(visual).__name__} is not supported by sa extract; use a ViT, RN or timm-trunk model.")


def plan_timm(model: nn.Module) -> LayerPlan:
    """timm: token models (blocks + prefix tokens) or CNNs: the stem, then every stage / block group.

    `stem` + `stages` (ConvNeXt and kin): layer 0 = stem, l = stages.{l-1}; `conv_stem` + `bn1` + `blocks`
    (EfficientNet, MobileNetV3): layer 0 = bn1, l = blocks.{l-1} (as `forward_intermediates(extra_blocks=True)`);
    anything else: the model's `feature_info` modules, whose first entry must be its stem.
    """
    if hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens"):
        return _timm_token_plan(model)
    fmt = str(getattr(model, "output_fmt", "NCHW"))
    if fmt != "NCHW":
        raise SAError(f"timm model {type(model).__name__} gives {fmt} feature maps; sa extract pools NCHW maps only.")
    if isinstance(getattr(model, "stem", None), nn.Module) and isinstance(getattr(model, "stages", None), nn.Sequential):
        return _plan("maps", ("stem", "output"), _children_paths(model, "stages"))
    if all(isinstance(getattr(model, a, None), nn.Module) for a in ("conv_stem", "bn1")) and isinstance(getattr(model, "blocks", None), nn.Sequential):
        return _plan("maps", ("bn1", "output"), _children_paths(model, "blocks"))
    info = getattr(model, "feature_info", None)
    if info is None:
        raise SAError(f"timm model {type(model).__name__} has neither blocks nor feature_info; sa extract cannot name its layers.")
    modules = [f["module"] for f in info]
    if len(modules) < 2:
        raise SAError(f"timm model {type(model).__name__} exposes fewer than two feature stages.")
    return _plan("maps", (modules[0], "output"), modules[1:])


def _is_convnext_stage(module: nn.Module) -> bool:
    return type(next(iter(module.children()), None)).__name__ == "CNBlock"


def plan_torchvision(model: nn.Module) -> LayerPlan:
    """torchvision CNNs and ViTs, layer 0 = the stem and l = the output of stage (or block) l.

    MobileNetV2/V3, EfficientNet: every child of `features` (stem, blocks or stages, head conv).
    ConvNeXt: the stem and the four stages (`features.1/3/5/7`; the downsampling layers between them are not stages).
    VGG, AlexNet: the first conv's ReLU, then each max-pool (the end of each conv stage).
    ResNet family: the stem's max-pool, then layer1..layer4. ViT: the tokens entering block 1, then each block.
    """
    kind = type(model).__name__
    if kind == "ConvNeXt":
        feats = _children_paths(model, "features")
        stages = [p for p in feats[1:] if _is_convnext_stage(model.get_submodule(p))]
        return _plan("maps", (feats[0], "output"), stages)
    if kind in ("VGG", "AlexNet"):
        children = list(model.features.named_children())
        relus = [f"features.{n}" for n, m in children if isinstance(m, nn.ReLU)]
        pools = [f"features.{n}" for n, m in children if isinstance(m, nn.MaxPool2d)]
        return _plan("maps", (relus[0], "output"), pools)
    if kind in ("MobileNetV2", "MobileNetV3", "EfficientNet"):
        feats = _children_paths(model, "features")
        return _plan("maps", (feats[0], "output"), feats[1:])
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)) and hasattr(model, "maxpool"):
        return _plan("maps", ("maxpool", "output"), [f"layer{i}" for i in range(1, 5)])
    if hasattr(model, "encoder") and hasattr(model.encoder, "layers") and hasattr(model, "class_token"):
        blocks = _children_paths(model, "encoder.layers")
        return _plan("tokens", (blocks[0], "input"), blocks, n_prefix=1, has_cls=True)
    raise SAError(f"torchvision model {kind} is not one sa extract knows the layers of (MobileNetV2/V3, EfficientNet, "
                  f"ConvNeXt, VGG, AlexNet, ResNet family, ViT); use its timm version instead.")


PLANNERS: dict[str, Callable[[nn.Module], LayerPlan]] = {
    "open_clip": plan_open_clip,
    "timm": plan_timm,
    "torchvision": plan_torchvision,
}


class LayerTaps:
    """Forward hooks that pool every planned layer during one call of `embed`.

    Use as a context manager; `run(x)` returns `{array name: (B, D) float32}`
    including `final` (what `embed` returns).
    """

    def __init__(self, model: nn.Module, plan: LayerPlan, embed: Callable[[torch.Tensor], torch.Tensor], pools: tuple[str, ...]):
        self.model, self.plan, self.embed, self.pools = model, plan, embed, pools
        self._out: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._batch: Optional[int] = None

    def _store(self, layer: Layer, value) -> None:
        x = value[0] if isinstance(value, (tuple, list)) else value
        if self.plan.family == "tokens":
            if layer.module in self.plan.seq_first and layer.hook == "output":
                x = x.transpose(0, 1)
            if x.ndim != 3 or x.shape[0] != self._batch:
                raise RuntimeError(f"layer {layer.module} gave tokens of shape {tuple(x.shape)} for a batch of {self._batch}")
            pooled = pool_tokens(x, self.plan.n_prefix, self.plan.has_cls, self.pools)
        else:
            if x.ndim != 4 or x.shape[0] != self._batch:
                raise RuntimeError(f"layer {layer.module} gave a map of shape {tuple(x.shape)}, not (batch, C, H, W)")
            pooled = {"gap": pool_map(x)}
        for pool, v in pooled.items():
            self._out[f"{pool}/{layer.label}"] = v

    def __enter__(self) -> "LayerTaps":
        for layer in self.plan.layers:
            module = self.model.get_submodule(layer.module)
            if layer.hook == "input":
                h = module.register_forward_pre_hook(lambda m, args, _l=layer: self._store(_l, args))
            else:
                h = module.register_forward_hook(lambda m, args, out, _l=layer: self._store(_l, out))
            self._handles.append(h)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward pass: every layer's pooled features plus `final`."""
        self._out = {}
        self._batch = x.shape[0]
        final = self.embed(x)
        out, self._out = self._out, {}
        out["final"] = final.float().reshape(final.shape[0], -1)
        return out
