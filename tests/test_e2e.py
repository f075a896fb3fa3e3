"""End to end on `sa data synth` output: the sweep finds the planted layer; sa sweep / train / decode on the CLI."""

from __future__ import annotations

import csv

import pytest
from support_sweep import fast_config, synth_dataset
from typer.testing import CliRunner

from sa.cli import app
from sa.train.sweep import sweep


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synth_dataset(tmp_path_factory)


def test_sweep_finds_the_planted_layer(synth, tmp_path):
    path, info = synth
    planted = info["planted"]
    res = sweep(path, planted["backbone"], cache=planted["cache"], layers="all", encoders="linear", subjects="sub-01",
                seeds=1, out=tmp_path / "res", config=fast_config(epochs=20), val_fraction=0.25, progress=False)
    assert res.trained == len(planted["layers"]) + 1
    (s,) = res.summary
    assert s.best.layer == planted["layer"]  # chosen on validation
    assert s.best.depth == pytest.approx((int(planted["layer"]) - 1) / (18 - 1))
    assert s.gain is not None and s.gain > 20  # test top-1 points over the final layer
    depths = {ls.layer: ls.depth for ls in s.layers}
    assert depths["01"] == 0.0 and depths["18"] == 1.0


def test_cli_sweep_train_decode(synth, tmp_path):
    path, info = synth
    planted = info["planted"]
    runner = CliRunner()
    common = ["--data", str(path), "--cache", planted["cache"], "--epochs", "3", "--batch-size", "64", "--lr", "3e-3",
              "--embed-dim", "16", "--device", "cpu", "--val-fraction", "0.25"]
    args = ["sweep", *common, "--backbone", "torchvision-mobilenet_v2", "--layers", "9", "--encoders", "linear",
            "--subjects", "1", "--seeds", "1", "--out", str(tmp_path / "res")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "2 run(s) trained, 0 already" in res.output and "torchvision:mobilenet_v2" in res.output
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "0 run(s) trained, 2 already" in res.output
    bad = runner.invoke(app, [*args[:-2], "--out", str(tmp_path / "r2"), "--layers", "40"])
    assert bad.exit_code == 2 and "--layers names '40'" in bad.output

    ckpt = tmp_path / "ck.safetensors"
    res = runner.invoke(app, ["train", *common, "--backbone", "torchvision-mobilenet_v2", "--layer", "9",
                              "--encoder", "linear", "--subject", "sub-01", "--out", str(ckpt)])
    assert res.exit_code == 0, res.output
    assert ckpt.is_file() and "layer 09" in res.output
    res = runner.invoke(app, ["train", *common, "--backbone", "torchvision-mobilenet_v2", "--out", str(ckpt)])
    assert res.exit_code == 2 and "pick one with --subject" in res.output

    preds = tmp_path / "preds.csv"
    res = runner.invoke(app, ["decode", str(ckpt), "--data", str(path), "--gallery", "torchvision-mobilenet_v2",
                              "--top-k", "3", "--out", str(preds)])
    assert res.exit_code == 0, res.output
    with open(preds) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 20 and list(rows[0])[:4] == ["trial", "true_id", "id_1", "score_1"]
    assert rows[0]["true_id"].startswith("test_images/") and "top-1" in res.output
    res = runner.invoke(app, ["decode", str(tmp_path / "missing.safetensors"), "--data", str(path), "--gallery", "x"])
    assert res.exit_code == 2 and "does not exist" in res.output
