"""Building backbones: pretrained from the library's hub cache, a local weights file, or seeded random init.

`load_backbone` returns a :class:`Backbone`: the model in eval mode on its
device and dtype, the function that computes its own image embedding
(`final`), its layer plan, its eval transform, and the provenance that goes
into the cache key. `describe` builds a model on the meta device (instant even
for billions of parameters) to report blocks, width and parameter count.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import hashlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from sa._compat import ensure_torchvision
from sa.errors import SAError
from sa.extract.layers import PLANNERS, LayerPlan
from sa.extract.registry import BackboneSpec, resolve
from sa.extract.transforms import (
    open_clip_transform,
    timm_transform,
    torchvision_transform,
    transform_repr,
    transform_size,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HUB_HOSTS = {"open_clip": "huggingface.co", "timm": "huggingface.co", "torchvision": "download.pytorch.org"}


@dataclass
class Backbone:
    """A loaded backbone and everything about it that changes the numbers."""

    spec: BackboneSpec
    model: nn.Module
    embed: Callable[[torch.Tensor], torch.Tensor]
    plan: LayerPlan
    transform: Callable
    image_size: int
    weights: str  # "hub:<tag>", a local file path, or "random"
    weights_digest: str  # sha256 of the file, the pretrained tag, or "random:<seed>"
    random_init: bool
    params: int
    libraries: dict[str, str] = field(default_factory=dict)

    @property
    def transform_text(self) -> str:
        """The transform's stable repr."""
        return transform_repr(self.transform)

    @property
    def width(self) -> int:
        """Width of the last block (embedding dim for ViTs, channels for CNNs); -1 until probed."""
        return getattr(self, "_width", -1)


def library_versions(source: str) -> dict[str, str]:
    """major.minor of the libraries whose changes can move the numbers (the source library and torchvision)."""
    import importlib.metadata as md

    names = {"open_clip": ["open_clip_torch", "timm", "torchvision"], "timm": ["timm", "torchvision"], "torchvision": ["torchvision"]}
    out = {}
    for dist in names[source]:
        try:
            out[dist] = ".".join(md.version(dist).split(".")[:2])
        except md.PackageNotFoundError:
            out[dist] = "missing"
    return out


def file_digest(path: Union[str, Path]) -> str:
    """sha256 of a weights file (streamed; remembered per path, size and mtime, since giant checkpoints take seconds)."""
    st = os.stat(path)
    return _file_digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- weights: where they live and whether they are here


def _env_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def network_reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether `host:443` accepts a TCP connection within `timeout` seconds (False when HF_HUB_OFFLINE is set)."""
    if _env_offline():
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hf_cached(repo_id: str, filenames: list[str]) -> Optional[str]:
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        hit = try_to_load_from_cache(repo_id, name)
        if isinstance(hit, str):
            return hit
    return None


def _torch_hub_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])


def pretrained_location(spec: BackboneSpec) -> tuple[str, Optional[str]]:
    """(where the library keeps this backbone's pretrained weights, the local file if already there)."""
    ensure_torchvision()
    if spec.source == "open_clip":
        import open_clip

        cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained or "") if spec.pretrained else {}
        hub = cfg.get("hf_hub", "")
        if hub:
            repo, fname = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
            names = [fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            if fname.endswith(".bin"):
                names.insert(0, fname[:-4] + ".safetensors")
            return f"huggingface hub {repo}", _hf_cached(repo, names)
        if cfg.get("url"):
            cache = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
            return cfg["url"], str(cache) if cache.exists() else None
        return "no pretrained weights", None
    if spec.source == "timm":
        import timm

        full = spec.arch + (f".{spec.pretrained}" if spec.pretrained else "")
        cfg = timm.models.get_pretrained_cfg(full)
        cfg = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else (cfg or {})
        if cfg.get("hf_hub_id"):
            return f"huggingface hub {cfg['hf_hub_id']}", _hf_cached(cfg["hf_hub_id"], ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"])
        if cfg.get("url"):
            f = _torch_hub_file(cfg["url"])
            return cfg["url"], str(f) if f.exists() else None
        return "no pretrained weights", None
    weights = _tv_weights(spec)
    if weights is None:
        return "no pretrained weights", None
    f = _torch_hub_file(weights.url)
    return weights.url, str(f) if f.exists() else None


def _missing_weights_error(spec: BackboneSpec, where: str) -> SAError:
    return SAError(
        f"No pretrained weights for {spec.name} ({spec.generic}) in the local cache and no network to fetch them "
        f"from {where}: download them on a connected machine (they land in the {'HF_HOME' if 'hub' in where else 'TORCH_HOME'} cache), "
        f"or pass --weights FILE with a local checkpoint, or --random-init for tests."
    )


# ---------------------------------------------------------------- building, per library


def _building_on(device: str) -> contextlib.AbstractContextManager:
    """Construct parameters directly on the meta device (no memory, instant) when that is the target."""
    return torch.device("meta") if device == "meta" else contextlib.nullcontext()


def _tv_weights(spec: BackboneSpec):
    tv = ensure_torchvision()
    try:
        enum = tv.models.get_model_weights(spec.arch)
    except (ValueError, KeyError):
        return None
    if spec.pretrained:
        try:
            return enum[spec.pretrained]
        except KeyError:
            raise SAError(f"torchvision has no weights {spec.pretrained!r} for {spec.arch}; choose one of {', '.join(e.name for e in enum)}.") from None
    return enum.DEFAULT


def _strip_text_tower(model: nn.Module) -> nn.Module:
    """Drop everything but `visual` from an open_clip model (encode_image only needs the image tower)."""
    for name in [n for n, _ in model.named_children() if n != "visual"]:
        delattr(model, name)
    for name in list(model._parameters):
        del model._parameters[name]
    for name in list(model._buffers):
        del model._buffers[name]
    return model


def _build_open_clip(spec: BackboneSpec, weights: Optional[str], random_init: bool, image_size: Optional[int], device: str) -> tuple[nn.Module, Callable]:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained) if spec.pretrained else {}
    kw: dict[str, Any] = {"force_quick_gelu": bool(cfg.get("quick_gelu", False)), "device": device}
    if image_size:
        kw["force_image_size"] = image_size
    if random_init:  # asked for: open_clip's "no pretrained weights loaded" warning would only alarm
        with _building_on(device), _quiet_root_logger():
            model = open_clip.create_model(spec.arch, pretrained=None, **kw)
    elif weights:
        model = open_clip.create_model(spec.arch, pretrained=weights, require_pretrained=True, **kw)
    else:
        model = open_clip.create_model(spec.arch, pretrained=spec.pretrained, require_pretrained=True, **kw)
    transform = open_clip_transform(model, cfg, image_size)
    return _strip_text_tower(model), transform


def _timm_create(name: str, image_size: Optional[int], **kw) -> nn.Module:
    import timm

    if image_size:
        try:
            return timm.create_model(name, img_size=image_size, **kw)
        except TypeError:
            pass
    return timm.create_model(name, **kw)


def _build_timm(spec: BackboneSpec, weights: Optional[str], random_init: bool, image_size: Optional[int], device: str) -> tuple[nn.Module, Callable]:
    full = spec.arch + (f".{spec.pretrained}" if spec.pretrained else "")
    if random_init:
        with _building_on(device):
            model = _timm_create(full, image_size, pretrained=False)
    elif weights:
        model = _timm_create(full, image_size, pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
    else:
        model = _timm_create(full, image_size, pretrained=True)
    return model.to(device), timm_transform(model, image_size)


def _load_state_dict_file(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for k in ("state_dict", "model"):
        if isinstance(sd, dict) and k in sd and isinstance(sd[k], dict):
            sd = sd[k]
    return sd


def _build_torchvision(spec: BackboneSpec, weights: Optional[str], random_init: bool, image_size: Optional[int], device: str) -> tuple[nn.Module, Callable]:
    tv = ensure_torchvision()
    preset = _tv_weights(spec)
    if random_init or weights:
        with _building_on(device):
            model = tv.models.get_model(spec.arch, weights=None)
        if weights:
            try:
                model.load_state_dict(_load_state_dict_file(str(weights)))
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                raise SAError(f"--weights {weights} does not fit torchvision:{spec.arch} ({first}); pass that architecture's state dict.") from None
    else:
        model = tv.models.get_model(spec.arch, weights=preset)
    return model.to(device), torchvision_transform(preset, image_size)


def _embed_fn(spec: BackboneSpec, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The backbone's own image embedding: open_clip encode_image, timm pre-logits, torchvision pooled penultimate."""
    if spec.source == "open_clip":
        return lambda x: model.encode_image(x)
    if spec.source == "timm":
        return lambda x: model.forward_head(model.forward_features(x), pre_logits=True)
    for head in ("classifier", "fc", "heads"):
        if isinstance(getattr(model, head, None), nn.Module):
            setattr(model, head, nn.Identity())  # model(x) now returns the features the classifier would see
            return lambda x: model(x)
    raise SAError(f"torchvision model {spec.arch} has no classifier/fc/heads module, so its final embedding is unknown.")


BUILDERS = {"open_clip": _build_open_clip, "timm": _build_timm, "torchvision": _build_torchvision}


def _check_weights_file(weights: Union[str, Path]) -> str:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise SAError(f"--weights {weights} is not a file; pass the path of a local checkpoint (.pt, .pth, .bin or .safetensors).")
    return str(path.resolve())


def load_backbone(
    name: Union[str, BackboneSpec],
    *,
    weights: Union[str, Path, None] = None,
    random_init: bool = False,
    seed: int = 0,
    image_size: Optional[int] = None,
    device: str = "cpu",
    dtype: str = "fp32",
) -> Backbone:
    """Build a backbone for extraction: eval mode, on `device` in `dtype` ("fp32" | "bf16" | "fp16").

    Pretrained weights come from the library's hub cache (SAError with how to
    supply them when absent and offline); `weights` loads a local checkpoint;
    `random_init` seeds torch with `seed` (for tests). `device="meta"` builds
    the same backbone without weights, instantly: enough for its cache key,
    layers and transform.
    """
    ensure_torchvision()
    spec = name if isinstance(name, BackboneSpec) else resolve(name)
    if dtype not in DTYPES:
        raise SAError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}.")
    if weights is not None and random_init:
        raise SAError("--weights and --random-init exclude each other; pass one.")
    if weights is not None:
        weights = _check_weights_file(weights)
        source, digest = weights, file_digest(weights)
    elif random_init:
        torch.manual_seed(seed)
        source, digest = "random", f"random:{seed}"
    else:
        if device != "meta":
            where, local = pretrained_location(spec)
            if local is None and not network_reachable(HUB_HOSTS[spec.source]):
                raise _missing_weights_error(spec, where)
        source, digest = f"hub:{spec.pretrained or 'default'}", f"pretrained:{spec.generic}"
    try:
        if device == "meta":
            with _quiet_root_logger():
                model, transform = BUILDERS[spec.source](spec, None, True, image_size, device)
        else:
            model, transform = BUILDERS[spec.source](spec, weights, random_init, image_size, device)
    except SAError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        if weights is not None:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SAError(f"--weights {weights} could not be loaded into {spec.generic} ({first}); check it is that model's checkpoint.") from None
        if not random_init and any(w in str(exc).lower() for w in ("connect", "offline", "resolve", "timed out", "network", "cannot find the requested files")):
            raise _missing_weights_error(spec, pretrained_location(spec)[0]) from None
        raise
    model.eval().requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())  # before a torchvision head is swapped out
    embed = _embed_fn(spec, model)
    plan = PLANNERS[spec.source](model)
    model.to(dtype=DTYPES[dtype])
    default_size = image_size or 224
    return Backbone(
        spec=spec,
        model=model,
        embed=embed,
        plan=plan,
        transform=transform,
        image_size=transform_size(transform, default_size),
        weights=source,
        weights_digest=digest,
        random_init=random_init,
        params=params,
        libraries=library_versions(spec.source),
    )


# ---------------------------------------------------------------- listing (meta device: no memory, no weights)


@dataclass(frozen=True)
class BackboneInfo:
    """One row of `sa backbones`."""

    name: str
    generic: str
    blocks: int
    width: int
    params: int
    pretrained: str
    local: bool
    description: str


def _meta_width(model: nn.Module, plan: LayerPlan) -> int:
    last = model.get_submodule(plan.layers[-1].module)
    for attr in ("embed_dim", "width", "out_channels"):
        if isinstance(getattr(last, attr, None), int):
            return getattr(last, attr)
    ws = [p.shape[0] for p in last.parameters() if p.ndim >= 1]
    return int(ws[-1]) if ws else -1


@contextlib.contextmanager
def _quiet_root_logger():
    """Hide open_clip's 'No pretrained weights loaded' warning: describing a model never loads weights."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def describe(name: Union[str, BackboneSpec]) -> BackboneInfo:
    """Blocks, width and parameter count of a backbone built on the meta device, and whether its weights are local."""
    ensure_torchvision()
    spec = name if isinstance(name, BackboneSpec) else resolve(name)
    with torch.device("meta"), _quiet_root_logger():
        if spec.source == "open_clip":
            import open_clip

            model = _strip_text_tower(open_clip.create_model(spec.arch, pretrained=None, device="meta"))
        elif spec.source == "timm":
            import timm

            model = timm.create_model(spec.arch, pretrained=False)
        else:
            model = ensure_torchvision().models.get_model(spec.arch, weights=None)
    plan = PLANNERS[spec.source](model)
    _, local = pretrained_location(spec)
    return BackboneInfo(
        name=spec.name,
        generic=spec.generic,
        blocks=plan.n_blocks,
        width=_meta_width(model, plan),
        params=sum(p.numel() for p in model.parameters()),
        pretrained=spec.pretrained or "default",
        local=local is not None,
        description=spec.description,
    )


def list_backbones(names: Optional[list[str]] = None) -> list[BackboneInfo]:
    """`describe` for every alias (or for `names`, which may be generic names)."""
    from sa.extract.registry import ALIASES

    return [describe(n) for n in (names or list(ALIASES))]
