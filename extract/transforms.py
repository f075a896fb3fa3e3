"""Each backbone's own *evaluation* preprocessing (never a random-crop training transform).

open_clip: its validation preprocess; timm: resolve_data_config + create_transform(is_training=False);
torchvision: the weights' transforms or the standard ImageNet eval transform. `--image-size`
overrides the resolution; the repr of the result goes into the cache key.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def transform_repr(transform: Any) -> str:
    """A stable text form of a transform (memory addresses removed) for keys and manifests."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform))


def open_clip_transform(model: nn.Module, pretrained_cfg: dict, image_size: Optional[int]) -> Callable:
    """open_clip's val preprocess from the model's preprocess cfg (the pretrained tag's mean/std/resize win)."""
    import open_clip

    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    for k in ("mean", "std", "interpolation", "resize_mode"):
        if pretrained_cfg.get(k) is not None:
            cfg[k] = pretrained_cfg[k]
    size = image_size or cfg["size"]
    return open_clip.image_transform(
        size,
        is_train=False,
        mean=cfg["mean"],
        std=cfg["std"],
        resize_mode=cfg.get("resize_mode"),
        interpolation=cfg.get("interpolation"),
        fill_color=cfg.get("fill_color", 0),
    )


def timm_transform(model: nn.Module, image_size: Optional[int]) -> Callable:
    """timm's eval transform for the model's data config, at `image_size` if given."""
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    if image_size:
        cfg["input_size"] = (3, image_size, image_size)
    return create_transform(**cfg, is_training=False)


def torchvision_transform(weights: Any, image_size: Optional[int]) -> Callable:
    """The weights' eval transform (or the ImageNet standard one), rescaled to `image_size` if given."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    crop, resize, interp = 224, 256, InterpolationMode.BILINEAR
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights is not None:
        preset = weights.transforms()
        if isinstance(preset, ImageClassification):
            crop, resize, interp = preset.crop_size[0], preset.resize_size[0], preset.interpolation
            mean, std = tuple(preset.mean), tuple(preset.std)
        elif image_size is None:
            return preset
    if image_size:
        resize, crop = round(image_size * resize / crop), image_size
    return ImageClassification(crop_size=crop, resize_size=resize, mean=mean, std=std, interpolation=interp)


def transform_size(transform: Any, default: int) -> int:
    """The output side length of an eval transform (its centre crop), else `default`."""
    from torchvision import transforms as T
    from torchvision.transforms._presets import ImageClassification

    if isinstance(transform, ImageClassification):
        return int(transform.crop_size[0])
    for t in getattr(transform, "transforms", []):
        if isinstance(t, T.CenterCrop):
            return int(t.size[0])
    return default
