"""The sweep: layer lists, backbone resolution, rows and curves, resume after rerun/deletion, LOSO folds."""

from __future__ import annotations

import numpy as np
import pytest
from support_sweep import fast_config, metrics, synth_dataset

from sa.cache import open_root
from sa.errors import SAError
from sa.brain.data import open_dataset
from sa.train.features import expand_layers, resolve_group
from sa.train.results import ResultsDir
from sa.train.sweep import sweep


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synth_dataset(tmp_path_factory)


def _sweep(synth, out, **kw):
    path, info = synth
    opts = dict(cache=info["planted"]["cache"], layers="8,9", encoders="linear", subjects="sub-01", seeds=2,
                config=fast_config(), val_fraction=0.25, progress=False)
    return sweep(path, "torchvision-mobilenet_v2", out=out, **{**opts, **kw})


def test_layer_specs_and_backbone_resolution(synth):
    path, info = synth
    root = open_root(info["planted"]["cache"])
    ds = open_dataset(path)
    ids = list(ds.raw("sub-01").train.image_ids)
    group = resolve_group(root, "torchvision-mob", ids)  # a unique prefix of the backbone key
    assert group.key == info["planted"]["cache_key"]
    assert expand_layers("all", group, "gap") == [f"{i:02d}" for i in range(19)] + ["final"]
    assert expand_layers("final", group, "gap") == ["final"]
    assert expand_layers("every:4", group, "gap") == ["04", "08", "12", "16", "final"]
    assert expand_layers("1,9", group, "gap", with_final=False) == ["01", "09"]
    with pytest.raises(SAError, match="has gap layers 00..18"):
        expand_layers("3,40", group, "gap")
    with pytest.raises(SAError, match="no-such-image.jpg"):
        resolve_group(root, "torchvision-mob", ids + ["training_images/00001_x/no-such-image.jpg"])
    with pytest.raises(SAError, match="no cache group"):
        resolve_group(root, "dinov2-g", ids)


def test_rows_curves_and_resume(synth, tmp_path, monkeypatch):
    out = tmp_path / "res"
    first = _sweep(synth, out)
    assert (first.planned, first.trained, first.skipped) == (6, 6, 0)
    rows = {r["run_id"]: r for r in ResultsDir(out).runs()}
    assert sorted((r["layer"], r["seed"]) for r in rows.values()) == [(lyr, s) for lyr in ("08", "09", "final") for s in (0, 1)]
    r9 = next(r for r in rows.values() if r["layer"] == "09")
    assert r9["depth"] == pytest.approx((9 - 1) / (18 - 1)) and r9["pool"] == "gap" and r9["fold"] == "intra"
    assert r9["cache_key"] == synth[1]["planted"]["cache_key"] and r9["backbone"] == "torchvision:mobilenet_v2"
    assert r9["n_blocks"] == 18 and r9["backbone_params"] > 1e6 and r9["epochs"] == 4
    # every setting that changes the numbers is a column
    assert (r9["channels"], r9["window"], r9["single_trials"], r9["val_fraction"], r9["split_seed"]) == ("all", "all", False, 0.25, 0)
    assert (r9["gallery"], r9["embed_dim"], r9["eval_seed"], r9["select"]) == ("stimuli", 32, 0, "smooth")
    assert (r9["status"], r9["precision"]) == ("ok", "fp32")
    assert next(r for r in rows.values() if r["layer"] == "final")["depth"] is None
    for rid in rows:
        assert [c["epoch"] for c in ResultsDir(out).curves(rid)] == [1, 2, 3, 4]
    assert first.summary and first.summary[0].best.layer in ("08", "09")

    # a rerun trains nothing
    import sa.train.trainer as trainer

    calls = []
    real = trainer.train_runs
    monkeypatch.setattr(trainer, "train_runs", lambda *a, **k: calls.append(len(a[6])) or real(*a, **k))
    again = _sweep(synth, out)
    assert (again.trained, again.skipped, calls) == (0, 6, [])

    # delete two rows: exactly those runs are trained again, with the same numbers
    lines = (out / "runs.csv").read_text().splitlines(keepends=True)
    dropped = [lines[2], lines[5]]
    (out / "runs.csv").write_text("".join(line for line in lines if line not in dropped))
    redo = _sweep(synth, out)
    assert (redo.trained, redo.skipped) == (2, 4) and sum(calls) == 2
    after = {r["run_id"]: r for r in ResultsDir(out).runs()}
    assert set(after) == set(rows) and all(metrics(after[k]) == metrics(rows[k]) for k in rows)


def test_changed_hyperparameters_are_new_runs(synth, tmp_path):
    out = tmp_path / "res"
    a = _sweep(synth, out, layers="9", seeds=1)
    b = _sweep(synth, out, layers="9", seeds=1, config=fast_config(lr=1e-3))
    assert a.trained == 2 and b.trained == 2 and not set(a.run_ids) & set(b.run_ids)


def test_loso_folds_hold_out_the_test_subject_and_start_fresh(synth, tmp_path, monkeypatch):
    import sa.train.trainer as trainer

    path, info = synth
    seen = {}
    real = trainer.train_runs

    def spy(train_x, train_f, val_x, val_f, test_x, *a, **k):
        seen[len(seen)] = (train_x.copy(), test_x.copy())
        return real(train_x, train_f, val_x, val_f, test_x, *a, **k)

    monkeypatch.setattr(trainer, "train_runs", spy)
    both = _sweep(synth, tmp_path / "both", layers="9", seeds=1, subjects="all", loso=True)
    assert both.trained == 4 and {r["fold"] for r in both.rows()} == {"loso"}
    ds = open_dataset(path)
    for i, subject in enumerate(("sub-01", "sub-02")):
        fold = ds.load_loso(subject, val_fraction=0.25)
        other = ds.load("sub-02" if subject == "sub-01" else "sub-01", val_fraction=0.25)
        train_x, test_x = seen[i]
        np.testing.assert_array_equal(train_x, fold.train.x)  # training trials: the other subject only
        np.testing.assert_array_equal(test_x, fold.test.x)
        assert len(train_x) == len(other.train.x)
    # fold sub-02 trained alone gives the same numbers: nothing carries over from the fold before it
    alone = _sweep(synth, tmp_path / "alone", layers="9", seeds=1, subjects="sub-02", loso=True)
    ref = {r["run_id"]: metrics(r) for r in both.rows() if r["subject"] == "sub-02"}
    assert {r["run_id"]: metrics(r) for r in alone.rows()} == ref


def test_bad_options_name_the_fix(synth, tmp_path):
    with pytest.raises(SAError, match="unknown encoder"):
        _sweep(synth, tmp_path / "r", encoders="nope")
    with pytest.raises(SAError, match="--seeds 0"):
        _sweep(synth, tmp_path / "r", seeds=0)
    with pytest.raises(SAError, match="no 'cls' pooling"):
        _sweep(synth, tmp_path / "r", pool="cls")
    with pytest.raises(SAError, match="val-fraction"):
        _sweep(synth, tmp_path / "r", val_fraction=0.0)


def test_concept_centre_gallery(synth, tmp_path):
    from sa.train.features import concept_gallery, concept_of

    path, info = synth
    group = open_root(info["planted"]["cache"]).open(info["planted"]["cache_key"])
    train = open_dataset(path).load("sub-01", val_fraction=0.25).train
    gal = concept_gallery(group, train, "gap", ["09"])
    assert list(gal.labels) == list(dict.fromkeys(train.concepts.tolist()))
    first = gal.labels[0]
    rows = [i for i, x in enumerate(group.ids.tolist()) if concept_of(x) == first]
    assert len(rows) == 6
    np.testing.assert_allclose(gal.feats["09"][0], group.read("gap/09", np.array(rows)).astype(np.float32).mean(0), rtol=1e-6)
    assert all(gal.labels[t] == c for t, c in zip(gal.targets, train.concepts))
    # test concepts have one image each in the synth cache: centres equal the stimuli, so the scores match
    plain = _sweep(synth, tmp_path / "a", layers="9", seeds=1)
    centre = _sweep(synth, tmp_path / "b", layers="9", seeds=1, gallery_cache=info["planted"]["cache_key"])
    assert not set(plain.run_ids) & set(centre.run_ids)
    assert sorted(metrics(r) for r in plain.rows()) == sorted(metrics(r) for r in centre.rows())


def test_bad_seeds_are_one_clear_error():
    from sa.errors import SAError
    from sa.train.sweep import parse_seeds

    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("4,1,4") == [4, 1]
    for bad in ("x", "0,a", "0"):
        with pytest.raises(SAError, match="--seeds"):
            parse_seeds(bad)


def test_degenerate_layers_are_flagged_never_chosen_and_nonfinite_ones_not_trained(synth, tmp_path):
    """A cache whose layers are: the planted features, constant, near-constant (a few float16 levels), NaN."""
    from sa.report.figures import write_report

    path, info = synth
    src = open_root(info["planted"]["cache"]).open(info["planted"]["cache_key"])
    ids = [str(i) for i in src.ids.tolist()]
    n = len(ids)
    rng = np.random.default_rng(0)
    arrays = {
        "gap/01": np.asarray(src.read("gap/09"), np.float16),
        "gap/02": np.ones((n, 8), np.float16),
        "gap/03": (100 + 0.01 * rng.standard_normal((n, 8))).astype(np.float16),
        "gap/04": np.where(np.arange(n)[:, None] % 7 == 0, np.nan, rng.standard_normal((n, 8))).astype(np.float16),
        "final": rng.standard_normal((n, 16)).astype(np.float16),
    }
    root = open_root(tmp_path / "cache")
    layers = [{"label": f"{i:02d}", "depth": (i - 1) / 3} for i in range(1, 5)]
    w = root.create(src.key.split("/")[0], "flagtest-0123456789", ids, {k: a.shape[1] for k, a in arrays.items()},
                    {"backbone": {"name": "flagtest", "n_blocks": 4}, "layers": layers}, block_rows=n)
    w.write_block(0, arrays)
    w.finalize()
    res = sweep(path, "flagtest", cache=tmp_path / "cache", layers="all", pool="gap", encoders="linear",
                subjects="sub-01", seeds=1, config=fast_config(epochs=6), val_fraction=0.25, out=tmp_path / "res",
                progress=False)
    rows = {r["layer"]: r for r in res.rows()}
    assert {k: r["status"] for k, r in rows.items()} == {
        "01": "ok", "02": "constant-features", "03": "near-constant-features", "04": "non-finite-features", "final": "ok"}
    assert rows["04"]["top1"] is None and rows["04"]["val_top1"] is None and ResultsDir(tmp_path / "res").curves(rows["04"]["run_id"]) == []
    assert rows["02"]["val_top1"] < 50  # no longer 100 % by merging identical gallery rows
    (s,) = res.summary
    assert s.best.layer == "01" and [ls.layer for ls in s.flagged] == ["02", "03", "04"]
    md = write_report(tmp_path / "res", tmp_path / "rep", progress=False).markdown.read_text()
    assert "(constant: gap/02; near-constant: gap/03; non-finite: gap/04) are never chosen" in md
