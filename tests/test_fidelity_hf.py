"""Fidelity, transformers (`hf:`): every stored array equals the model's own `output_hidden_states` and documented embedding.

Tiny randomly initialised models of each family (CLIP composite, CLIPVisionModel, DINOv2, DINOv2 with
registers, SigLIP, the native InternVL vision tower, and a remote-code model written by the test in the
shape of InternViT) are saved with `save_pretrained` (model + image processor) into a folder that sa
extracts through `hf:<folder>`. The oracle loads the same folder with transformers' own classes,
preprocesses with the folder's image processor (one call over the whole list), and pools
`hidden_states[l]` by the convention: `cls` = token 0, `mean` = tokens after class and register tokens.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from sa._compat import ensure_torchvision

ensure_torchvision()
transformers = pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from sa.cli import app  # noqa: E402
from sa.extract import extract  # noqa: E402
from support_fidelity import assert_group_matches, labels, photo_dir, pil_images, token_pools  # noqa: E402

T = transformers
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2)
CLIP_PROC = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def _save(folder, model, processor):
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _extract(tmp_path, folder, **kw):
    photos = photo_dir(tmp_path / "photos")
    (group,) = extract(photos, f"hf:{folder}", tmp_path / "cache", dtype="fp32", num_workers=0, progress=False,
                       batch_size=5, **kw)
    return group, photos


def _pixels(folder, photos, ids):
    processor = T.AutoImageProcessor.from_pretrained(folder)
    return processor(images=pil_images(photos, ids), return_tensors="pt")["pixel_values"]


def _expected(hidden_states, n_prefix: int, has_cls: bool) -> dict:
    out = {}
    for label, tokens in zip(labels(len(hidden_states) - 1), hidden_states):
        out.update(token_pools(tokens, n_prefix, has_cls, label))
    return out


def test_clip_composite_every_layer_and_image_embeds(tmp_path):
    torch.manual_seed(0)
    cfg = T.CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        vocab_size=50, max_position_embeddings=8),
                       vision_config=dict(TINY, image_size=32, patch_size=8), projection_dim=24)
    folder = _save(tmp_path / "clip", T.CLIPModel(cfg), T.CLIPImageProcessor(**CLIP_PROC))
    group, photos = _extract(tmp_path, folder)
    model = T.CLIPModel.from_pretrained(folder).eval()
    x = _pixels(folder, photos, list(group.ids))
    with torch.inference_mode():
        out = model.vision_model(pixel_values=x, output_hidden_states=True)
        expected = _expected(out.hidden_states, 1, True)
        # CLIP's image embedding: visual_projection of the post-layernormed class token (CLIPModel.get_image_features)
        feats = model.get_image_features(pixel_values=x)
        expected["final"] = getattr(feats, "pooler_output", feats)
    assert expected["final"].shape == (5, 24)
    assert group.manifest["transform"].startswith("HFImageProcessor(") and "CLIPImageProcessor" in group.manifest["transform"]
    assert group.manifest["key_spec"]["libraries"]["transformers"] == ".".join(T.__version__.split(".")[:2])
    assert_group_matches(group, expected)


def test_clip_vision_model_final_is_pooler_output(tmp_path):
    torch.manual_seed(1)
    cfg = T.CLIPVisionConfig(**TINY, image_size=32, patch_size=8)
    folder = _save(tmp_path / "clipv", T.CLIPVisionModel(cfg), T.CLIPImageProcessor(**CLIP_PROC))
    group, photos = _extract(tmp_path, folder)
    model = T.CLIPVisionModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        out = model(pixel_values=_pixels(folder, photos, list(group.ids)), output_hidden_states=True)
        expected = _expected(out.hidden_states, 1, True)
        expected["final"] = out.pooler_output
    assert_group_matches(group, expected)


DINO = [
    # config class, model class, registers
    ("Dinov2Config", "Dinov2Model", 0),
    ("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel", 4),
]


@pytest.mark.parametrize("config_cls,model_cls,registers", DINO)
def test_dinov2_layers_before_the_final_norm_and_normed_cls(tmp_path, config_cls, model_cls, registers):
    torch.manual_seed(2)
    kw = {"num_register_tokens": registers} if registers else {}
    cfg = getattr(T, config_cls)(**TINY, image_size=32, patch_size=8, **kw)
    proc = T.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    folder = _save(tmp_path / "dino", getattr(T, model_cls)(cfg), proc)
    group, photos = _extract(tmp_path, folder)
    model = T.AutoModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        out = model(pixel_values=_pixels(folder, photos, list(group.ids)), output_hidden_states=True)
        assert out.hidden_states[0].shape[1] == 1 + registers + 16  # class, registers, 4 x 4 patches (batch-first)
        assert not torch.allclose(out.hidden_states[-1], out.last_hidden_state)  # the last layer is stored un-normed
        expected = _expected(out.hidden_states, 1 + registers, True)
        expected["final"] = out.pooler_output  # the layernormed class token
    assert group.manifest["backbone"]["prefix_tokens"] == 1 + registers
    assert_group_matches(group, expected)


def test_siglip_composite_has_no_cls_and_final_is_the_attention_pool_head(tmp_path):
    torch.manual_seed(3)
    cfg = T.SiglipConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                          vocab_size=50, max_position_embeddings=8),
                         vision_config=dict(TINY, image_size=32, patch_size=8))
    proc = T.SiglipImageProcessor(size={"height": 32, "width": 32})
    folder = _save(tmp_path / "siglip", T.SiglipModel(cfg), proc)
    group, photos = _extract(tmp_path, folder)
    model = T.SiglipModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        x = _pixels(folder, photos, list(group.ids))
        out = model.vision_model(pixel_values=x, output_hidden_states=True)
        expected = _expected(out.hidden_states, 0, False)
        feats = model.get_image_features(pixel_values=x)
        expected["final"] = getattr(feats, "pooler_output", feats)
    assert not any(a.startswith("cls/") for a in group.arrays)
    assert_group_matches(group, expected)


@pytest.mark.parametrize("mean_pooling", [True, False])
def test_internvl_native_vision_tower(tmp_path, mean_pooling):
    torch.manual_seed(4)
    cfg = T.InternVLVisionConfig(**TINY, image_size=[32, 32], patch_size=[8, 8], use_qk_norm=True, norm_type="rms_norm",
                                 use_mean_pooling=mean_pooling)
    folder = _save(tmp_path / "internvl", T.InternVLVisionModel(cfg), T.CLIPImageProcessor(**CLIP_PROC))
    group, photos = _extract(tmp_path, folder)
    model = T.InternVLVisionModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        out = model(pixel_values=_pixels(folder, photos, list(group.ids)), output_hidden_states=True)
        expected = _expected(out.hidden_states, 1, True)
        # InternVLVisionModelOutputWithPooling's documented pooler: mean of the patch tokens, or the normed class token
        last = out.last_hidden_state
        expected["final"] = last[:, 1:].mean(1) if mean_pooling else last[:, 0]
    assert_group_matches(group, expected)


# ---------------------------------------------------------------- remote code (InternViT-shaped, written here)

CONFIG_PY = textwrap.dedent('''
    from transformers import PretrainedConfig

    class TinyVitConfig(PretrainedConfig):
        model_type = "tiny_intern_vit"

        def __init__(self, hidden_size=32, num_hidden_layers=3, image_size=32, patch_size=8, **kw):
            super().__init__(**kw)
            self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
            self.image_size, self.patch_size = image_size, patch_size
''')

MODELING_PY = textwrap.dedent('''
    import torch
    from torch import nn
    from transformers import PreTrainedModel
    from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
    from .configuration_tiny import TinyVitConfig

    class Embeddings(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.class_embedding = nn.Parameter(torch.randn(1, 1, c.hidden_size))
            self.patch_embedding = nn.Conv2d(3, c.hidden_size, c.patch_size, c.patch_size)
            n = (c.image_size // c.patch_size) ** 2 + 1
            self.position_embedding = nn.Parameter(torch.randn(1, n, c.hidden_size))

        def forward(self, x):
            p = self.patch_embedding(x).flatten(2).transpose(1, 2)
            return torch.cat([self.class_embedding.expand(x.shape[0], -1, -1), p], 1) + self.position_embedding

    class Layer(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(c.hidden_size), nn.LayerNorm(c.hidden_size)
            self.attn = nn.MultiheadAttention(c.hidden_size, 2, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(c.hidden_size, 64), nn.GELU(), nn.Linear(64, c.hidden_size))
            self.ls1, self.ls2 = nn.Parameter(torch.full((c.hidden_size,), 0.5)), nn.Parameter(torch.full((c.hidden_size,), 0.5))

        def forward(self, h):
            a = self.norm1(h)
            h = h + self.attn(a, a, a, need_weights=False)[0] * self.ls1
            return h + self.mlp(self.norm2(h)) * self.ls2

    class Encoder(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.layers = nn.ModuleList([Layer(c) for _ in range(c.num_hidden_layers)])

        def forward(self, inputs_embeds, output_hidden_states=False):
            states, h = (), inputs_embeds
            for layer in self.layers:
                states += (h,)
                h = layer(h)
            return BaseModelOutput(last_hidden_state=h, hidden_states=states + (h,) if output_hidden_states else None)

    class TinyVisionModel(PreTrainedModel):
        config_class = TinyVitConfig
        main_input_name = "pixel_values"

        def __init__(self, config):
            super().__init__(config)
            self.embeddings, self.encoder = Embeddings(config), Encoder(config)
            self.post_init()

        def _init_weights(self, module):
            pass

        def forward(self, pixel_values, output_hidden_states=None, return_dict=None):
            enc = self.encoder(self.embeddings(pixel_values), output_hidden_states=bool(output_hidden_states))
            last = enc.last_hidden_state
            return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=last[:, 0], hidden_states=enc.hidden_states)
''')


def _remote_code_folder(tmp_path):
    """A local repo folder like InternViT-6B's: config.json with auto_map, the code files, weights, processor."""
    folder = tmp_path / "tiny-internvit"
    folder.mkdir()
    (folder / "configuration_tiny.py").write_text(CONFIG_PY)
    (folder / "modeling_tiny.py").write_text(MODELING_PY)
    cfg = {"model_type": "tiny_intern_vit", "architectures": ["TinyVisionModel"], "hidden_size": 32,
           "num_hidden_layers": 3, "image_size": 32, "patch_size": 8,
           "auto_map": {"AutoConfig": "configuration_tiny.TinyVitConfig", "AutoModel": "modeling_tiny.TinyVisionModel"}}
    (folder / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(5)
    config = T.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = T.AutoModel.from_config(config, trust_remote_code=True)  # random weights, saved next to the code
    model.save_pretrained(folder)
    T.CLIPImageProcessor(**CLIP_PROC).save_pretrained(folder)
    return folder


def test_remote_code_model_needs_trust_and_then_matches_its_own_hidden_states(tmp_path):
    folder = _remote_code_folder(tmp_path)
    photos = photo_dir(tmp_path / "photos")
    cache = tmp_path / "cache"
    res = CliRunner().invoke(app, ["extract", "-b", f"hf:{folder}", "-i", str(photos), "--cache", str(cache),
                                   "--device", "cpu", "--num-workers", "0", "--quiet"])
    assert res.exit_code == 2, res.output
    assert "--trust-remote-code" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) <= 3  # one sentence (wrapped by the console)
    assert not cache.exists() or not any(p.name == "zarr.json" for p in cache.rglob("*"))

    group, _ = _extract(tmp_path, folder, trust_remote_code=True)
    model = T.AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.inference_mode():
        out = model(pixel_values=_pixels(folder, photos, list(group.ids)), output_hidden_states=True)
        expected = _expected(out.hidden_states, 1, True)
        expected["final"] = out.pooler_output  # InternViT's pooler: the last layer's class token
    assert group.manifest["key_spec"]["libraries"]["remote_code"] == "trusted"
    assert_group_matches(group, expected)


def test_hf_key_changes_with_the_processor_settings(tmp_path):
    """The processor's settings are in the key: another crop, another group (and both are right)."""
    torch.manual_seed(6)
    cfg = T.CLIPVisionConfig(**TINY, image_size=32, patch_size=8)
    model = T.CLIPVisionModel(cfg)
    a = _save(tmp_path / "a", model, T.CLIPImageProcessor(**CLIP_PROC))
    b = _save(tmp_path / "b", model, T.CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}))
    ga, _ = _extract(tmp_path, a)
    gb, _ = _extract(tmp_path, b)
    assert ga.key.split("-")[-1] != gb.key.split("-")[-1]
    assert '"shortest_edge": 32' in ga.manifest["transform"] and '"shortest_edge": 40' in gb.manifest["transform"]


def test_hf_bad_names_are_one_sentence(tmp_path):
    photos = photo_dir(tmp_path / "photos", ("chelsea",))
    for name, words in [("hf:not-a-repo-id", "repo id"), (f"hf:{tmp_path}", "config.json")]:
        res = CliRunner().invoke(app, ["extract", "-b", name, "-i", str(photos), "--cache", str(tmp_path / "c"),
                                       "--device", "cpu", "--quiet"])
        assert res.exit_code == 2, res.output
        assert words in res.output and "Traceback" not in res.output
    assert not (tmp_path / "c").exists() or not any(p.name == "zarr.json" for p in (tmp_path / "c").rglob("*"))
