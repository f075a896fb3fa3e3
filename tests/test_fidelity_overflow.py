"""Fidelity beyond float16's range: no value is ever stored as inf, silently or otherwise.

A checkpoint whose activations exceed 65504 gets those arrays stored as float32 (the manifest says why),
equal to torchvision's own feature extraction; every other array stays float16. Widening half-way through a
group keeps the finished blocks and gives the same bytes as storing wide from the start (numpy is the oracle
of the rounding rule). Computing in fp16, where the same checkpoint overflows inside the network, stops with
one sentence naming the layer and leaves the group partial.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sa._compat import ensure_torchvision

tv = ensure_torchvision()

from torchvision.models.feature_extraction import create_feature_extractor  # noqa: E402

from sa.cache import open_root  # noqa: E402
from sa.cache.manifest import Float16Overflow  # noqa: E402
from sa.cli import app  # noqa: E402
from sa.errors import SAError  # noqa: E402
from sa.extract import extract  # noqa: E402
from support_fidelity import assert_within_float16, batch, photo_dir, pil_images, save_weights  # noqa: E402

F16_MAX = 65504.0


def _hot_resnet(path):
    """A random ResNet-18 whose last block's BatchNorm is scaled by 1e6: layer4 and the pooled output exceed float16."""
    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None)
    with torch.no_grad():
        model.layer4[1].bn2.weight.mul_(1e6)
        model.layer4[1].bn2.bias.mul_(1e6)
    return save_weights(model, path)


def test_overflowing_checkpoint_stores_those_arrays_as_float32_equal_to_the_library(tmp_path):
    file = _hot_resnet(tmp_path / "hot.pth")
    folder = photo_dir(tmp_path / "photos")
    said: list[str] = []
    (group,) = extract(folder, "torchvision:resnet18:IMAGENET1K_V1", tmp_path / "cache", weights=file, image_size=64,
                       dtype="fp32", num_workers=0, progress=False, batch_size=5, log=said.append)
    arrays = group.manifest["arrays"]
    wide = sorted(n for n in group.arrays if arrays[n]["dtype"] == "float32")
    assert wide == ["final", "gap/04"] and all("65504" in arrays[n]["wide_because"] for n in wide)
    assert all(arrays[n]["dtype"] == "float16" for n in group.arrays if n not in wide)
    assert any("float32" in s for s in said)
    oracle = tv.models.resnet18(weights=None)
    oracle.load_state_dict(torch.load(file, weights_only=True))
    extractor = create_feature_extractor(oracle.eval(), return_nodes={"layer4": "l4", "layer3": "l3", "flatten": "final"})
    entry = tv.models.ResNet18_Weights.IMAGENET1K_V1
    x = batch(entry.transforms(crop_size=64, resize_size=73), pil_images(folder, list(group.ids)))
    with torch.inference_mode():
        ref = extractor(x)
    assert float(ref["final"].abs().max()) > F16_MAX  # the checkpoint really overflows float16
    final = group.read("final")
    assert final.dtype == np.float32 and np.isfinite(final).all()
    assert_within_float16(final, ref["final"], "final")
    assert_within_float16(group.read("gap/04"), ref["l4"].mean((2, 3)), "gap/04")
    assert_within_float16(group.read("gap/03"), ref["l3"].mean((2, 3)), "gap/03")
    assert open_root(tmp_path / "cache").verify(group.key, progress=False) == []


def test_fp16_compute_overflow_stops_with_the_layer_named_and_leaves_the_group_partial(tmp_path):
    file = _hot_resnet(tmp_path / "hot.pth")
    folder = photo_dir(tmp_path / "photos", ("chelsea", "coffee"))
    res = CliRunner().invoke(app, ["extract", "-b", "torchvision:resnet18:IMAGENET1K_V1", "--images", str(folder),
                                   "--cache", str(tmp_path / "c"), "--weights", str(file), "--image-size", "32",
                                   "--dtype", "fp16", "--num-workers", "0", "--quiet"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "gave NaN/Inf for image" in res.output and "--dtype fp32" in res.output and "gap/04" in res.output
    (info,) = open_root(tmp_path / "c").list()
    assert info.status == "partial"


def _rows(rng: np.random.Generator) -> dict[str, np.ndarray]:
    values = {"final": rng.normal(size=(6, 4)).astype(np.float32) * 100, "mean/01": rng.normal(size=(6, 3)).astype(np.float32)}
    values["final"][4, 1] = 123456.789  # only block 2 (rows 4-5) leaves float16's range
    values["final"][5, 0] = -70000.5
    return values


def _write(writer, values, blocks) -> None:
    for b in blocks:
        rows = writer.block_rows_slice(b)
        writer.write_block(b, {k: v[rows] for k, v in values.items()})


def test_widening_half_way_keeps_finished_blocks_and_equals_storing_wide_from_the_start(tmp_path):
    values = _rows(np.random.default_rng(0))
    ids = [f"img{i}.png" for i in range(6)]
    root = open_root(tmp_path / "c")
    widths = {"final": 4, "mean/01": 3}
    writer = root.create("0123456789abcdef", "toy-0123456789", ids, widths, {}, block_rows=2)
    _write(writer, values, [0, 1])
    with pytest.raises(Float16Overflow) as caught:
        _write(writer, values, [2])
    assert set(caught.value.wide) == {"final"} and "1.235e+05" in caught.value.wide["final"]
    writer.close()
    writer = root.create("0123456789abcdef", "toy-0123456789", ids, widths, {}, block_rows=2, wide=caught.value.wide)
    assert writer.pending_blocks() == [2]  # blocks 0 and 1 were kept through the widening
    _write(writer, values, [2])
    group = writer.finalize()

    other = open_root(tmp_path / "d").create("0123456789abcdef", "toy-0123456789", ids, widths, {}, block_rows=2,
                                             wide={"final": "asked"})
    _write(other, values, [0, 1, 2])
    from_start = other.finalize()

    with np.errstate(over="ignore"):
        expect = np.where(np.abs(values["final"]) <= F16_MAX, values["final"].astype(np.float16).astype(np.float32), values["final"])
    np.testing.assert_array_equal(group.read("final"), expect)
    assert group.read("final")[4, 1] == np.float32(123456.789) and group.read("mean/01").dtype == np.float16
    assert group.manifest["arrays"]["final"]["digest"] == from_start.manifest["arrays"]["final"]["digest"]
    assert group.manifest["arrays"]["mean/01"]["digest"] == from_start.manifest["arrays"]["mean/01"]["digest"]
    assert group.manifest["arrays"]["final"]["dtype"] == "float32"


def test_write_block_refuses_inf_and_partly_nan_rows(tmp_path):
    root = open_root(tmp_path / "c")
    writer = root.create("0123456789abcdef", "toy-0123456789", ["a", "b"], {"final": 2}, {}, block_rows=2)
    with pytest.raises(SAError, match=r"'final'.*Inf or NaN values in row 1"):
        writer.write_block(0, {"final": np.array([[1, 2], [np.inf, 0]], np.float32)})
    with pytest.raises(SAError, match="row 0"):
        writer.write_block(0, {"final": np.array([[np.nan, 2], [1, 0]], np.float32)})
    writer.write_block(0, {"final": np.array([[np.nan, np.nan], [1, 0]], np.float32)})  # a skipped image's row
    assert writer.pending_blocks() == []
    writer.close()
