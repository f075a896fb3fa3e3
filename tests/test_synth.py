"""The synthetic THINGS-format dataset: determinism, layout, and EEG that is linear in the planted features."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sa.errors import SAError
from sa.brain.data import open_dataset
from sa.brain.synth import SynthOptions, draw_image, draw_prototypes, make_synth, read_synth, simulate_eeg

SMALL = dict(n_train_concepts=6, images_per_concept=2, n_test_concepts=3, n_subjects=2, n_channels=5, n_times=30,
             n_reps_train=2, n_reps_test=3, image_size=32)


def tiny_features(opts: SynthOptions, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(opts.n_train_concepts * opts.images_per_concept, 12)), rng.normal(size=(opts.n_test_concepts, 12))


def digest_tree(root):
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "synth.json"):
        h.update(str(f.relative_to(root)).encode() + f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    opts = SynthOptions(**SMALL, seed=3)
    a = make_synth(tmp_path / "a", opts, features=tiny_features(opts), progress=False)
    make_synth(tmp_path / "b", opts, features=tiny_features(opts), progress=False)
    other = SynthOptions(**SMALL, seed=4)
    make_synth(tmp_path / "c", other, features=tiny_features(other), progress=False)
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b") != digest_tree(tmp_path / "c")
    assert a["options"]["seed"] == 3 and read_synth(tmp_path / "a")["options"]["n_train_concepts"] == 6
    with pytest.raises(SAError, match="already holds"):
        make_synth(tmp_path / "a", opts, features=tiny_features(opts), progress=False)


def test_written_in_official_layout_and_readable(tmp_path):
    opts = SynthOptions(**SMALL)
    make_synth(tmp_path, opts, features=tiny_features(opts), progress=False)
    first = sorted((tmp_path / "images" / "training_images").iterdir())[0]
    assert first.name.startswith("00001_") and sorted(f.name for f in first.iterdir())[0].endswith("_01b.jpg")
    d = np.load(tmp_path / "eeg" / "sub-01" / "preprocessed_eeg_training.npy", allow_pickle=True).item()
    assert d["preprocessed_eeg_data"].shape == (12, 2, 5, 30) and d["ch_names"] == ["P7", "P5", "P3", "P1", "Pz"]
    ds = open_dataset(tmp_path)
    assert ds.layout == "things-eeg2" and ds.subjects == ["sub-01", "sub-02"] and ds.check().ok
    subj = ds.load(2, val_fraction=0.0)
    assert subj.test.x.shape == (3, 5, 30) and subj.sfreq == 100.0
    assert not set(subj.train.concepts) & set(subj.test.concepts)


def test_images_have_concept_structure():
    protos = draw_prototypes(4, seed=0)
    assert len({p.name for p in protos}) == 4
    rng = np.random.default_rng(0)
    imgs = {p.name: [draw_image(p, rng, 48).astype(float) for _ in range(4)] for p in protos}
    within = np.mean([np.abs(a[0] - a[k]).mean() for a in imgs.values() for k in (1, 2, 3)])
    names = list(imgs)
    between = np.mean([np.abs(imgs[a][0] - imgs[b][0]).mean() for a in names for b in names if a != b])
    assert within < between
    again = draw_image(protos[0], np.random.default_rng(7), 48)
    assert np.array_equal(again, draw_image(protos[0], np.random.default_rng(7), 48))


def test_eeg_is_linear_in_planted_features_not_in_others():
    rng = np.random.default_rng(0)
    planted = rng.normal(size=(120, 16))
    other = np.tanh(planted @ rng.normal(size=(16, 16)) * 2) ** 2  # a nonlinear relative of the planted layer
    times = -0.2 + np.arange(40) / 100
    (tr, _te), = simulate_eeg(planted[:100], planted[100:], n_subjects=1, n_channels=6, times=times,
                              n_reps_train=8, n_reps_test=2, snr=1.0, n_sources=4, seed=1)
    assert tr.dtype == np.float32 and tr.shape == (100, 8, 6, 40)
    x = tr.mean(axis=1).reshape(100, -1)

    def r2(features):
        f = (features - features.mean(0)) / features.std(0)
        coef, *_ = np.linalg.lstsq(np.c_[f[:70], np.ones(70)], x[:70], rcond=None)
        pred = np.c_[f[70:], np.ones(30)] @ coef
        return 1 - ((x[70:] - pred) ** 2).sum() / ((x[70:] - x[70:].mean(0)) ** 2).sum()

    assert r2(planted[:100]) > 0.5 and r2(planted[:100]) > r2(other[:100]) + 0.2
    (tr2, _), = simulate_eeg(planted[:100], planted[100:], n_subjects=1, n_channels=6, times=times,
                             n_reps_train=8, n_reps_test=2, snr=1.0, n_sources=4, seed=1)
    assert np.array_equal(tr, tr2)
    with pytest.raises(SAError, match="snr"):
        simulate_eeg(planted, planted, n_subjects=1, n_channels=2, times=times, n_reps_train=1, n_reps_test=1, snr=0)


def test_cli_check_reports_and_fails_on_problems(tmp_path):
    from sa.cli import app

    opts = SynthOptions(**SMALL)
    make_synth(tmp_path / "ok", opts, features=tiny_features(opts), progress=False)
    runner = CliRunner()
    res = runner.invoke(app, ["data", "check", str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    assert "things-eeg2" in res.output and "sub-02" in res.output and "100 Hz" in res.output and "-0.200..0.090 s" in res.output
    (tmp_path / "ok" / "eeg" / "sub-02" / "preprocessed_eeg_test.npy").unlink()
    res = runner.invoke(app, ["data", "check", str(tmp_path / "ok")])
    assert res.exit_code == 1 and "no test file" in res.output


def test_synth_with_random_init_backbone_through_the_cache(tmp_path):
    """Wiring through sa.extract + sa.cache with a tiny random-init model; synth.json names the planted layer."""
    opts = SynthOptions(**SMALL, backbone="torchvision:mobilenet_v2", random_init=True, layer="02")
    rec = make_synth(tmp_path, opts, progress=False)
    assert rec["planted"]["array"] == "gap/02" and rec["planted"]["random_init"] is True
    assert json.loads((tmp_path / "synth.json").read_text())["planted"]["layer"] == "02"
    assert open_dataset(tmp_path).check().ok


@pytest.mark.parametrize("args, says", [
    (["--image-size", "0"], "--image-size must be between 8 and 4096 pixels (got 0)"),
    (["--image-size", "-3"], "--image-size must be between 8 and 4096 pixels (got -3)"),
    (["--n-subjects", "0"], "--n-subjects must be a whole number of at least 1 (got 0)"),
    (["--train-concepts", "0"], "--train-concepts must be a whole number of at least 1 (got 0)"),
    (["--reps-test", "0"], "--reps-test must be a whole number of at least 1 (got 0)"),
    (["--sfreq", "0"], "--sfreq must be a positive number (got 0.0)"),
    (["--snr", "nan"], "--snr must be a positive number (got nan)"),
])
def test_cli_synth_bad_options_one_sentence_nothing_written(tmp_path, args, says):
    from sa.cli import app

    out = tmp_path / "synth"
    res = CliRunner().invoke(app, ["data", "synth", str(out), "--random-init", *args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and says in " ".join(lines[0].split()), res.stderr
    assert "Traceback" not in res.output
    import re

    import typer

    synth = typer.main.get_command(app).commands["data"].commands["synth"]
    real = {o for p in synth.params for o in getattr(p, "opts", [])}
    assert set(re.findall(r"--[a-z][a-z-]*", lines[0])) <= real  # the message names only options that exist
    assert not out.exists()  # validated before anything is written
