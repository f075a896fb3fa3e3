"""`sa demo` end to end at the quick size: files it writes, the planted layer winning on validation, reuse on rerun."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from sa.cache import open_root
from sa.errors import SAError
from sa.demo import DemoSettings, check_settings, layer_ranking, run_demo
from sa.brain.synth import bundled_mobilenet_weights

needs_weights = pytest.mark.skipif(bundled_mobilenet_weights() is None, reason="needs the bundled MobileNetV2 weights")

ARGS = ["--quick", "--n-subjects", "2", "--seeds", "2", "--epochs", "20", "--seed", "0"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One quick `sa demo` through the CLI (the expensive part, shared by the tests below)."""
    import typer

    from sa import demo as demo_cli

    app = typer.Typer()
    demo_cli.register(app)
    app.callback()(lambda: None)
    out = tmp_path_factory.mktemp("demo") / "sa-demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), *ARGS], terminal_width=120)
    return app, out, res


@needs_weights
def test_demo_writes_dataset_cache_results_and_report(demo_run):
    _, out, res = demo_run
    assert res.exit_code == 0, res.output
    data = out / "things-synth"
    synth = json.loads((data / "synth.json").read_text())
    assert synth["planted"]["array"] == "gap/13" and synth["options"]["n_subjects"] == 2
    train_dirs = sorted((data / "images" / "training_images").iterdir())
    assert len(train_dirs) == 100 and train_dirs[0].name.startswith("00001_")
    assert len(list((data / "images" / "test_images").iterdir())) == 10
    for sub in ("sub-01", "sub-02"):
        for split in ("training", "test"):
            assert (data / "eeg" / sub / f"preprocessed_eeg_{split}.npy").is_file()
    root = open_root(out / "cache", read_only=True)
    key = synth["planted"]["cache_key"]
    assert root.status(key) == "complete" and root.verify(key, progress=False) == []
    layers = synth["planted"]["layers"]
    with open(out / "results" / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == (len(layers) + 1) * 2 * 2  # every layer plus final, 2 subjects x 2 seeds
    assert {r["layer"] for r in rows} == set(layers) | {"final"}
    assert {r["subject"] for r in rows} == {"sub-01", "sub-02"} and {r["encoder"] for r in rows} == {"eegproject"}
    report = out / "report"
    pngs = {p.name for p in report.glob("*.png")}
    assert {"things-synth-intra-layers.png", "things-synth-intra-best-vs-final.png"} <= pngs
    assert all((report / p).stat().st_size > 1000 for p in pngs)
    md = (report / "results.md").read_text()
    assert "things-synth" in md and "mobilenet_v2" in md and "![layers" in md


@needs_weights
def test_demo_recovers_the_planted_layer_by_validation(demo_run):
    _, out, res = demo_run
    assert "planted layer: gap/13" in res.output
    assert "winner by validation top-1: gap/13" in res.output and "recovered" in res.output
    assert str(out / "report" / "results.md") in res.output.replace("\n", "")


@needs_weights
def test_rerun_reuses_everything_and_other_settings_are_refused(demo_run):
    app, out, _ = demo_run
    runs_before = (out / "results" / "runs.csv").read_bytes()
    result = run_demo(out, subjects=2, seeds=2, epochs=20, quick=True, seed=0, progress=False)
    assert result.trained == 0 and result.skipped == 20 * 4 and result.recovered
    assert result.planted_rank == 1 and result.n_layers == 19
    assert (out / "results" / "runs.csv").read_bytes() == runs_before
    res = CliRunner().invoke(app, ["demo", "--out", str(out), *ARGS[:-4], "--epochs", "5", "--seed", "0"])
    assert res.exit_code == 2 and "--epochs 20 -> 5" in res.output and "new --out" in res.output


def test_settings_are_checked_before_any_work(tmp_path):
    with pytest.raises(SAError, match="--seeds 0 must be at least 1"):
        run_demo(tmp_path / "x", seeds=0, progress=False)
    assert not (tmp_path / "x").exists()
    check_settings(tmp_path, DemoSettings(quick=True))
    check_settings(tmp_path, DemoSettings(quick=True))  # same settings: accepted
    with pytest.raises(SAError, match="--quick True -> False"):
        check_settings(tmp_path, DemoSettings())


def test_layer_ranking_breaks_ties_toward_the_shallower_layer():
    from sa.train.summary import LayerScore, Stat

    def score(layer, val):
        s = Stat(val, 0.0, 2)
        return LayerScore("gap", layer, None, s, s, s)

    class Summary:
        layers = [score("01", 50.0), score("02", 70.0), score("03", 70.0), score("04", 60.0)]

    assert [ls.layer for ls in layer_ranking(Summary)] == ["02", "03", "04", "01"]


@pytest.mark.slow
def test_random_init_demo_only_when_asked_and_still_has_an_answer(tmp_path):
    """--random-init: the planted layer moves to the stem (deeper random layers underflow) and is recovered;
    the layers random weights leave constant or near-constant are flagged, never chosen."""
    result = run_demo(tmp_path / "rand", subjects=1, seeds=1, epochs=20, quick=True, random_init=True, progress=False)
    assert result.random_init and result.planted == "gap/00" and result.recovered and result.planted_rank == 1
    md = result.report.read_text()
    assert "(constant: gap/17, gap/18, final; near-constant: gap/07, gap/08, gap/09, gap/10, gap/11, gap/12 and 4 more)" in md
    assert "random-init MobileNetV2" in result.lines()[0]
    # a real-weights demo in the same folder is refused: the settings differ
    with pytest.raises(SAError, match="--random-init True -> False"):
        check_settings(tmp_path / "rand", DemoSettings(subjects=1, seeds=1, quick=True))
