"""Each backbone's own *evaluation* preprocessing (never a random-crop training transform), and why it was chosen.

open_clip: its validation preprocess for the pretrained tag; timm: resolve_data_config +
create_transform(is_training=False); torchvision: the transforms of the weights entry the
checkpoint *is* (matched by file name or sha256 prefix, or named by the user), never a guess.
`--image-size` overrides the resolution. Every builder returns a :class:`Preprocess`: the
transform, the (height, width) of the tensors it yields (read from the sizes it was built with,
not parsed back out of the transform) and one line saying where it came from, for the manifest.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import nn

from sa.errors import SAError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLASSIC_IMAGENET = "imagenet"  # --transform imagenet: resize 256, centre crop 224, bilinear, ImageNet mean/std
_HUB_HASH = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's HASH_REGEX: the sha256 prefix in a checkpoint's file name


@dataclass(frozen=True)
class Preprocess:
    """An eval transform, the (H, W) of what it returns, and where it came from (for the manifest)."""

    transform: Callable
    size: tuple[int, int]
    source: str


def transform_repr(transform: Any) -> str:
    """A stable text form of a transform (memory addresses removed) for keys and manifests."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform))


def _hw(size: Any) -> tuple[int, int]:
    """(H, W) from an int or a (..., H, W) sequence."""
    if isinstance(size, (tuple, list)):
        return int(size[-2]), int(size[-1])
    return int(size), int(size)


# ---------------------------------------------------------------- open_clip and timm


def open_clip_transform(model: nn.Module, pretrained_cfg: dict, image_size: Optional[int], tag: Optional[str],
                        why: Optional[str] = None) -> Preprocess:
    """open_clip's val preprocess from the model's preprocess cfg (the pretrained tag's mean/std/resize win)."""
    import open_clip

    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    for k in ("mean", "std", "interpolation", "resize_mode"):
        if pretrained_cfg.get(k) is not None:
            cfg[k] = pretrained_cfg[k]
    size = image_size or cfg["size"]
    transform = open_clip.image_transform(
        size,
        is_train=False,
        mean=cfg["mean"],
        std=cfg["std"],
        resize_mode=cfg.get("resize_mode"),
        interpolation=cfg.get("interpolation"),
        fill_color=cfg.get("fill_color", 0),
    )
    why = why or (f"open_clip preprocess of tag {tag!r}" if tag else "open_clip preprocess of the model config (no tag named)")
    return Preprocess(transform, _hw(size), why + (f", resized to {image_size}" if image_size else ""))


def timm_transform(model: nn.Module, image_size: Optional[int], tag: Optional[str], why: Optional[str] = None) -> Preprocess:
    """timm's eval transform for the model's data config, at `image_size` if given."""
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    if image_size:
        cfg["input_size"] = (3, image_size, image_size)
    why = why or (f"timm data config of pretrained tag {tag!r}" if tag else "timm data config of the architecture's default tag")
    return Preprocess(create_transform(**cfg, is_training=False), _hw(cfg["input_size"]),
                      why + (f", resized to {image_size}" if image_size else ""))


# ---------------------------------------------------------------- a weights file without a tag: only when the tags agree

_OPEN_CLIP_KEYS = ("mean", "std", "interpolation", "resize_mode", "quick_gelu")
_TIMM_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def _listed(tags: list[str]) -> str:
    return ", ".join(tags[:6]) + (f" ... ({len(tags)} in all)" if len(tags) > 6 else "")


def open_clip_file_cfg(arch: str, file: str) -> tuple[dict, str]:
    """(the pretrained cfg, why) for an open_clip `--weights` file given without a tag.

    The tag decides the preprocessing and, for OpenAI weights, the activation (QuickGELU), so a file is
    read with a tag's settings only when every tag of the architecture agrees; otherwise the tag must be named.
    """
    import open_clip

    tags = list(open_clip.list_pretrained_tags_by_model(arch))
    if not tags:
        return {}, f"open_clip:{arch} has no pretrained tags: the model config's preprocessing"
    cfgs = {t: open_clip.get_pretrained_cfg(arch, t) for t in tags}
    kinds = {tuple(str(c.get(k, "")) for k in _OPEN_CLIP_KEYS) for c in cfgs.values()}
    if len(kinds) > 1:
        raise SAError(f"--weights {file} names no open_clip tag, and the tags of {arch} ({_listed(tags)}) preprocess "
                      f"or activate differently; name the tag the file was trained as, e.g. --backbone open_clip:{arch}:{tags[0]}.")
    return cfgs[tags[0]], f"every pretrained tag of {arch} ({_listed(tags)}) shares this preprocessing"


def check_timm_file_tag(arch: str, file: str) -> str:
    """Why a timm `--weights` file without a tag may use the default tag's data config; SAError when the tags differ."""
    import timm

    names = list(timm.list_pretrained(f"{arch}.*"))
    if not names:
        return f"timm:{arch} has no pretrained tags: the architecture's data config"
    kinds = set()
    for n in names:
        cfg = timm.models.get_pretrained_cfg(n)
        cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
        kinds.add(tuple(str(cfg.get(k)) for k in _TIMM_KEYS))
    tags = [n.split(".", 1)[1] for n in names]
    if len(kinds) > 1:
        raise SAError(f"--weights {file} names no timm tag, and the tags of {arch} ({_listed(tags)}) preprocess "
                      f"differently; name the tag the file was trained as, e.g. --backbone timm:{arch}.{tags[0]}.")
    return f"every pretrained tag of {arch} ({_listed(tags)}) shares this data config"


# ---------------------------------------------------------------- torchvision: which weights entry a checkpoint is


def _weights_enum(arch: str) -> Any:
    from sa._compat import ensure_torchvision

    try:
        return ensure_torchvision().models.get_model_weights(arch)
    except (ValueError, KeyError):
        return None


def match_torchvision_file(arch: str, path: str, sha256: str) -> tuple[Any, str]:
    """(torchvision weights entry, why) for a checkpoint file, matched by sha256 prefix or file name; (None, "") if none.

    torchvision's entries carry their download URL, whose file name ends in the
    first hex digits of the file's sha256 (torch.hub checks them the same way).
    """
    enum = _weights_enum(arch)
    if enum is None:
        return None, ""
    name = os.path.basename(path)
    for entry in enum:
        url_name = os.path.basename(entry.url.split("?")[0])
        m = _HUB_HASH.search(url_name)
        if m and sha256.startswith(m.group(1)):
            return entry, f"the file's sha256 starts with {m.group(1)}, the digest in the URL of torchvision's {entry.name} ({url_name})"
    for entry in enum:
        url_name = os.path.basename(entry.url.split("?")[0])
        if name == url_name:
            return entry, f"the file is named {name}, the file name of torchvision's {entry.name} (its sha256 differs from the URL's digest)"
    return None, ""


def torchvision_entry(arch: str, name: str, what: str) -> Any:
    """The weights entry `name` of `arch` (e.g. IMAGENET1K_V1); SAError listing the entries if there is none."""
    enum = _weights_enum(arch)
    if enum is None:
        raise SAError(f"torchvision:{arch} has no pretrained weights entries, so {what} {name!r} names nothing; "
                      f"use --transform {CLASSIC_IMAGENET} for the standard ImageNet eval transform.")
    try:
        return enum[name]
    except KeyError:
        raise SAError(f"torchvision has no weights {name!r} for {arch}; choose one of {', '.join(e.name for e in enum)}"
                      f"{' or ' + CLASSIC_IMAGENET if what == '--transform' else ''}.") from None


def entry_names(arch: str) -> list[str]:
    """The weights entry names torchvision knows for `arch`."""
    enum = _weights_enum(arch)
    return [e.name for e in enum] if enum is not None else []


def torchvision_preset(arch: str, *, pretrained: Optional[str], transform: Optional[str], weights_file: Optional[str],
                       sha256: Optional[str], random_init: bool) -> tuple[Any, str]:
    """(weights entry or CLASSIC_IMAGENET, why) whose eval transform preprocesses this torchvision checkpoint.

    Order: `--transform`, the entry named in the backbone (`torchvision:ARCH:ENTRY`), the entry the
    `--weights` file matches; a file that matches nothing is an SAError asking for the preset to be
    named, never a guess. Without a file: the named entry or the library's DEFAULT.
    """
    if transform is not None:
        if transform == CLASSIC_IMAGENET:
            return CLASSIC_IMAGENET, "named with --transform imagenet (resize 256, crop 224, bilinear)"
        return torchvision_entry(arch, transform, "--transform"), f"named with --transform {transform}"
    if pretrained:
        entry = torchvision_entry(arch, pretrained, "the backbone's weights tag")
        return entry, f"named in the backbone (torchvision:{arch}:{pretrained})"
    if weights_file is not None:
        entry, why = match_torchvision_file(arch, weights_file, sha256 or "")
        if entry is not None:
            return entry, f"matched the --weights file: {why}"
        names = entry_names(arch)
        example = names[0] if names else CLASSIC_IMAGENET
        raise SAError(
            f"--weights {weights_file} matches none of torchvision's {arch} weights ({', '.join(names) or 'none'}) by "
            f"file name or sha256, so its preprocessing is unknown; name it: --backbone torchvision:{arch}:{example} "
            f"or --transform {example} (--transform {CLASSIC_IMAGENET} for resize 256 / crop 224)."
        )
    enum = _weights_enum(arch)
    if enum is None:
        return CLASSIC_IMAGENET, f"torchvision:{arch} has no weights entries: the standard ImageNet eval transform"
    if random_init:
        return enum.DEFAULT, f"random init: the transform of torchvision's DEFAULT weights ({enum.DEFAULT.name})"
    return enum.DEFAULT, f"the library's DEFAULT weights ({enum.DEFAULT.name}) are the ones loaded"


def torchvision_transform(preset: Any, image_size: Optional[int], why: str) -> Preprocess:
    """The preset's eval transform (or the classic ImageNet one), rescaled to `image_size` if given."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    crop, resize, interp = 224, 256, InterpolationMode.BILINEAR
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if preset is not None and preset != CLASSIC_IMAGENET:
        built = preset.transforms()
        if not isinstance(built, ImageClassification):
            raise SAError(f"torchvision weights {preset} do not come with an image-classification transform; "
                          f"pass --transform {CLASSIC_IMAGENET} or another entry.")
        crop, resize, interp = built.crop_size[0], built.resize_size[0], built.interpolation
        mean, std = tuple(built.mean), tuple(built.std)
        why = f"{why}; transform of {type(preset).__name__}.{preset.name}"
    if image_size:
        resize, crop = round(image_size * resize / crop), image_size
        why += f", rescaled to crop {image_size}"
    transform = ImageClassification(crop_size=crop, resize_size=resize, mean=mean, std=std, interpolation=interp)
    return Preprocess(transform, (crop, crop), why)

