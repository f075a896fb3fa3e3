"""Summary numbers, layer selection on validation, the scaling fit, the report files and `sa report`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr
from typer.testing import CliRunner

from sa.train.results import ResultsDir, run_id
from sa.train.summary import encoder_grid, scaling_fit, seeds_then_subjects, summarize, to_markdown

# backbone -> (params, blocks); layers 01..blocks plus final
BACKBONES = {"bb-small": (38_000_000, 4), "bb-mid": (86_000_000, 4), "bb-big": (1_140_000_000, 4)}


def _write(rd: ResultsDir, *, backbone, layer, subject, seed, top1, top5, val, fold="intra", encoder="eegproject",
           dataset="things-eeg2", curves=None):  # fmt: skip
    params, blocks = BACKBONES[backbone]
    cfg = dict(dataset=dataset, subject=subject, fold=fold, cache_key=f"{backbone}-k", pool="mean", layer=layer,
               encoder=encoder, seed=seed)  # fmt: skip
    rid = run_id(**cfg)
    if curves is not None:
        rd.append_curves(rid, curves)
    depth = None if layer == "final" else (int(layer) - 1) / (blocks - 1)
    rd.append_run(dict(cfg, run_id=rid, backbone=backbone, backbone_params=params, n_blocks=blocks, depth=depth,
                       top1=top1, top5=top5, val_top1=val))  # fmt: skip


def _fill(rd: ResultsDir, backbones=BACKBONES, folds=("intra",), encoders=("eegproject",), curves=False):
    """Inverted-U runs: 2 subjects x 2 seeds; val picks layer 02 while test peaks at 03 for every backbone."""
    val = {"01": 20.0, "02": 50.0, "03": 45.0, "04": 10.0, "final": 30.0}
    test = {"01": 15.0, "02": 40.0, "03": 60.0, "04": 12.0, "final": 25.0}
    for b_i, backbone in enumerate(backbones):
        for fold in folds:
            for e_i, encoder in enumerate(encoders):
                for s_i, subject in enumerate(["sub-01", "sub-02"]):
                    for seed in (0, 1):
                        for layer in val:
                            off = 10 * b_i - 5 * e_i + 2 * s_i + seed - (20 if fold == "loso" else 0)
                            cur = [{"epoch": e, "train_loss": 5 - e * (1 + b_i), "val_loss": 5.5 - e, "val_top1": 1.0} for e in (1, 2)]
                            _write(rd, backbone=backbone, layer=layer, subject=subject, seed=seed, fold=fold, encoder=encoder,
                                   top1=test[layer] + off, top5=min(100.0, test[layer] + 30 + off), val=val[layer] + off,
                                   curves=cur if curves else None)  # fmt: skip


def test_best_layer_is_chosen_on_validation_not_test(tmp_path):
    rd = ResultsDir(tmp_path)
    _fill(rd, backbones={"bb-small": BACKBONES["bb-small"]})
    (s,) = summarize(rd.runs())
    assert s.best.layer == "02"  # test would pick 03 (60 % > 40 %)
    assert max(s.layers, key=lambda ls: ls.top1.mean).layer == "03"
    # test top-1 at layer 02: 40 + 2*subject + seed -> subject means 40.5, 42.5
    assert s.best.top1.mean == pytest.approx(41.5)
    assert s.best.top1.sd == pytest.approx(np.std([40.5, 42.5], ddof=1)) and s.best.top1.over == "subjects"
    assert s.final.top1.mean == pytest.approx(26.5) and s.gain == pytest.approx(15.0)
    assert s.best.depth == pytest.approx(1 / 3) and s.n_seeds == 2
    sub2 = s.subjects[1]
    assert sub2.subject == "sub-02" and sub2.best_top1.mean == pytest.approx(42.5)
    assert sub2.best_top1.sd == pytest.approx(np.std([42.0, 43.0], ddof=1)) and sub2.best_top1.over == "seeds"


def test_seeds_then_subjects_weighs_subjects_equally():
    rows = [{"subject": "a", "top1": v} for v in (10.0, 20.0, 30.0)] + [{"subject": "b", "top1": 50.0}]
    st = seeds_then_subjects(rows, "top1")
    assert st.mean == pytest.approx(35.0) and st.n == 2  # (20 + 50) / 2, not the pooled 27.5
    assert st.sd == pytest.approx(np.std([20.0, 50.0], ddof=1))
    one = seeds_then_subjects([r for r in rows if r["subject"] == "a"] + [{"subject": "a", "top1": None}], "top1")
    assert (one.mean, one.n, one.over) == (20.0, 3, "seeds") and one.sd == pytest.approx(10.0)
    assert math.isnan(seeds_then_subjects([{"subject": "a", "top1": 5.0}], "top1").sd)


def test_folds_and_encoders_are_kept_apart(tmp_path):
    rd = ResultsDir(tmp_path)
    _fill(rd, folds=("intra", "loso"), encoders=("eegproject", "eegnet"))
    sums = summarize(rd.runs())
    assert len(sums) == 3 * 2 * 2
    key = {(s.fold, s.encoder, s.backbone): s for s in sums}
    assert key[("intra", "eegproject", "bb-small")].best.top1.mean == pytest.approx(41.5)
    assert key[("loso", "eegproject", "bb-small")].best.top1.mean == pytest.approx(21.5)
    assert key[("intra", "eegnet", "bb-mid")].best.top1.mean == pytest.approx(41.5 + 10 - 5)
    assert [s.fold for s in sums[:6]] == ["intra"] * 6  # intra first
    encoders, backbones, grid = encoder_grid([s for s in sums if s.fold == "intra"])
    assert encoders == ["eegnet", "eegproject"] and backbones == ["bb-small", "bb-mid", "bb-big"]
    np.testing.assert_allclose(grid, [[36.5, 46.5, 56.5], [41.5, 51.5, 61.5]])
    partial = [s for s in sums if s.fold == "intra" and not (s.encoder == "eegnet" and s.backbone == "bb-big")]
    assert np.isnan(encoder_grid(partial)[2][0, 2])


def test_scaling_fit_matches_numpy_and_scipy():
    params = [38e6, 56e6, 86e6, 632e6, 1.14e9, 5.54e9]
    top1 = [67.7, 59.2, 68.6, 76.8, 75.9, 82.6]
    fit = scaling_fit(params, top1)
    x = np.log10(params)
    assert fit.r == pytest.approx(np.corrcoef(x, top1)[0, 1])
    assert fit.p == pytest.approx(pearsonr(x, top1).pvalue)
    assert fit.slope == pytest.approx(np.polyfit(x, top1, 1)[0]) and fit.n == 6
    assert scaling_fit(params[:2], top1[:2]) is None
    assert scaling_fit([1e8, 1e8, 1e8], [1.0, 2.0, 3.0]) is None


def test_markdown_tables_hold_the_numbers(tmp_path):
    rd = ResultsDir(tmp_path)
    _fill(rd, backbones={"bb-small": BACKBONES["bb-small"]})
    md = to_markdown(summarize(rd.runs()))
    assert "| backbone | params | blocks | best l | depth | best top-1 / top-5 | final top-1 / top-5 | gain |" in md
    assert "| bb-small | 38M | 4 | 02 | 0.33 | 41.5 ± 1.4 / 71.5 ± 1.4 | 26.5 ± 1.4 / 56.5 ± 1.4 | +15.0 |" in md
    assert "| bb-small | sub-02 | 02 | 42.5 ± 0.7 / 72.5 ± 0.7 | 27.5 ± 0.7 / 57.5 ± 0.7 | 2 |" in md


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from sa.report.figures import write_report

    root = tmp_path_factory.mktemp("results")
    rd = ResultsDir(root)
    _fill(rd, folds=("intra", "loso"), encoders=("eegproject", "eegnet"), curves=True)
    return write_report(root, root / "out", progress=False)


def test_report_writes_every_figure_and_the_markdown(report):
    names = sorted(p.name for p in report.figures)
    for fold in ("intra", "loso"):
        for enc in ("eegproject", "eegnet"):
            for kind in ("layers", "best-vs-final", "scaling", "loss-curves"):
                assert f"things-eeg2-{fold}-{enc}-{kind}.png" in names
        assert f"things-eeg2-{fold}-encoders.png" in names
    for p in report.figures:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    md = report.markdown.read_text()
    assert md.count("## things-eeg2, intra-subject") == 1 and md.count("## things-eeg2, leave-one-subject-out") == 1
    for name in names:
        assert f"]({name})" in md
    best = summarize(ResultsDir(report.out.parent).runs())
    fit = scaling_fit([s.params for s in best[:3]], [s.best.top1.mean for s in best[:3]])
    assert f"best layer r = {fit.r:.2f}" in md
    assert "| eegnet | 36.5 | 46.5 | 56.5 |" in md  # the intra encoder grid


def test_loss_curves_average_seeds_and_subjects():
    from sa.report.figures import _mean_curves

    runs = [{"run_id": r, "backbone": "b", "pool": "mean", "layer": "02"} for r in ("r1", "r2")]
    curves = [{"run_id": "r1", "epoch": 1, "train_loss": 2.0, "val_loss": 3.0},
              {"run_id": "r2", "epoch": 1, "train_loss": 4.0, "val_loss": None},
              {"run_id": "gone", "epoch": 1, "train_loss": 99.0, "val_loss": 99.0}]  # fmt: skip
    got = _mean_curves(runs, curves)[("b", "mean", "02")]
    assert got["train"].tolist() == [3.0] and got["val"].tolist() == [3.0] and len(_mean_curves(runs, curves)) == 1


def test_cli_report_and_missing_results(tmp_path):
    from sa.cli import app

    rd = ResultsDir(tmp_path / "res")
    _fill(rd, backbones={k: BACKBONES[k] for k in ("bb-small", "bb-big")})  # 2 backbones: no regression
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(tmp_path / "res"), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "bb-small" in res.output and "wrote 4 figures" in res.output  # no curves.csv: no loss plot
    md = (tmp_path / "rep" / "results.md").read_text()
    assert "regression needs ≥ 3 backbones with different sizes (have 2)" in md
    assert not (tmp_path / "rep" / "things-eeg2-intra-loss-curves.png").exists()
    res = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 2
    assert "runs.csv does not exist" in res.output and "sa sweep" in res.output


def _setting_row(rd: ResultsDir, *, layer, top1, val, subject="sub-01", seed=0, channels="all", status="ok", **extra):
    cfg = dict(dataset="things-eeg2", subject=subject, fold="intra", cache_key="bb-small-k", pool="mean", layer=layer,
               encoder="eegproject", seed=seed)  # fmt: skip
    rd.append_run(dict(cfg, run_id=run_id(**cfg, channels=channels), backbone="bb-small", backbone_params=38_000_000,
                       n_blocks=4, depth=None if layer == "final" else (int(layer) - 1) / 3, top1=top1, top5=top1,
                       val_top1=val, channels=channels, window="all", status=status, **extra))  # fmt: skip


def test_three_channel_settings_are_three_sections_not_one_mean(tmp_path):
    """The reported case: sweeps at 55.0, 35.0 and 35.0 in one folder were averaged into 41.7 '± sd over seeds'."""
    from sa.cli import app

    rd = ResultsDir(tmp_path / "res")
    for channels, top1 in (("all", 55.0), ("occipital-parietal", 35.0), ("P7,Pz,O1", 35.0)):
        for layer in ("01", "02", "final"):
            _setting_row(rd, layer=layer, top1=top1 if layer == "02" else 10.0, val=50.0 if layer == "02" else 5.0,
                         channels=channels)
    sums = summarize(rd.runs())
    assert sorted((s.variant_label, s.best.top1.mean) for s in sums) == [
        ("channels=P7,Pz,O1", 35.0), ("channels=all", 55.0), ("channels=occipital-parietal", 35.0)]
    res = CliRunner().invoke(app, ["report", str(tmp_path / "res"), "--out", str(tmp_path / "rep")], terminal_width=200)
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "results.md").read_text()
    for label in ("channels=all", "channels=occipital-parietal", "channels=P7,Pz,O1"):
        assert f"## things-eeg2, intra-subject, {label}" in md
    assert "41.7" not in md and "41.7" not in res.output
    assert len([p for p in (tmp_path / "rep").glob("*-layers.png")]) == 3  # one figure per setting, none overwritten


def test_a_degenerate_layer_never_wins_and_is_flagged(tmp_path):
    rd = ResultsDir(tmp_path)
    for seed in (0, 1):
        _setting_row(rd, layer="01", top1=20.0, val=30.0, seed=seed)
        _setting_row(rd, layer="02", top1=0.0, val=100.0, seed=seed, status="constant-features")  # the old failure
        _setting_row(rd, layer="03", top1=None, val=None, seed=seed, status="non-finite-features")
        _setting_row(rd, layer="final", top1=5.0, val=4.0, seed=seed)
    (s,) = summarize(rd.runs())
    assert s.best.layer == "01" and s.best.top1.mean == 20.0
    assert [(ls.layer, ls.flag) for ls in s.flagged] == [("02", "constant-features"), ("03", "non-finite-features")]
    md = to_markdown([s])
    assert "(constant: mean/02; non-finite: mean/03) are never chosen" in md


def test_headline_counts_only_subjects_with_a_result(tmp_path):
    """NaN rows (a diverged subject) must not keep '2 subject(s)' in the headline."""
    from sa.train.summary import spread_note

    rd = ResultsDir(tmp_path)
    for layer in ("01", "02", "final"):
        _setting_row(rd, layer=layer, top1=30.0, val=20.0 + int(layer != "final"), subject="sub-01")
        _setting_row(rd, layer=layer, top1=None, val=None, subject="sub-02", status="diverged")
        _setting_row(rd, layer=layer, top1=None, val=None, subject="sub-03")  # NaN cells, no status (an older sa)
    (s,) = summarize(rd.runs())
    assert [sub.subject for sub in s.subjects] == ["sub-01"]
    assert "1 subject(s)" in spread_note([s]) and s.n_diverged == 3


def test_report_says_what_it_assumes_for_an_old_runs_csv(tmp_path):
    import csv

    from sa.report.figures import write_report
    from sa.train.results import LEGACY_RUN_COLUMNS

    rd = ResultsDir(tmp_path / "res")
    _fill(rd, backbones={"bb-small": BACKBONES["bb-small"]})
    rows = rd.runs()
    with open(rd.runs_path, "w", newline="") as fh:  # rewrite it as the old sa did: the old columns only
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(LEGACY_RUN_COLUMNS)
        for r in rows:
            w.writerow(["" if r[c] is None else r[c] for c in LEGACY_RUN_COLUMNS])
    rep = write_report(rd.path, tmp_path / "rep", progress=False)
    md = rep.markdown.read_text()
    assert "written by an older sa without the column(s) embed_dim, channels, window" in md and "not recorded" in md
    assert rep.summaries[0].best.layer == "02" and rep.summaries[0].variant == ()
