"""The `hf:REPO_ID[@REVISION]` source: vision models through Hugging Face transformers.

A repo id (read from the local HF cache snapshot when offline) or a local `save_pretrained` folder is
loaded with its own image processor (its eval transform) and tapped with the same hooks as every other
source: layer 0 = the tokens entering block 1 (`hidden_states[0]`), layer l = block l's output before any
final norm (`hidden_states[l]`), class and register tokens at the front. `final` is the model's own image
embedding (see :func:`final_embedding`). Weights load straight onto the device in the target dtype
(transformers builds on the meta device and fills each tensor from the safetensors file), so a giant
checkpoint never has a full copy in host memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from sa.errors import SAError
from sa.extract.layers import LayerPlan, _plan
from sa.extract.registry import BackboneSpec
from sa.extract.transforms import Preprocess

INSTALL = 'pip install -e ".[hf]"'
# Composite checkpoints (image + text towers) load only their image side, with the projection that defines `final`.
VISION_CLASSES = {"clip": "CLIPVisionModelWithProjection", "siglip": "SiglipVisionModel"}
_WEIGHT_FILES = (".safetensors", ".bin", ".json", ".py", ".txt", ".model")


def ensure_transformers() -> Any:
    """Import transformers (after torchvision's fix-up), or one sentence on how to install it."""
    from sa._compat import ensure_torchvision

    ensure_torchvision()
    try:
        import transformers
    except ImportError:
        raise SAError(f"hf: backbones need Hugging Face transformers, which is not installed; run {INSTALL}.") from None
    return transformers


# ---------------------------------------------------------------- where the files are


@dataclass(frozen=True)
class HFSource:
    """The folder to load from, and what identifies its content (commit for a hub snapshot, sha256 for a folder)."""

    folder: Path
    digest: str
    origin: str  # "hub:<repo>@<commit>" or the local folder


def _folder_digest(folder: Path) -> str:
    """sha256 over the names and bytes of a local model folder's weights, configs and code."""
    outer = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(_WEIGHT_FILES)):
        outer.update(str(path.relative_to(folder)).encode())
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        outer.update(h.digest())
    return outer.hexdigest()


def locate(spec: BackboneSpec, *, online: Optional[bool] = None, weights: bool = True) -> HFSource:
    """The local folder holding `spec` (a folder as given, or the hub snapshot; fetched only when `online`, and
    without the weight files when `weights` is False: configs and code are enough for a meta-device build)."""
    local = Path(spec.arch).expanduser()
    if local.is_dir():
        if spec.pretrained:
            raise SAError(f"hf:{spec.arch}@{spec.pretrained} names a revision of a local folder; a folder has one "
                          f"version: leave out @{spec.pretrained}.")
        if not (local / "config.json").is_file():
            raise SAError(f"hf:{spec.arch} is a folder without config.json; pass a folder written by save_pretrained "
                          f"or a Hugging Face repo id.")
        return HFSource(local.resolve(), "sha256:" + _folder_digest(local.resolve()), str(local.resolve()))
    from huggingface_hub import snapshot_download

    patterns = _WEIGHT_FILES if weights else (".json", ".py", ".txt")
    kw = dict(repo_id=spec.arch, revision=spec.pretrained, allow_patterns=["*" + s for s in patterns])
    name = f"hf:{spec.arch}{'@' + spec.pretrained if spec.pretrained else ''}"
    online = source_online() if online is None else online
    folder = None
    if not online or not weights:
        try:
            folder = snapshot_download(local_files_only=True, **kw)
        except Exception:  # noqa: BLE001 - huggingface_hub raises several types for "not cached"
            if not online:
                raise SAError(f"{name} is not in the local Hugging Face cache and there is no network to fetch it: "
                              f"download it on a connected machine (huggingface-cli download {spec.arch}), or pass a "
                              f"local save_pretrained folder.") from None
    if folder is None:
        try:
            folder = snapshot_download(**kw)  # files already in the cache are not fetched again
        except Exception as exc:  # noqa: BLE001
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise SAError(f"{name} could not be fetched from the Hugging Face hub ({first}); check the repo id "
                          f"and revision (hf:OWNER/NAME@REVISION).") from None
    commit = Path(folder).name
    return HFSource(Path(folder), f"hub:{spec.arch}@{commit}", f"hub:{spec.arch}@{commit}")


# ---------------------------------------------------------------- the image processor as a transform


class ProcessorTransform:
    """PIL image -> (3, H, W) float tensor through the model's own image processor (its eval path)."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, image: Any) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0].float()

    def settings(self) -> dict:
        """Every processor setting that changes the numbers (its class and its saved config)."""
        cfg = {k: v for k, v in self.processor.to_dict().items() if k not in ("processor_class", "_processor_class")}
        cfg["class"] = type(self.processor).__name__
        return cfg

    def __repr__(self) -> str:
        return "HFImageProcessor(" + json.dumps(self.settings(), sort_keys=True, default=str) + ")"


def processor_transform(src: HFSource, trust_remote_code: bool) -> Preprocess:
    """The model's image processor, and the fixed (H, W) it yields (checked on two image shapes)."""
    from PIL import Image

    transformers = ensure_transformers()
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(str(src.folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SAError(f"{src.origin} has no image processor transformers can load ({first}); save one next to the "
                      f"model (AutoImageProcessor ... save_pretrained).") from None
    transform = ProcessorTransform(processor)
    sizes = {tuple(transform(Image.new("RGB", wh)).shape) for wh in ((640, 480), (480, 640))}
    if len(sizes) != 1 or len(next(iter(sizes))) != 3:
        raise SAError(f"the image processor of {src.origin} gives images of varying size {sorted(sizes)}; sa needs a "
                      f"fixed input size (a processor that centre-crops or resizes to height x width).")
    _, h, w = next(iter(sizes))
    return Preprocess(transform, (h, w), f"the model's own image processor ({type(processor).__name__}) from {src.origin}")


# ---------------------------------------------------------------- the model


def _config(src: HFSource, trust_remote_code: bool) -> Any:
    transformers = ensure_transformers()
    try:
        return transformers.AutoConfig.from_pretrained(str(src.folder), trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise SAError(f"{src.origin} runs its own model code (remote code); read it, then pass --trust-remote-code "
                          f"to allow it.") from None
        raise SAError(f"{src.origin} has a config transformers cannot read ({str(exc).splitlines()[0][:200]}); "
                      f"upgrade transformers or pass another model.") from None


def _model_class(config: Any, trust_remote_code: bool) -> Any:
    """The class to build: the image side of composite CLIP/SigLIP checkpoints, else what AutoModel maps."""
    transformers = ensure_transformers()
    name = VISION_CLASSES.get(getattr(config, "model_type", ""))
    if name is None and getattr(config, "model_type", "") == "clip_vision_model" and \
            "CLIPVisionModelWithProjection" in (getattr(config, "architectures", None) or []):
        name = "CLIPVisionModelWithProjection"
    if name is not None:
        return getattr(transformers, name)
    return transformers.AutoModel


def build_model(src: HFSource, *, dtype: torch.dtype, device: str, random_init: bool, trust_remote_code: bool) -> nn.Module:
    """The model in eval mode: weights loaded straight onto `device` in `dtype` (meta: the architecture only)."""
    config = _config(src, trust_remote_code)
    cls = _model_class(config, trust_remote_code)
    if cls.__name__ in VISION_CLASSES.values() and hasattr(config, "vision_config") and \
            getattr(config, "model_type", "") in VISION_CLASSES:
        sub = config.vision_config
        if cls.__name__ == "CLIPVisionModelWithProjection":
            sub.projection_dim = config.projection_dim  # the projection lives in the composite config
        config = sub
    if device == "meta" or random_init:
        kw = {"trust_remote_code": trust_remote_code} if cls.__name__ == "AutoModel" else {}
        with torch.device("meta" if device == "meta" else "cpu"):
            model = cls.from_config(config, **kw) if hasattr(cls, "from_config") else cls._from_config(config)
        model = model.to(dtype=dtype) if device == "meta" else model.to(device=device, dtype=dtype)
        return model.eval().requires_grad_(False)
    kw = {"trust_remote_code": trust_remote_code} if cls.__name__ == "AutoModel" else {}
    if device != "cpu" and _has_accelerate():  # every tensor goes from the file straight to the device
        kw["device_map"] = {"": device}
    with quiet_transformers():
        model, info = cls.from_pretrained(str(src.folder), config=config, dtype=dtype, output_loading_info=True, **kw)
    _check_loaded(info.get("missing_keys") or [], src)
    return model.to(device).eval().requires_grad_(False)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' loading report and progress bars (the text tower it skips is expected, not news)."""
    from transformers.utils import logging as tlog

    level, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


def _check_loaded(missing: Any, src: HFSource) -> None:
    """SAError when the checkpoint lacked weights the model needs (transformers would fill them at random)."""
    missing = sorted(missing)
    if missing:
        raise SAError(f"{src.origin} lacks {len(missing)} weights the model needs (e.g. {missing[0]}); the checkpoint "
                      f"does not match its config.")


def _has_accelerate() -> bool:
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None


def _vision_root(model: nn.Module) -> str:
    """The module path of the vision transformer inside `model` ('' or 'vision_model')."""
    children = dict(model.named_children())
    if isinstance(children.get("vision_model"), nn.Module):
        return "vision_model"
    if "encoder" in children and "embeddings" in children:
        return ""
    raise SAError(f"transformers model {type(model).__name__} has no embeddings + encoder; sa extract knows ViT-style "
                  f"vision towers (CLIP, SigLIP, DINOv2, InternVL/InternViT).")


def plan_hf(model: nn.Module) -> LayerPlan:
    """Layer 0 = the tokens handed to the encoder (CLIP: after pre_layrnorm), l = encoder block l; prefix tokens first."""
    root = _vision_root(model)
    vm = model.get_submodule(root) if root else model
    pre = (root + "." if root else "")
    blocks_attr = next((a for a in ("layers", "layer") if isinstance(getattr(vm.encoder, a, None), nn.ModuleList)), None)
    if blocks_attr is None:
        raise SAError(f"transformers model {type(model).__name__} has no encoder.layers / encoder.layer block list.")
    blocks = [f"{pre}encoder.{blocks_attr}.{i}" for i in range(len(getattr(vm.encoder, blocks_attr)))]
    stem = f"{pre}pre_layrnorm" if isinstance(getattr(vm, "pre_layrnorm", None), nn.Module) else f"{pre}embeddings"
    emb = vm.embeddings
    has_cls = any(isinstance(getattr(emb, a, None), (torch.Tensor, nn.Parameter)) for a in ("cls_token", "class_embedding"))
    registers = getattr(emb, "register_tokens", None)
    n_reg = int(registers.shape[1]) if isinstance(registers, torch.Tensor) else 0
    return _plan("tokens", (stem, "output"), blocks, n_prefix=int(has_cls) + n_reg, has_cls=has_cls)


def final_embedding(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """(the model's own image embedding, what it is): the documented output per family.

    CLIP with projection: `image_embeds` (visual_projection of the post-layernormed class token);
    InternVL native tower: its documented pooler (mean of the patch tokens when `use_mean_pooling`, else the
    layernormed class token); everything else (CLIPVisionModel, DINOv2 = normed class token, SigLIP = attention-
    pool head, InternViT remote code = class token): `pooler_output`.
    """
    kind = type(model).__name__
    if hasattr(model, "visual_projection"):
        return (lambda x: model(pixel_values=x).image_embeds), "image_embeds (visual_projection of the pooled output)"
    if kind == "InternVLVisionModel":
        if model.config.use_mean_pooling:
            return (lambda x: model(pixel_values=x).last_hidden_state[:, 1:].mean(1)), "mean of the last layer's patch tokens (use_mean_pooling)"
        return (lambda x: model(pixel_values=x).last_hidden_state[:, 0]), "the layernormed class token"

    def pooled(x: torch.Tensor) -> torch.Tensor:
        out = model(pixel_values=x)
        if getattr(out, "pooler_output", None) is None:
            raise SAError(f"transformers model {kind} returns no pooler_output, so its own image embedding is unknown.")
        return out.pooler_output

    return pooled, "pooler_output"


def library_versions() -> dict[str, str]:
    """major.minor of what moves an hf: backbone's numbers: transformers and its image processors' back ends."""
    import importlib.metadata as md

    out = {}
    for dist in ("transformers", "torchvision", "pillow"):
        try:
            out[dist] = ".".join(md.version(dist).split(".")[:2])
        except md.PackageNotFoundError:
            out[dist] = "missing"
    return out


def count_params(model: nn.Module) -> int:
    """Parameters of the model (meta tensors count too)."""
    return sum(p.numel() for p in model.parameters())


def source_online() -> bool:
    """Whether the Hugging Face hub can be reached (False when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set)."""
    import socket

    if any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=3.0):
            return True
    except OSError:
        return False


@dataclass
class HFBuilt:
    """What load_backbone needs from an hf: build."""

    model: nn.Module
    pre: Preprocess
    embed: Callable[[torch.Tensor], torch.Tensor]
    embed_text: str
    plan: LayerPlan
    source: HFSource


def build(spec: BackboneSpec, *, dtype: torch.dtype, device: str, random_init: bool, trust_remote_code: bool,
          image_size: Optional[int]) -> HFBuilt:
    """Locate, build and plan an hf: backbone (meta device: no weights read)."""
    ensure_transformers()
    if image_size is not None:
        raise SAError(f"--image-size does not apply to hf: backbones; their image processor sets the size (choose the "
                      f"repo of the resolution you want, e.g. a -448px model).")
    src = locate(spec, weights=device != "meta")
    pre = processor_transform(src, trust_remote_code)
    model = build_model(src, dtype=dtype, device=device, random_init=random_init, trust_remote_code=trust_remote_code)
    embed, text = final_embedding(model)
    return HFBuilt(model, pre, embed, text, plan_hf(model), src)


# ---------------------------------------------------------------- describing without weights (sa backbones)

# Native transformers configs with the same blocks, widths and parameters as remote-code repos, so `sa backbones`
# can describe them without running (or having) their code. InternViT-6B-448px-V2_5: 45 layers of 3200 (25 heads,
# qk RMS-norm, no qkv bias), MLP 12800, patch 14 at 448 px (REFERENCE.md; its config.json).
KNOWN_SHAPES = {
    "OpenGVLab/InternViT-6B-448px-V2_5": ("InternVLVisionConfig", dict(
        hidden_size=3200, intermediate_size=12800, num_hidden_layers=45, num_attention_heads=25, image_size=[448, 448],
        patch_size=[14, 14], use_qk_norm=True, norm_type="rms_norm", attention_bias=False, use_mean_pooling=True)),
}


def weights_cached(spec: BackboneSpec) -> bool:
    """Whether the weights of `spec` are on this machine (a local folder, or safetensors in the HF cache snapshot)."""
    if Path(spec.arch).expanduser().is_dir():
        return True
    try:
        src = locate(spec, online=False, weights=False)
    except SAError:
        return False
    return any(src.folder.glob("*.safetensors")) or any(src.folder.glob("*.bin"))


def meta_model(spec: BackboneSpec) -> nn.Module:
    """`spec`'s model on the meta device from its config (cached or known), never running remote code."""
    transformers = ensure_transformers()
    if spec.arch in KNOWN_SHAPES:
        cls_name, kw = KNOWN_SHAPES[spec.arch]
        config = getattr(transformers, cls_name)(**kw)
        with torch.device("meta"), quiet_transformers():
            return transformers.AutoModel.from_config(config)
    src = locate(spec, online=False, weights=False)
    return build_model(src, dtype=torch.float32, device="meta", random_init=False, trust_remote_code=False)
