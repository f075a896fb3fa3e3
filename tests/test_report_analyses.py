"""`sa report` with the analyses of issue 17: concept accuracy per layer, UMAP, time-resolved RSA; `sa train --encoder
ridge` refused in one sentence."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from support_sweep import one_sentence, synth_dataset, write_categories
from typer.testing import CliRunner

from sa.cli import app
from sa.train.sweep import sweep

RSA_STEM = "rsa-sub-01-torchvision_mobilenet_v2"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], terminal_width=200)




@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synth_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def results(synth, tmp_path_factory):
    """A ridge sweep (every layer, --categories, embeddings kept) and `sa rsa` of three layers into one folder."""
    path, info = synth
    tmp = tmp_path_factory.mktemp("analyses")
    cats = write_categories(path, tmp)
    out = tmp / "res"
    sweep(path, "torchvision-mobilenet_v2", out=out, cache=info["planted"]["cache"], layers="all", encoders="ridge",
          subjects="sub-01", seeds=1, val_fraction=0.25, progress=False, categories=cats, save_embeddings=True)
    res = run("rsa", "--data", path, "--subject", "1", "--cache", info["planted"]["cache"], "-b",
              "torchvision-mobilenet_v2", "--layers", "3,9", "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    return out


def _copy_without_embeddings(results, tmp_path):
    folder = tmp_path / "res"
    shutil.copytree(results, folder, ignore=shutil.ignore_patterns("embeddings", "report"))
    return folder


def test_report_has_concept_accuracy_and_rsa(results, tmp_path):
    """Without embeddings (no UMAP: fast): concept table numbers equal runs.csv's, RSA table equals the CSV's peaks."""
    folder = _copy_without_embeddings(results, tmp_path)
    res = run("report", folder, "--out", tmp_path / "rep", "--quiet")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "results.md").read_text()
    names = {p.name for p in (tmp_path / "rep").glob("*.png")}
    assert any(n.startswith("concepts-") for n in names) and f"{RSA_STEM}-heatmap.png" in names
    assert f"{RSA_STEM}-peaks.png" in names and not any(n.startswith("umap-") for n in names)
    assert "## Concept accuracy" in md and "shares a coarse category" in md and "## UMAP" not in md
    rows = list(csv.DictReader(open(folder / "runs.csv")))
    final = [float(r["concept_top5"]) for r in rows if r["layer"] == "final"]
    assert f"| {np.mean(final):.1f} ± {np.std(final):.1f} |" in md.split("## Concept accuracy")[1].split("\n## ")[0]
    assert "| encoder ridge" not in md and "encoder ridge" in md  # ridge rows are a section like any encoder
    rsa_rows = list(csv.DictReader(open(folder / f"{RSA_STEM}.csv")))
    best09 = max((r for r in rsa_rows if r["layer"] == "09"), key=lambda r: float(r["spearman_r"]))
    depth, ms, r = float(best09["depth"]), round(float(best09["time_s"]) * 1000), float(best09["spearman_r"])
    assert f"| 09 | {depth:.2f} | {ms} | {r:.3f} |" in md
    assert "crossnobis" in md and "Spearman-Brown" in md
    for n in names:
        assert f"({n})" in md  # every figure is linked (with its caption above or beside it)


@pytest.mark.slow
def test_report_draws_umap_of_best_and_final(results, tmp_path):
    from matplotlib.image import imread

    res = run("report", results, "--out", tmp_path / "rep", "--quiet")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "results.md").read_text()
    umaps = sorted((tmp_path / "rep").glob("umap-*.png"))
    assert len(umaps) == 1 and f"({umaps[0].name})" in md and "umap-learn (cosine metric" in md
    img = imread(umaps[0])
    assert img.shape[1] > 2 * img.shape[0] * 0.9 and img[..., :3].std() > 0.05  # two panels side by side


def test_damaged_inputs_stop_the_report(results, tmp_path):
    folder = _copy_without_embeddings(results, tmp_path)
    (folder / f"{RSA_STEM}.csv").write_text("layer,time_s\n09,0.1\n")
    one_sentence(run("report", folder, "--out", tmp_path / "rep", "--quiet"), 1, f"{RSA_STEM}.csv", "sa rsa")
    assert not (tmp_path / "rep" / "results.md").exists()
    (folder / f"{RSA_STEM}.csv").unlink()
    (folder / "embeddings").mkdir()
    rows = list(csv.DictReader(open(folder / "runs.csv")))
    for r in rows:
        (folder / "embeddings" / f"{r['run_id']}.npz").write_bytes(b"PK\x03\x04 torn")
    one_sentence(run("report", folder, "--out", tmp_path / "rep", "--quiet"), 1, ".npz is damaged")
    assert not (tmp_path / "rep" / "results.md").exists()


def test_umap_missing_is_one_sentence_in_the_report(results, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "umap" else real(name, *a))
    folder = tmp_path / "res"
    shutil.copytree(results, folder, ignore=shutil.ignore_patterns("report", "rsa-*"))
    res = run("report", folder, "--out", tmp_path / "rep", "--quiet")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "results.md").read_text()
    assert "Note: UMAP figures need umap-learn, which is not installed; run pip install" in md
    assert not list((tmp_path / "rep").glob("umap-*.png"))


def test_train_ridge_is_refused(synth, tmp_path):
    path, info = synth
    res = run("train", "--data", path, "--subject", "1", "--cache", info["planted"]["cache"], "-b",
              "torchvision-mobilenet_v2", "--layer", "9", "--encoder", "ridge", "--out", tmp_path / "m.safetensors")
    one_sentence(res, 2, "--encoder ridge", "sa sweep --encoders ridge")
    assert not list(tmp_path.iterdir())
