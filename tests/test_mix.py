"""`--layers mix`: the mixed projector against numpy, the learned weights on planted data, LOSO per-subject weights,
and every bad input of the mix options through the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.special import log_softmax
from support_sweep import SYNTH, fast_config, synth_dataset
from typer.testing import CliRunner

from sa.cache import open_root
from sa.cli import app
from sa.train.loss import clip_loss
from sa.train.mix import (MixOptions, MixProjector, fit_spec, masked_clip_loss, read_weights, stack_features)
from sa.train.results import ResultsDir
from sa.train.summary import summarize
from sa.train.sweep import sweep

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synth_dataset(tmp_path_factory)


def _sweep(data, cache, out, layers, seeds=SEEDS, **kw):
    opts = dict(cache=cache, layers=layers, encoders="linear", subjects="sub-01", seeds=list(seeds),
                config=fast_config(epochs=15), val_fraction=0.25, progress=False)
    return sweep(data, "torchvision-mobilenet_v2", out=out, **{**opts, **kw})


def _weights(out, run_id, subject="shared") -> dict[str, float]:
    return {r["layer"]: r["weight"] for r in read_weights(out) if r["run_id"] == run_id and r["subject"] == subject}


def _near(weights: dict[str, float], layer: str, reach: int = 1) -> float:
    """Weight mass on a layer and its neighbours within `reach` (neighbouring layers are correlated)."""
    return sum(w for lyr, w in weights.items() if abs(int(lyr) - int(layer)) <= reach)


# ---------------------------------------------------------------- the maths, against numpy / scipy


def test_projector_equals_per_layer_linear_then_weighted_unit_sum():
    """One bmm over zero-padded layers == per layer: standardise, Linear, L2-normalise, softmax-weighted sum (numpy)."""
    rng = np.random.default_rng(0)
    widths, n, d = [5, 3, 7, 3], 11, 4  # two layers share a width: one bmm for them, in their own order
    feats = {str(i): rng.normal(size=(n, w)).astype(np.float32) * (i + 1) for i, w in enumerate(widths)}
    spec = fit_spec(feats, list(feats), MixOptions(), lr=1e-3)
    torch.manual_seed(0)
    proj = MixProjector(spec.widths, d, spec.mean, spec.scale, gain=2.0)
    with torch.no_grad():
        proj.logits.copy_(torch.tensor([[0.3, -1.0, 0.8, 0.1]]))
        got = proj(torch.as_tensor(stack_features(feats, spec))).numpy()
    w = np.exp(2.0 * np.array([0.3, -1.0, 0.8, 0.1]))
    w /= w.sum()
    want = np.zeros((n, d))
    for i, (lyr, f) in enumerate(feats.items()):
        f64 = f.astype(np.float64)
        z = (f64 - f64.mean(0)) / np.sqrt(np.mean(np.sum((f64 - f64.mean(0)) ** 2, axis=1)))
        weight, bias = (t.detach().double().numpy() for t in proj.layer_linear(i))
        y = z @ weight + bias
        want += w[i] * y / np.linalg.norm(y, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_masked_clip_loss_is_clip_loss_of_the_kept_rows():
    rng = np.random.default_rng(1)
    b, i = rng.normal(size=(9, 6)), rng.normal(size=(9, 6))
    keep = np.array([1, 0, 1, 1, 0, 1, 1, 0, 1], float)
    scale = 7.0
    kb, ki = b[keep > 0], i[keep > 0]
    logits = scale * (kb / np.linalg.norm(kb, axis=1, keepdims=True)) @ (ki / np.linalg.norm(ki, axis=1, keepdims=True)).T
    want = -0.5 * (np.diag(log_softmax(logits, 1)).mean() + np.diag(log_softmax(logits, 0)).mean())
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    got = masked_clip_loss(t(b), t(i), torch.tensor(scale), t(keep))
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(masked_clip_loss(t(b), t(i), torch.tensor(scale), t(np.ones(9)))) == pytest.approx(
        float(clip_loss(t(b), t(i), torch.tensor(scale))), rel=1e-6)


def test_rows_without_a_subject_get_the_mean_of_the_subjects_weights():
    rng = np.random.default_rng(2)
    feats = {"a": rng.normal(size=(6, 4)).astype(np.float32), "b": rng.normal(size=(6, 2)).astype(np.float32)}
    spec = fit_spec(feats, ["a", "b"], MixOptions(per_subject=True), lr=1e-3, subjects=["s1", "s2"])
    proj = MixProjector(spec.widths, 3, spec.mean, spec.scale, n_subjects=2)
    with torch.no_grad():
        proj.logits.copy_(torch.tensor([[2.0, -2.0], [-1.0, 1.0]]))
        probs = torch.softmax(proj.logits, -1)
        unit, rows, _ = proj.parts(torch.as_tensor(stack_features(feats, spec, ["s1", "s2", "s1", "new", "s2", "new"])))
    np.testing.assert_allclose(rows.numpy(), np.stack([probs[0], probs[1], probs[0], probs.mean(0), probs[1],
                                                       probs.mean(0)]).astype(np.float32), rtol=1e-6)


# ---------------------------------------------------------------- the learned weights on planted data


@pytest.mark.slow  # ~45 s on 2 cores: 3 mix runs and the 60-run per-layer sweep they are compared with
def test_planted_layer_gets_the_weight_and_mix_matches_the_best_layer(synth, tmp_path):
    """Several seeds: most weight lies on the planted layer (gap/09) and its neighbours; test top-1 within seed noise
    of the best single layer chosen on validation. Single trials: 720 training rows (averaged: 180, too few for
    stable weights, docs/mix.md)."""
    path, info = synth
    cache, planted = info["planted"]["cache"], info["planted"]["layer"]
    out = tmp_path / "res"
    mix = _sweep(path, cache, out, "mix", single_trials=True)
    rows = mix.rows()
    assert [r["layer"] for r in rows] == ["mix"] * len(SEEDS) and all(r["status"] == "ok" for r in rows)
    assert all(r["depth"] is None and r["pool"] == "gap" for r in rows)
    for r in rows:
        w = _weights(out, r["run_id"])
        assert sorted(w) == info["planted"]["layers"] and sum(w.values()) == pytest.approx(1.0, abs=1e-5)
        assert _near(w, planted) > 0.4, w  # 3 of 19 layers: 0.16 if uniform
        assert max(w, key=w.get) in {f"{int(planted) + k:02d}" for k in (-1, 0, 1)}, w
    single = _sweep(path, cache, out, "all", single_trials=True)
    by_seed = {s: [r for r in single.rows() if r["seed"] == s and r["layer"] != "final"] for s in SEEDS}
    best = [max(rs, key=lambda r: r["val_top1"])["top1"] for rs in by_seed.values()]
    mix_top1 = [r["top1"] for r in rows]
    assert np.mean(mix_top1) >= np.mean(best) - 2 * max(np.std(best), 5.0), (mix_top1, best)
    # the summary never counts the mix as a layer to choose; the report draws its weights beside the sweep's curve
    (summary,) = summarize(ResultsDir(out).runs())
    assert summary.best.layer != "mix" and all(not ls.layer.startswith("mix") for ls in summary.layers)
    from sa.report.figures import write_report
    from sa.report.mix import mix_groups

    rep = write_report(out, tmp_path / "report", progress=False)
    (group,) = mix_groups(ResultsDir(out), ResultsDir(out).runs()).values()
    assert len(group["curve"]) == 19 and len(group["weights"]["mix"]["09"]) == len(SEEDS)
    figures = [p.name for p in rep.figures if p.name.startswith("mix-")]
    assert len(figures) == 1 and (tmp_path / "report" / figures[0]).stat().st_size > 0
    assert "Learned layer mixes" in rep.markdown.read_text() and figures[0] in rep.markdown.read_text()


@pytest.fixture(scope="module")
def two_layer(synth, tmp_path_factory):
    """The session's synthetic images with EEG driven by two layers (gap/04 and gap/12) in equal parts, 3 subjects."""
    path, info = synth
    group = open_root(info["planted"]["cache"]).open(info["planted"]["cache_key"])
    ids = [str(i) for i in group.ids]
    train = group.rows_for_ids([i for i in ids if i.startswith("training_images")])
    test = group.rows_for_ids([i for i in ids if i.startswith("test_images")])
    rng = np.random.default_rng(0)
    parts = []
    for layer in ("04", "12"):  # each layer reduced to 16 standardised random directions: equal shares of the signal
        f = np.asarray(group.read(f"gap/{layer}"), np.float64)
        z = (f - f[train].mean(0)) / (f[train].std(0) + 1e-9)
        parts.append(z @ rng.normal(size=(f.shape[1], 16)) / np.sqrt(f.shape[1]))
    feats = np.concatenate(parts, axis=1)
    from sa.brain.synth import make_synth

    out = tmp_path_factory.mktemp("mix-two") / "data"
    make_synth(out, replace(SYNTH, n_subjects=3, snr=4.0), features=(feats[train], feats[test]), progress=False)
    assert json.loads((out / "synth.json").read_text())["n_train_images"] == len(train)
    return out, info["planted"]["cache"]


def test_a_two_layer_mix_weighs_the_planted_layers_above_the_others(two_layer, tmp_path):
    """EEG = gap/04 + gap/12 in equal parts; mixing 01, 04, 08, 12, 16 (0.2 each if uniform), mean over 3 seeds:
    the deep planted layer gets the most, the unplanted 08 and 16 less than uniform; the shallow half of the
    signal goes to 04 and its correlated shallow neighbour 01 together (measured: docs/mix.md)."""
    data, cache = two_layer
    res = _sweep(data, cache, tmp_path / "two", "mix:1,4,8,12,16", config=fast_config(epochs=30))
    ws = [_weights(tmp_path / "two", r["run_id"]) for r in res.rows()]
    mean = {lyr: float(np.mean([w[lyr] for w in ws])) for lyr in ws[0]}
    assert sorted(mean) == ["01", "04", "08", "12", "16"]
    assert mean["12"] > 0.3 and max(mean, key=mean.get) == "12", mean
    assert mean["08"] + mean["16"] < 0.3, mean
    assert mean["01"] + mean["04"] > 0.25, mean


def test_loso_per_subject_weights_and_their_mean_for_the_new_subject(two_layer, tmp_path):
    data, cache = two_layer
    out = tmp_path / "loso"
    res = _sweep(data, cache, out, "mix:2,4,8,12,16", seeds=[0], loso=True, mix=MixOptions(per_subject=True),
                 config=fast_config(epochs=10))
    (row,) = res.rows()
    assert (row["layer"], row["fold"], row["subject"], row["status"]) == ("mix:02,04,08,12,16", "loso", "sub-01", "ok")
    table = read_weights(out)
    assert sorted({r["subject"] for r in table}) == ["shared", "sub-02", "sub-03"]  # the test subject never has weights
    by = {s: np.array([r["weight"] for r in table if r["subject"] == s]) for s in ("shared", "sub-02", "sub-03")}
    np.testing.assert_allclose(by["shared"], (by["sub-02"] + by["sub-03"]) / 2, rtol=1e-6)
    assert not np.allclose(by["sub-02"], by["sub-03"])  # each subject learned its own weights
    # the run id depends on the mix options: the shared-weights run is another run
    again = _sweep(data, cache, out, "mix:2,4,8,12,16", seeds=[0], loso=True, config=fast_config(epochs=10))
    assert again.trained == 1 and again.run_ids != res.run_ids
    rerun = _sweep(data, cache, out, "mix:2,4,8,12,16", seeds=[0], loso=True, mix=MixOptions(per_subject=True),
                   config=fast_config(epochs=10))
    assert (rerun.trained, rerun.skipped) == (0, 1)


# ---------------------------------------------------------------- bad input


def _run(args):
    return CliRunner().invoke(app, [str(a) for a in args], terminal_width=200)


FAST = ["--epochs", "2", "--batch-size", "64", "--lr", "3e-3", "--embed-dim", "16", "--device", "cpu",
        "--precision", "fp32", "--val-fraction", "0.25", "--encoders", "linear", "--subjects", "sub-01", "--seeds", "1"]


@pytest.mark.parametrize("extra, needle", [
    (["--layers", "mix:9"], "name at least two"),
    (["--layers", "mix:9,40"], "has gap layers 00..18"),
    (["--layers", "mix", "--mix-weights", "sparse"], "--mix-weights 'sparse' is not known"),
    (["--layers", "mix", "--mix-entropy", "-1"], "--mix-entropy -1.0 must be"),
    (["--layers", "mix", "--mix-per-subject"], "needs --layers mix and --loso"),
    (["--layers", "all", "--loso", "--mix-per-subject"], "needs --layers mix and --loso"),
    (["--layers", "mix", "--no-image-proj"], "drop --no-image-proj"),
])
def test_bad_mix_options_are_one_sentence_and_leave_no_rows(synth, tmp_path, extra, needle):
    path, info = synth
    out = tmp_path / "res"
    res = _run(["sweep", "--data", path, "--cache", info["planted"]["cache"], "--backbone", "torchvision-mobilenet_v2",
                "--out", out, *FAST, *extra])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], res.output
    assert not ResultsDir(out).runs() and not read_weights(out)


def test_train_refuses_a_mix_layer_in_one_sentence(synth, tmp_path):
    path, info = synth
    ckpt = tmp_path / "m.safetensors"
    res = _run(["train", "--data", path, "--cache", info["planted"]["cache"], "--backbone", "torchvision-mobilenet_v2",
                "--layer", "mix", "--subject", "sub-01", "--out", ckpt, "--epochs", "1"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "sa sweep --layers mix" in res.output and not ckpt.exists()
