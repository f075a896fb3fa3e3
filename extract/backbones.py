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
import hashlib
import logging
import os
import socket
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import nn

from sa._compat import ensure_torchvision
from sa.errors import DamagedError, SAError
from sa.extract.layers import PLANNERS, LayerPlan
from sa.extract.registry import ALIAS_SHAPES, BackboneSpec, resolve
from sa.extract.transforms import (
    Preprocess,
    _weights_enum,
    check_timm_file_tag,
    match_torchvision_file,
    open_clip_file_cfg,
    open_clip_transform,
    timm_transform,
    torchvision_entry,
    torchvision_preset,
    torchvision_transform,
    transform_repr,
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
    input_size: tuple[int, int]  # (H, W) of the tensors `transform` returns
    transform_source: str  # which preset the transform is and why it was chosen (manifest)
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
    def image_size(self) -> Union[int, list[int]]:
        """The input side length (or [H, W] when not square), as recorded in the key."""
        h, w = self.input_size
        return h if h == w else [h, w]


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


# ---------------------------------------------------------------- checkpoint files


def _unwrap(obj: Any) -> Any:
    """The state dict inside a training checkpoint ({'state_dict': ...}, {'model': ...}, {'module': ...})."""
    for k in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and k in obj and isinstance(obj[k], Mapping):
            return obj[k]
    return obj


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        bad = next(((k, v) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None)
        return f"a dict whose entry {bad[0]!r} is a {type(bad[1]).__name__}" if bad else "a dict"
    return f"a {type(obj).__name__}"


def _safetensors_error(path: str, exc: BaseException) -> DamagedError:
    return DamagedError(f"--weights {path} is not a readable safetensors file ({_first_line(exc)}); it is damaged "
                        f"or truncated: download or save it again.")


def read_state_dict(path: str) -> Mapping[str, torch.Tensor]:
    """The name -> tensor mapping in a checkpoint file (.safetensors, or torch.save'd, mapped lazily when it can be).

    A file that holds something else (a pickled list, a whole model object) is an SAError; one
    that cannot be read (truncated, corrupt) is a DamagedError. Both name the file.
    """
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as exc:
            raise _safetensors_error(path, exc) from None
    zipped = zipfile.is_zipfile(path)
    with open(path, "rb") as f:
        looks_zip = f.read(4) == b"PK\x03\x04"
    if looks_zip and not zipped:
        raise DamagedError(f"--weights {path} is a damaged or truncated torch.save archive; download or save it again.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note about pickle protocols says nothing to the user
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for foreign or broken files
        if zipped:
            raise DamagedError(f"--weights {path} cannot be read by torch.load ({_first_line(exc)}); the archive is "
                               f"damaged: download or save it again.") from None
        raise SAError(f"--weights {path} is not a tensor checkpoint torch.load can read safely ({_first_line(exc)}); "
                      f"pass a file written with torch.save(model.state_dict()) or a .safetensors file.") from None
    sd = _unwrap(obj)
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise SAError(f"--weights {path} holds {_describe(sd) if sd else 'nothing'}, not a state dict of named tensors; "
                      f"pass a file written with torch.save(model.state_dict()) or a .safetensors file.")
    return sd


def check_state_dict(path: str) -> None:
    """`read_state_dict`'s checks without keeping the tensors (safetensors: its header only), once per file version."""
    st = os.stat(path)
    _check_state_dict(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _check_state_dict(path: str, size: int, mtime_ns: int) -> None:
    if not path.endswith(".safetensors"):
        read_state_dict(path)
        return
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "pt") as f:
            if not list(f.keys()):
                raise SAError(f"--weights {path} holds no tensors; pass the model's checkpoint.")
    except SafetensorError as exc:
        raise _safetensors_error(path, exc) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# ---------------------------------------------------------------- building, per library


@dataclass(frozen=True)
class _Request:
    """What a builder needs: the local weights file (and its sha256), random init, size, a named transform, and
    `load` False when only the architecture is wanted (meta device)."""

    weights: Optional[str]
    sha256: Optional[str]
    random_init: bool
    image_size: Optional[int]
    transform: Optional[str]
    load: bool


def _building_on(device: str) -> contextlib.AbstractContextManager:
    """Construct parameters directly on the meta device (no memory, instant) when that is the target."""
    return torch.device("meta") if device == "meta" else contextlib.nullcontext()


def _tv_weights(spec: BackboneSpec):
    enum = _weights_enum(spec.arch)
    if enum is None:
        return None
    if spec.pretrained:
        return torchvision_entry(spec.arch, spec.pretrained, "the backbone's weights tag")
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


def _build_open_clip(spec: BackboneSpec, req: _Request, device: str) -> tuple[nn.Module, Preprocess]:
    import open_clip

    cfg, why = (open_clip.get_pretrained_cfg(spec.arch, spec.pretrained) if spec.pretrained else {}), None
    if req.weights and not spec.pretrained:
        cfg, why = open_clip_file_cfg(spec.arch, req.weights)
    kw: dict[str, Any] = {"force_quick_gelu": bool(cfg.get("quick_gelu", False)), "device": device}
    if req.image_size:
        kw["force_image_size"] = req.image_size
    if req.random_init or not req.load:  # asked for: open_clip's "no pretrained weights loaded" warning would only alarm
        with _building_on(device), _quiet_root_logger():
            model = open_clip.create_model(spec.arch, pretrained=None, **kw)
    elif req.weights:
        model = open_clip.create_model(spec.arch, pretrained=req.weights, require_pretrained=True, **kw)
    else:
        model = open_clip.create_model(spec.arch, pretrained=spec.pretrained, require_pretrained=True, **kw)
    pre = open_clip_transform(model, cfg, req.image_size, spec.pretrained, why)
    return _strip_text_tower(model), pre


def _timm_create(name: str, image_size: Optional[int], **kw) -> nn.Module:
    import timm

    if image_size:
        try:
            return timm.create_model(name, img_size=image_size, **kw)
        except TypeError:
            pass
    return timm.create_model(name, **kw)


def _build_timm(spec: BackboneSpec, req: _Request, device: str) -> tuple[nn.Module, Preprocess]:
    full = spec.arch + (f".{spec.pretrained}" if spec.pretrained else "")
    why = check_timm_file_tag(spec.arch, req.weights) if (req.weights and not spec.pretrained) else None
    if req.random_init or not req.load:
        with _building_on(device):
            model = _timm_create(full, req.image_size, pretrained=False)
    elif req.weights:
        model = _timm_create(full, req.image_size, pretrained=True, pretrained_cfg_overlay={"file": str(req.weights)})
    else:
        model = _timm_create(full, req.image_size, pretrained=True)
    return model.to(device), timm_transform(model, req.image_size, spec.pretrained, why)


def _build_torchvision(spec: BackboneSpec, req: _Request, device: str) -> tuple[nn.Module, Preprocess]:
    tv = ensure_torchvision()
    preset, why = torchvision_preset(spec.arch, pretrained=spec.pretrained, transform=req.transform,
                                     weights_file=req.weights, sha256=req.sha256, random_init=req.random_init)
    if req.weights and spec.pretrained and req.transform is None:
        matched, _ = match_torchvision_file(spec.arch, req.weights, req.sha256 or "")
        if matched is not None and matched.name != spec.pretrained:
            raise SAError(f"--weights {req.weights} is torchvision's {spec.arch} {matched.name}, but the backbone names "
                          f"{spec.pretrained}; name torchvision:{spec.arch}:{matched.name} (or leave the tag out).")
    if req.random_init or req.weights or not req.load:
        with _building_on(device):
            model = tv.models.get_model(spec.arch, weights=None)
        if req.weights and req.load:
            try:
                model.load_state_dict(read_state_dict(str(req.weights)))
            except RuntimeError as exc:
                raise SAError(f"--weights {req.weights} does not fit torchvision:{spec.arch} ({_first_line(exc)}); pass that "
                              f"architecture's state dict.") from None
    else:
        model = tv.models.get_model(spec.arch, weights=_tv_weights(spec))
    return model.to(device), torchvision_transform(preset, req.image_size, why)


def torchvision_head(model: nn.Module) -> Optional[tuple[nn.Module, str]]:
    """(the module that holds the classifier's last Linear, its attribute name) of a torchvision classifier, or None."""
    for head in ("classifier", "fc", "heads"):
        module = getattr(model, head, None)
        if isinstance(module, nn.Linear):
            return model, head
        if isinstance(module, nn.Sequential):
            linears = [name for name, m in module.named_children() if isinstance(m, nn.Linear)]
            if linears:
                return module, linears[-1]
    return None


def _embed_fn(spec: BackboneSpec, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The backbone's own image embedding: open_clip encode_image, timm pre-logits, torchvision penultimate features.

    torchvision: the input of the classifier's last Linear (MobileNetV3's 1024-d hidden layer, VGG's fc7,
    ConvNeXt after the head's LayerNorm, ResNet's pooled features, ViT's CLS / pre-logits).
    """
    if spec.source == "open_clip":
        return lambda x: model.encode_image(x)
    if spec.source == "timm":
        return lambda x: model.forward_head(model.forward_features(x), pre_logits=True)
    found = torchvision_head(model)
    if found is None:
        raise SAError(f"torchvision model {spec.arch} has no Linear classifier (classifier/fc/heads), so its penultimate "
                      f"embedding is unknown; use timm or open_clip for it.")
    holder, name = found
    setattr(holder, name, nn.Identity())  # model(x) now returns what the last Linear would see
    return lambda x: model(x)


BUILDERS = {"open_clip": _build_open_clip, "timm": _build_timm, "torchvision": _build_torchvision}


def _check_weights_file(weights: Union[str, Path]) -> str:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise SAError(f"--weights {weights} is not a file; pass the path of a local checkpoint (.pt, .pth, .bin or .safetensors).")
    return str(path.resolve())


def check_image_size(image_size: Optional[int]) -> None:
    """SAError unless `image_size` is None (the backbone's own) or a positive number of pixels."""
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise SAError(f"--image-size {image_size} is not a positive number of pixels; give e.g. 224, or leave it out "
                      f"for the backbone's own size.")


def load_backbone(
    name: Union[str, BackboneSpec],
    *,
    weights: Union[str, Path, None] = None,
    random_init: bool = False,
    seed: int = 0,
    image_size: Optional[int] = None,
    device: str = "cpu",
    dtype: str = "fp32",
    transform: Optional[str] = None,
    trust_remote_code: bool = False,
) -> Backbone:
    """Build a backbone for extraction: eval mode, on `device`, weights cast to `dtype` ("fp32" | "bf16" | "fp16").

    Pretrained weights come from the library's hub cache (SAError with how to
    supply them when absent and offline); `weights` loads a local checkpoint
    (for torchvision, with the transform of the weights entry it matches, or of
    the entry named in `name` or by `transform`); `random_init` seeds torch with
    `seed` (for tests). `device="meta"` builds the same backbone without
    weights, instantly: enough for its cache key, layers and transform. `trust_remote_code` lets an hf:
    model run the code in its repo (InternViT-6B); nothing else uses it.
    """
    ensure_torchvision()
    spec = name if isinstance(name, BackboneSpec) else resolve(name)
    if dtype not in DTYPES:
        raise SAError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}.")
    if weights is not None and random_init:
        raise SAError("--weights and --random-init exclude each other; pass one.")
    check_image_size(image_size)
    if spec.source == "hf":
        return _load_hf(spec, weights=weights, random_init=random_init, seed=seed, image_size=image_size, device=device,
                        dtype=dtype, transform=transform, trust_remote_code=trust_remote_code)
    if transform is not None and spec.source != "torchvision":
        raise SAError(f"--transform applies to torchvision backbones only; {spec.source} takes its preprocessing from the "
                      f"pretrained tag, so name the tag in --backbone instead.")
    sha = None
    if weights is not None:
        weights = _check_weights_file(weights)
        sha = file_digest(weights)
        check_state_dict(weights)  # a list, a model object or a damaged file is one sentence, before any building
        source, digest = weights, sha
    elif random_init:
        torch.manual_seed(seed)
        source, digest = "random", f"random:{seed}"
    else:
        if device != "meta":
            where, local = pretrained_location(spec)
            if local is None and not network_reachable(HUB_HOSTS[spec.source]):
                raise _missing_weights_error(spec, where)
        source, digest = f"hub:{spec.pretrained or 'default'}", f"pretrained:{spec.generic}"
    req = _Request(weights, sha, random_init, image_size, transform, load=device != "meta")
    try:
        if device == "meta":
            with _quiet_root_logger():
                model, pre = BUILDERS[spec.source](spec, req, device)
        else:
            model, pre = BUILDERS[spec.source](spec, req, device)
    except SAError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, AssertionError) as exc:
        if image_size is not None and device == "meta":
            raise SAError(f"--image-size {image_size} does not fit {spec.generic} ({_first_line(exc)}); choose a size the "
                          f"model accepts (a multiple of its patch size for ViTs), or leave it out.") from None
        if weights is not None:
            raise SAError(f"--weights {weights} could not be loaded into {spec.generic} ({_first_line(exc)}); check it is "
                          f"that model's checkpoint.") from None
        if not random_init and any(w in str(exc).lower() for w in ("connect", "offline", "resolve", "timed out", "network", "cannot find the requested files")):
            raise _missing_weights_error(spec, pretrained_location(spec)[0]) from None
        raise
    model.eval().requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())  # before a torchvision head is swapped out
    embed = _embed_fn(spec, model)
    plan = PLANNERS[spec.source](model)
    model.to(dtype=DTYPES[dtype])
    return Backbone(
        spec=spec,
        model=model,
        embed=embed,
        plan=plan,
        transform=pre.transform,
        input_size=pre.size,
        transform_source=pre.source,
        weights=source,
        weights_digest=digest,
        random_init=random_init,
        params=params,
        libraries=library_versions(spec.source),
    )


def _load_hf(spec: BackboneSpec, *, weights: Any, random_init: bool, seed: int, image_size: Optional[int], device: str,
             dtype: str, transform: Optional[str], trust_remote_code: bool) -> Backbone:
    """An hf: backbone: the repo (or folder) is the weights; loaded straight onto `device` in `dtype`."""
    from sa.extract.hf import build, count_params, library_versions as hf_versions

    if weights is not None:
        raise SAError(f"--weights does not apply to {spec.generic}: the repo or folder holds the weights; pass "
                      f"hf:PATH/TO/FOLDER for a local save_pretrained copy.")
    if transform is not None:
        raise SAError(f"--transform applies to torchvision backbones only; {spec.generic} uses its own image processor.")
    if random_init:
        torch.manual_seed(seed)
    built = build(spec, dtype=DTYPES[dtype], device=device, random_init=random_init,
                     trust_remote_code=trust_remote_code, image_size=image_size)
    return Backbone(
        spec=spec,
        model=built.model,
        embed=built.embed,
        plan=built.plan,
        transform=built.pre.transform,
        input_size=built.pre.size,
        transform_source=built.pre.source + f"; final = {built.embed_text}",
        weights="random" if random_init else built.source.origin,
        weights_digest=f"random:{seed}" if random_init else built.source.digest,
        random_init=random_init,
        params=count_params(built.model),
        libraries=hf_versions() | ({"remote_code": "trusted"} if trust_remote_code else {}),
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


def describe(name: Union[str, BackboneSpec], *, build: bool = False) -> BackboneInfo:
    """Blocks, width and parameter count of a backbone, and whether its weights are local.

    Aliases come from their recorded shape (registry.ALIAS_SHAPES) unless `build`; any other name is built on
    the meta device.
    """
    spec = name if isinstance(name, BackboneSpec) else resolve(name)
    if not build and spec.name in ALIAS_SHAPES and spec == resolve(spec.name):
        blocks, width, params = ALIAS_SHAPES[spec.name]
        return BackboneInfo(name=spec.name, generic=spec.generic, blocks=blocks, width=width, params=params,
                            pretrained=spec.pretrained or ("main" if spec.source == "hf" else "default"),
                            local=_weights_local(spec), description=spec.description)
    ensure_torchvision()
    if spec.source == "hf":
        return _describe_hf(spec)
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


def _weights_local(spec: BackboneSpec) -> bool:
    """Whether the backbone's weights are on this machine (hf: the HF cache snapshot)."""
    if spec.source == "hf":
        from sa.extract.hf import weights_cached

        return weights_cached(spec)
    return pretrained_location(spec)[1] is not None


def _describe_hf(spec: BackboneSpec) -> BackboneInfo:
    """An hf: backbone from its config on the meta device (cached config, or the known shape of a remote-code repo)."""
    from sa.extract.hf import meta_model, plan_hf, weights_cached

    model = meta_model(spec)
    plan = plan_hf(model)
    return BackboneInfo(name=spec.name, generic=spec.generic, blocks=plan.n_blocks, width=int(model.config.hidden_size),
                        params=sum(p.numel() for p in model.parameters()), pretrained=spec.pretrained or "main",
                        local=weights_cached(spec), description=spec.description)


def list_backbones(names: Optional[list[str]] = None) -> list[BackboneInfo]:
    """`describe` for every alias (or for `names`, which may be generic names)."""
    from sa.extract.registry import ALIASES

    return [describe(n) for n in (names or list(ALIASES))]
