"""`sa rsa`: the closed-form crossnobis against rsatoolbox's own, the Spearman numbers against scipy, the files written,
and every bad input as one sentence with nothing left that looks complete."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from support_sweep import one_sentence, synth_dataset
from typer.testing import CliRunner

from sa.cli import app
from sa.report.rsa import crossnobis, time_resolved_rsa

STEM = "rsa-sub-01-torchvision_mobilenet_v2"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], terminal_width=200)




@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synth_dataset(tmp_path_factory)


def _args(synth, out, *extra):
    path, info = synth
    return ["rsa", "--data", path, "--subject", "1", "--cache", info["planted"]["cache"], "-b",
            info["planted"]["cache_key"], "--out", out, "--quiet", *extra]


def test_crossnobis_equals_rsatoolbox():
    """Oracle: rsatoolbox.rdm.calc_rdm(method='crossnobis', cv_descriptor=fold), one time point at a time."""
    import rsatoolbox as rsa

    rng = np.random.default_rng(3)
    eeg = rng.normal(size=(9, 4, 5, 3)).astype(np.float32) + rng.normal(size=(9, 1, 5, 3)).astype(np.float32)
    mine = crossnobis(eeg)
    conds, folds = np.repeat(np.arange(9), 4), np.tile(np.arange(4), 9)
    for k in range(3):
        ds = rsa.data.Dataset(eeg[..., k].reshape(36, 5).astype(np.float64),
                              obs_descriptors={"conds": conds, "fold": folds})
        ref = rsa.rdm.calc_rdm(ds, method="crossnobis", descriptor="conds", cv_descriptor="fold").get_vectors()[0]
        np.testing.assert_allclose(mine[k], ref, rtol=1e-10, atol=1e-12)


def test_spearman_and_ceiling_equal_scipy():
    """Oracle: scipy's pdist(correlation) for the layer RDM and spearmanr for the comparison and the split halves."""
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    rng = np.random.default_rng(4)
    feats = rng.normal(size=(10, 6))
    eeg = rng.normal(size=(10, 4, 3, 2)) + (feats[:, :3] @ rng.normal(size=(3, 3)))[:, None, :, None]
    res = time_resolved_rsa(eeg, {"a": feats}, np.array([0.0, 0.01]))
    brain = crossnobis(eeg)
    for k in range(2):
        assert res.r[0, k] == pytest.approx(spearmanr(pdist(feats, "correlation"), brain[k])[0], abs=1e-10)
        half = spearmanr(crossnobis(eeg[:, 0::2])[k], crossnobis(eeg[:, 1::2])[k])[0]
        assert res.ceiling[k] == pytest.approx(2 * half / (1 + half), abs=1e-10)


def test_rsa_writes_heatmap_peaks_and_csv(synth, tmp_path):
    """On `sa data synth` data the planted layer wins; the CSV's number at its peak equals an independent computation."""
    import rsatoolbox as rsa
    from matplotlib.image import imread
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    from sa.brain.data import open_dataset
    from sa.cache import open_root

    path, info = synth
    res = run(*_args(synth, tmp_path / "out"))
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == [f"{STEM}-heatmap.png", f"{STEM}-peaks.png", f"{STEM}.csv", f"{STEM}.md"]
    for kind in ("heatmap", "peaks"):
        img = imread(tmp_path / "out" / f"{STEM}-{kind}.png")
        assert img.shape[0] > 200 and img.shape[1] > 400 and img[..., :3].std() > 0.05
    rows = list(csv.DictReader(open(tmp_path / "out" / f"{STEM}.csv")))
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    assert layers == [f"{i:02d}" for i in range(19)] + ["final"]
    assert len(rows) == 20 * 40 and {r["subject"] for r in rows} == {"sub-01"} and rows[0]["n_reps"] == "20"
    planted = info["planted"]["layer"]
    peak = {lyr: max((float(r["spearman_r"]), float(r["time_s"])) for r in rows if r["layer"] == lyr) for lyr in layers}
    assert max(peak, key=lambda lyr: peak[lyr][0]) == planted
    # independent: the raw test file, rsatoolbox's crossnobis at the peak time, scipy for the layer RDM and Spearman
    sub = np.load(path / "eeg" / "sub-01" / "preprocessed_eeg_test.npy", allow_pickle=True).item()
    eeg, times = sub["preprocessed_eeg_data"], np.asarray(sub["times"])
    k = int(np.argmin(np.abs(times - peak[planted][1])))
    group = open_root(info["planted"]["cache"]).open(info["planted"]["cache_key"])
    test_ids = open_dataset(path).raw("sub-01").test.image_ids.tolist()
    feats = np.asarray(group.read(f"gap/{planted}"))[group.rows_for_ids(test_ids)].astype(np.float64)
    n, reps = eeg.shape[:2]
    ds = rsa.data.Dataset(eeg[..., k].reshape(n * reps, -1).astype(np.float64),
                          obs_descriptors={"c": np.repeat(np.arange(n), reps), "f": np.tile(np.arange(reps), n)})
    brain = rsa.rdm.calc_rdm(ds, method="crossnobis", descriptor="c", cv_descriptor="f").get_vectors()[0]
    assert peak[planted][0] == pytest.approx(spearmanr(pdist(feats, "correlation"), brain)[0], abs=1e-6)
    md = (tmp_path / "out" / f"{STEM}.md").read_text()
    assert f"![RSA heat map]({STEM}-heatmap.png)" in md and "crossnobis" in md and "Spearman-Brown" in md
    assert f"| {planted} |" in md


def test_rsa_layers_subset_and_window(synth, tmp_path):
    res = run(*_args(synth, tmp_path, "--layers", "2,9", "--window", "0,0.15", "--channels", "occipital-parietal"))
    if res.exit_code != 0:  # synthetic channels may not carry 10-20 names: then the sentence must say so
        one_sentence(res, 2, "channel")
        res = run(*_args(synth, tmp_path, "--layers", "2,9", "--window", "0,0.15"))
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(tmp_path / f"{STEM}.csv")))
    assert list(dict.fromkeys(r["layer"] for r in rows)) == ["02", "09", "final"]
    assert min(float(r["time_s"]) for r in rows) >= 0 and max(float(r["time_s"]) for r in rows) <= 0.15 + 1e-9


@pytest.mark.parametrize("extra, code, needles", [
    (["--subject", "7"], 2, ["subject '7'", "sub-01"]),
    (["-b", "no-such-net"], 2, ["no-such-net"]),
    (["--layers", "99"], 2, ["--layers", "'99'"]),
    (["--window", "5,9"], 2, ["outside the epoch"]),
    (["--window", "x"], 2, ["--window"]),
])
def test_bad_input_is_one_sentence(synth, tmp_path, extra, code, needles):
    args = _args(synth, tmp_path / "out")
    for i in range(0, len(extra), 2):  # replace the option's value, or add it
        if extra[i] in args:
            args[args.index(extra[i]) + 1] = extra[i + 1]
        else:
            args += extra[i:i + 2]
    one_sentence(run(*args), code, *needles)
    assert not (tmp_path / "out").exists()


def test_out_is_a_file_and_single_repetition(synth, tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    one_sentence(run(*_args(synth, target)), 2, "is a file")
    path, info = synth
    one = tmp_path / "one-rep"
    shutil.copytree(path / "eeg", one / "eeg")
    shutil.copytree(path / "images", one / "images")
    f = one / "eeg" / "sub-01" / "preprocessed_eeg_test.npy"
    sub = np.load(f, allow_pickle=True).item()
    sub["preprocessed_eeg_data"] = sub["preprocessed_eeg_data"][:, :1]
    np.save(f, sub, allow_pickle=True)
    args = _args(synth, tmp_path / "out")
    args[args.index("--data") + 1] = one
    one_sentence(run(*args), 2, "at least two repetitions")
    assert not (tmp_path / "out").exists()


def test_damaged_csv_is_one_sentence(tmp_path):
    from sa.errors import DamagedError
    from sa.report.rsa import read_csv

    bad = tmp_path / "rsa-x.csv"
    bad.write_text("layer,time_s\n01,0.1\n")
    with pytest.raises(DamagedError, match="lacks the RSA columns"):
        read_csv(bad)
