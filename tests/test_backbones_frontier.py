"""Frontier backbones past the paper: aliases listed on the meta device, and one small model per new family
whose every stored array equals timm's own `forward_intermediates` / pre-logits forward.

DINOv3 (class + 4 storage tokens, RoPE), Perception Encoder (class token, RoPE, attention-pool head) and
AIMv2 (no class token) are built at random, written to one file that sa loads through `--weights` and
timm loads through its pretrained-file path, at a small image size. SigLIP2 in open_clip is a timm SigLIP
trunk without a class token, the layout tests/test_fidelity_open_clip.py checks (sa-fid-trunk).
"""

from __future__ import annotations

import pytest
import torch

from sa._compat import ensure_torchvision

ensure_torchvision()

import timm  # noqa: E402
from timm.data import create_transform, resolve_data_config  # noqa: E402

from sa.extract import extract  # noqa: E402
from sa.extract.backbones import describe  # noqa: E402
from sa.extract.registry import ALIASES, resolve  # noqa: E402
from support_fidelity import assert_group_matches, batch, labels, photo_dir, pil_images, save_weights, token_pools  # noqa: E402

FRONTIER = {
    # alias: (blocks, width, params in millions, rounded) from the libraries' own configs on the meta device
    "dinov3-7b": (40, 4096, 6716),
    "dinov3-s": (12, 384, 22),
    "pe-core-g14": (50, 1536, 1882),
    "siglip2-so400m14": (27, 1152, 428),
    "aimv2-3b": (24, 3072, 2721),
}


@pytest.mark.parametrize("alias", sorted(FRONTIER))
def test_frontier_aliases_describe_on_the_meta_device(alias):
    info = describe(alias)
    assert (info.blocks, info.width, round(info.params / 1e6)) == FRONTIER[alias]
    assert info.generic == resolve(alias).generic


def test_internvit_6b_alias_has_the_papers_shape():
    """45 layers of 3200 at 448 px, 5.54 B parameters (REFERENCE.md), without its remote code or weights."""
    spec = ALIASES["internvit-6b"]
    assert spec.generic == "hf:OpenGVLab/InternViT-6B-448px-V2_5"
    pytest.importorskip("transformers")
    info = describe("internvit-6b")
    assert (info.blocks, info.width, round(info.params / 1e7)) == (45, 3200, 554)


FAMILIES = [
    # timm name, image size, prefix tokens (class + registers/storage), has a class token
    ("vit_small_patch16_dinov3", 32, 5, True),
    ("vit_pe_core_tiny_patch16_384", 32, 1, True),
    pytest.param("aimv2_large_patch14_224", 28, 0, False, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,size,n_prefix,has_cls", FAMILIES)
def test_frontier_family_equals_forward_intermediates(tmp_path, name, size, n_prefix, has_cls):
    torch.manual_seed(0)
    src = timm.create_model(name, pretrained=False, img_size=size).eval()
    file = save_weights(src, tmp_path / f"{name}.safetensors")
    folder = photo_dir(tmp_path / "photos")
    (group,) = extract(folder, f"timm:{name}", tmp_path / "cache", weights=file, image_size=size, dtype="fp32",
                       num_workers=0, progress=False, batch_size=5)
    m = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(file)}, img_size=size).eval()
    cfg = resolve_data_config({"input_size": (3, size, size)}, model=m)
    x = batch(create_transform(**cfg, is_training=False), pil_images(folder, list(group.ids)))
    with torch.inference_mode():
        _, inter = m.forward_intermediates(x, return_prefix_tokens=True, norm=False, output_fmt="NLC")
        t0 = m.patch_embed(x)
        t0 = m._pos_embed(t0)
        t0 = t0[0] if isinstance(t0, tuple) else t0  # RoPE models also return the rotary embedding
        t0 = m.norm_pre(t0) if callable(getattr(m, "norm_pre", None)) else t0
        expected = token_pools(t0, n_prefix, has_cls, "00")
        for label, item in zip(labels(len(inter))[1:], inter):
            spatial, prefix = item if isinstance(item, tuple) else (item, None)
            tokens = spatial if prefix is None else torch.cat([prefix, spatial], 1)
            expected.update(token_pools(tokens, n_prefix, has_cls, label))
        m.reset_classifier(0)
        expected["final"] = m(x)
    assert group.manifest["backbone"]["prefix_tokens"] == n_prefix
    assert_group_matches(group, expected)
