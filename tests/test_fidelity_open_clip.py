"""Fidelity, open_clip: every stored array equals open_clip's own `forward_intermediates` and `encode_image`.

Tiny random ViT, ModifiedResNet and timm-trunk towers (the last with a SigLIP-style squash preset at 256,
not 224) are written to one checkpoint file that sa loads through `--weights` and open_clip loads through
`create_model_and_transforms(pretrained=FILE)`, whose val preprocess the oracle uses. The real
ViT-B-16-SigLIP-256:webli configuration is checked on the meta device (instantly) and end to end (slow).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sa._compat import ensure_torchvision

ensure_torchvision()

import open_clip  # noqa: E402
from open_clip import factory, pretrained  # noqa: E402

from sa.extract import extract  # noqa: E402
from sa.extract.backbones import load_backbone  # noqa: E402
from support_fidelity import assert_group_matches, batch, gap, labels, photo_dir, pil_images, save_weights, token_pools  # noqa: E402

TEXT = {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}
factory._MODEL_CONFIGS.setdefault("sa-fid-vit", {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "patch_size": 8, "head_width": 32}, "text_cfg": TEXT})
factory._MODEL_CONFIGS.setdefault("sa-fid-rn", {"embed_dim": 24, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 8}, "text_cfg": TEXT})
# a timm trunk without a class token (one register) at 256, preprocessed like SigLIP-256: squash, no centre crop
factory._MODEL_CONFIGS.setdefault("sa-fid-trunk", {"embed_dim": 24, "vision_cfg": {"image_size": 256, "timm_model_name": "vit_wee_patch16_reg1_gap_256", "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "linear"}, "text_cfg": TEXT})
pretrained._PRETRAINED.setdefault("sa-fid-trunk", {"squash": {"url": "", "hf_hub": "", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic", "resize_mode": "squash"}})


def _extract(tmp_path, arch: str, tag: str | None = None, photos: tuple[str, ...] | None = None, **kw):
    """sa's extraction from a file holding a fresh random model; returns (group, file, folder)."""
    torch.manual_seed(0)
    src = open_clip.create_model(arch, pretrained=None)
    file = save_weights(src, tmp_path / f"{arch}.pt")
    folder = photo_dir(tmp_path / "photos", *(photos and (photos,) or ()))
    name = f"open_clip:{arch}" + (f":{tag}" if tag else "")
    (group,) = extract(folder, name, tmp_path / "cache", weights=file, dtype="fp32", num_workers=0, progress=False,
                       batch_size=5, **kw)
    return group, file, folder


def _oracle(arch: str, file, **preprocess):
    model, _, preprocess_val = open_clip.create_model_and_transforms(arch, pretrained=str(file), **preprocess)
    return model.eval(), preprocess_val


def test_open_clip_vit_every_layer_and_final(tmp_path):
    group, file, folder = _extract(tmp_path, "sa-fid-vit")
    model, preprocess = _oracle("sa-fid-vit", file)
    x = batch(preprocess, pil_images(folder, list(group.ids)))
    visual = model.visual
    with torch.inference_mode():
        ref = visual.forward_intermediates(x, output_fmt="NLC", output_extra_tokens=True)
        expected = token_pools(visual._embeds(x), 1, True, "00")  # layer 0: ln_pre's tokens, entering block 1
        for label, tokens, prefix in zip(labels(3)[1:], ref["image_intermediates"], ref["image_intermediates_prefix"]):
            expected.update(token_pools(torch.cat([prefix, tokens], 1), 1, True, label))
        expected["final"] = model.encode_image(x)
        torch.testing.assert_close(expected["final"], ref["image_features"])
    assert_group_matches(group, expected)


def test_open_clip_resnet_stem_stages_and_attnpool_final(tmp_path):
    group, file, folder = _extract(tmp_path, "sa-fid-rn")
    model, preprocess = _oracle("sa-fid-rn", file)
    x = batch(preprocess, pil_images(folder, list(group.ids)))
    with torch.inference_mode():
        ref = model.visual.forward_intermediates(x)
        expected = {k: v for label, maps in zip(labels(4), ref["image_intermediates"]) for k, v in gap(maps, label).items()}
        expected["final"] = model.encode_image(x)
    assert_group_matches(group, expected)


def test_open_clip_timm_trunk_with_squash_resize_at_256(tmp_path):
    folder = photo_dir(tmp_path / "photos")
    (folder / "broken.png").write_bytes(b"not an image")  # its NaN placeholder must have the 256 x 256 shape too
    torch.manual_seed(0)
    file = save_weights(open_clip.create_model("sa-fid-trunk", pretrained=None), tmp_path / "trunk.pt")
    (group,) = extract(folder, "open_clip:sa-fid-trunk:squash", tmp_path / "cache", weights=file, dtype="fp32",
                       num_workers=0, progress=False, batch_size=6, skip_bad=True)
    m = group.manifest
    assert m["image_size"] == 256 and m["key_spec"]["image_size"] == 256 and m["skipped"] == ["broken.png"]
    assert "Resize(size=(256, 256)" in m["transform"] and "CenterCrop" not in m["transform"]
    model, preprocess = _oracle("sa-fid-trunk", file, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
                                image_interpolation="bicubic", image_resize_mode="squash")
    ids = [i for i in group.ids if i != "broken.png"]
    rows = np.array([list(group.ids).index(i) for i in ids])
    assert all(np.isnan(group.read(a)[list(group.ids).index("broken.png")]).all() for a in group.arrays)
    x = batch(preprocess, pil_images(folder, ids))
    trunk = model.visual.trunk
    with torch.inference_mode():
        ref = model.visual.forward_intermediates(x, output_fmt="NLC", output_extra_tokens=True)
        t0 = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(x))))
        expected = token_pools(t0, 1, False, "00")  # one register token, no class token: mean only
        for label, tokens, prefix in zip(labels(len(trunk.blocks))[1:], ref["image_intermediates"], ref["image_intermediates_prefix"]):
            expected.update(token_pools(torch.cat([prefix, tokens], 1), 1, False, label))
        expected["final"] = model.encode_image(x)
    assert_group_matches(group, expected, rows=rows)


def test_siglip_256_reads_its_size_from_the_squash_resize():
    bb = load_backbone("open_clip:ViT-B-16-SigLIP-256:webli", random_init=True, device="meta")
    assert bb.input_size == (256, 256) and bb.image_size == 256
    assert "Resize(size=(256, 256)" in bb.transform_text and "CenterCrop" not in bb.transform_text
    assert not bb.plan.has_cls and bb.plan.pools == ("mean",)
    big = load_backbone("open_clip:ViT-B-16-SigLIP-384:webli", random_init=True, device="meta")
    assert big.input_size == (384, 384)


@pytest.mark.slow
def test_siglip_256_extracts_end_to_end_with_a_256_placeholder(tmp_path):
    folder = photo_dir(tmp_path / "photos", ("chelsea", "camera"))
    (folder / "broken.png").write_bytes(b"not an image")
    (group,) = extract(folder, "open_clip:ViT-B-16-SigLIP-256:webli", tmp_path / "cache", random_init=True,
                       num_workers=0, progress=False, skip_bad=True, batch_size=3)
    assert group.manifest["image_size"] == 256 and group.manifest["skipped"] == ["broken.png"]
    assert group.layers("mean") == labels(12) and "cls" not in group.manifest["pools"]
    final = group.read("final")
    assert final.shape == (3, 768) and np.isfinite(final[[1, 2]]).all() and np.isnan(final[0]).all()
