"""Fidelity, timm: every stored array equals timm's own `forward_intermediates` / documented forward.

One small randomly initialised model per layout (ViT with CLS, with CLS + registers, without CLS but with a
register, EVA, and the CNN layouts stem+stages, conv_stem+blocks, ResNet), its weights written to one file
that both sides load: sa through `--weights`, the oracle through timm's own pretrained-file loading. Images
are preprocessed by timm's own eval transform (resolve_data_config + create_transform).
"""

from __future__ import annotations

import pytest
import torch

from sa._compat import ensure_torchvision

ensure_torchvision()

import timm  # noqa: E402
from timm.data import create_transform, resolve_data_config  # noqa: E402

from sa.extract import extract  # noqa: E402
from support_fidelity import assert_group_matches, batch, gap, labels, photo_dir, pil_images, save_weights, token_pools  # noqa: E402


def _oracle(name: str, size: int, file) -> torch.nn.Module:
    """timm's own model from the same file (its pretrained-file path, the tag's data config), at `size`."""
    kw = {"img_size": size} if "vit" in name or "eva" in name else {}
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(file)}, **kw).eval()


def _inputs(model: torch.nn.Module, size: int, folder, ids) -> torch.Tensor:
    cfg = resolve_data_config({"input_size": (3, size, size)}, model=model)
    return batch(create_transform(**cfg, is_training=False), pil_images(folder, ids))


def _final(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's documented way to pooled, pre-logits features: drop the classifier, call the model."""
    model.reset_classifier(0)
    return model(x)


def _extract(tmp_path, name: str, size: int, suffix: str = ".safetensors"):
    kw = {"img_size": size} if "vit" in name or "eva" in name else {}
    torch.manual_seed(0)
    src = timm.create_model(name, pretrained=False, **kw).eval()
    file = save_weights(src, tmp_path / f"{name}{suffix}")
    folder = photo_dir(tmp_path / "photos")
    (group,) = extract(folder, f"timm:{name}", tmp_path / "cache", weights=file, image_size=size, dtype="fp32",
                       num_workers=0, progress=False, batch_size=5)
    return group, file, folder


TOKEN_MODELS = [
    # name, size, prefix tokens (class + registers), has a class token
    ("vit_tiny_patch16_224", 32, 1, True),
    ("vit_small_patch14_reg4_dinov2", 28, 5, True),
    ("vit_wee_patch16_reg1_gap_256", 32, 1, False),
    ("eva02_tiny_patch14_224", 28, 1, True),
]


@pytest.mark.parametrize("name,size,n_prefix,has_cls", TOKEN_MODELS)
def test_timm_token_models_equal_forward_intermediates(tmp_path, name, size, n_prefix, has_cls):
    group, file, folder = _extract(tmp_path, name, size)
    m = _oracle(name, size, file)
    x = _inputs(m, size, folder, list(group.ids))
    with torch.inference_mode():
        _, inter = m.forward_intermediates(x, return_prefix_tokens=True, norm=False, output_fmt="NLC")
        # layer 0 = the tokens entering block 1, as forward_features builds them
        t0 = m.patch_embed(x)
        t0 = m._pos_embed(t0)
        t0 = t0[0] if isinstance(t0, tuple) else t0  # EVA also returns its rotary embedding
        t0 = m.norm_pre(m.patch_drop(t0) if callable(getattr(m, "patch_drop", None)) else t0)
        expected = token_pools(t0, n_prefix, has_cls, "00")
        for label, (spatial, prefix) in zip(labels(len(inter))[1:], inter):
            assert prefix.shape[1] == n_prefix
            expected.update(token_pools(torch.cat([prefix, spatial], 1), n_prefix, has_cls, label))
        expected["final"] = _final(m, x)
    assert group.manifest["backbone"]["prefix_tokens"] == n_prefix
    assert_group_matches(group, expected)


def test_timm_convnext_layer0_is_the_stem_and_every_stage_follows(tmp_path):
    group, file, folder = _extract(tmp_path, "convnext_atto", 64, suffix=".pth")
    m = _oracle("convnext_atto", 64, file)
    x = _inputs(m, 64, folder, list(group.ids))
    with torch.inference_mode():
        expected = gap(m.stem(x), "00")
        for label, maps in zip(labels(4)[1:], m.forward_intermediates(x, intermediates_only=True)):
            expected.update(gap(maps, label))
        expected["final"] = _final(m, x)
    assert [layer["module"] for layer in group.manifest["layers"]] == ["stem"] + [f"stages.{i}" for i in range(4)]
    assert_group_matches(group, expected)


def test_timm_efficientnet_taps_the_stem_and_every_block_group(tmp_path):
    group, file, folder = _extract(tmp_path, "efficientnet_b0.ra_in1k", 64)  # its tags preprocess differently: named
    m = _oracle("efficientnet_b0.ra_in1k", 64, file)
    x = _inputs(m, 64, folder, list(group.ids))
    with torch.inference_mode():
        inter = m.forward_intermediates(x, intermediates_only=True, extra_blocks=True)
        assert len(inter) == 8  # stem + 7 block groups
        expected = {k: v for label, maps in zip(labels(7), inter) for k, v in gap(maps, label).items()}
        expected["final"] = _final(m, x)
    assert [layer["module"] for layer in group.manifest["layers"]] == ["bn1"] + [f"blocks.{i}" for i in range(7)]
    assert_group_matches(group, expected)


def test_timm_resnet_stem_and_stages(tmp_path):
    group, file, folder = _extract(tmp_path, "resnet18.tv_in1k", 64)
    m = _oracle("resnet18.tv_in1k", 64, file)
    x = _inputs(m, 64, folder, list(group.ids))
    with torch.inference_mode():
        inter = m.forward_intermediates(x, intermediates_only=True)
        expected = {k: v for label, maps in zip(labels(4), inter) for k, v in gap(maps, label).items()}
        expected["final"] = _final(m, x)
    assert_group_matches(group, expected)
