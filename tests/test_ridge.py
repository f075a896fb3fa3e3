"""`--encoders ridge`: the closed-form fit against numpy/scikit-learn, alpha from training rows only, planted layer first."""

from __future__ import annotations

import numpy as np
import pytest
from support_sweep import fast_config, synth_dataset

from sa.train.ridge import fit_basis, fit_layer, gcv_curve, ridge_scan
from sa.train.results import ResultsDir
from sa.train.sweep import sweep


def _data(n: int, c: int, t: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, c, t))
    w = rng.normal(size=(c * t, d))
    return x, x.reshape(n, -1) @ w + 3.0 + rng.normal(scale=2.0, size=(n, d))


@pytest.mark.parametrize("shape", [(60, 3, 5, 4), (20, 4, 10, 3)], ids=["tall", "wide"])
def test_fit_equals_linalg_solve_and_sklearn(shape):
    from sklearn.linear_model import Ridge

    x, y = _data(*shape)
    basis = fit_basis(x)
    alpha = 7.5
    fit = fit_layer(basis, y, alphas=[alpha])
    xf = x.reshape(len(x), -1)
    xc, yc = xf - xf.mean(0), y - y.mean(0)
    direct = np.linalg.solve(xc.T @ xc + alpha * np.eye(xc.shape[1]), xc.T @ yc)
    np.testing.assert_allclose(fit.coef(basis), direct, rtol=1e-7, atol=1e-9)
    sk = Ridge(alpha=alpha, fit_intercept=True, solver="svd").fit(xf, y)
    z = np.random.default_rng(1).normal(size=(9, xf.shape[1]))
    mine = fit.predict_projected((z - basis.mean) @ basis.v, basis)
    np.testing.assert_allclose(mine, sk.predict(z), rtol=1e-7, atol=1e-8)


def test_gcv_matches_explicit_hat_matrix():
    """GCV = ||(I - H) y||^2 / (n (1 - tr(H)/n)^2) with H the full hat matrix of ridge plus an unpenalised intercept."""
    x, y = _data(50, 2, 6, 3, seed=2)
    basis = fit_basis(x)
    alphas = np.asarray([0.1, 1.0, 10.0, 100.0, 1000.0])
    fit = fit_layer(basis, y, alphas=alphas)
    xc = x.reshape(50, -1) - x.reshape(50, -1).mean(0)
    n = len(xc)
    expected = []
    for a in alphas:
        h = np.full((n, n), 1.0 / n) + xc @ np.linalg.solve(xc.T @ xc + a * np.eye(xc.shape[1]), xc.T)
        resid = y - h @ y
        expected.append((resid**2).sum() / (n * (1 - np.trace(h) / n) ** 2))
    np.testing.assert_allclose(fit.gcv, expected, rtol=1e-8)
    assert fit.alpha == alphas[int(np.argmin(expected))]
    assert np.isinf(gcv_curve(np.ones(3), np.ones(3), 1.0, 3, np.asarray([1e-12])))[0]  # df >= n: no estimate


def test_alpha_never_reads_validation_or_test_rows():
    x, y = _data(80, 3, 8, 5, seed=3)
    xv, yv = _data(20, 3, 8, 5, seed=4)
    xt, yt = _data(30, 3, 8, 5, seed=5)
    layers = {"a": y, "b": y[:, :2] * 0.1}
    clean = ridge_scan(x, layers, xv, {"a": yv, "b": yv[:, :2]}, xt, {"a": yt, "b": yt[:, :2]})
    xv_bad, xt_bad = xv.copy(), xt.copy()
    xv_bad[::3] = np.nan
    xt_bad[::4] = np.nan
    poisoned = ridge_scan(x, layers, xv_bad, {"a": yv * np.nan, "b": yv[:, :2]}, xt_bad,
                          {"a": yt, "b": yt[:, :2]})
    for name in layers:
        assert poisoned[name].alpha == clean[name].alpha
        ok = np.isfinite(xt_bad).all(axis=(1, 2))
        np.testing.assert_array_equal(poisoned[name].brain_test[ok], clean[name].brain_test[ok])
        assert np.isnan(poisoned[name].brain_test[~ok]).all()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synth_dataset(tmp_path_factory)


def test_ridge_sweep_ranks_planted_layer_first(synth, tmp_path):
    """Both subjects: the best mean validation top-1 (the selection rule) and the best mean test rank are the planted layer."""
    path, info = synth
    out = tmp_path / "res"
    opts = dict(out=out, cache=info["planted"]["cache"], layers="all", encoders="ridge", subjects="all", seeds=1,
                config=fast_config(), val_fraction=0.25, progress=False)
    result = sweep(path, "torchvision-mobilenet_v2", **opts)
    rows = [r for r in ResultsDir(out).runs() if r["layer"] != "final"]
    assert len(rows) == 2 * 19 and {r["encoder"] for r in rows} == {"ridge"}
    assert all(r["status"] == "ok" and 0 <= r["top1"] <= 100 and r["best_epoch"] is None for r in rows)
    layers = sorted({r["layer"] for r in rows})
    mean = {k: {lyr: np.mean([r[k] for r in rows if r["layer"] == lyr]) for lyr in layers} for k in ("val_top1", "mean_rank", "top1")}
    planted = info["planted"]["layer"]
    assert max(layers, key=mean["val_top1"].get) == planted, mean["val_top1"]
    assert min(layers, key=mean["mean_rank"].get) == planted, mean["mean_rank"]
    assert mean["top1"][planted] > 5 * 100 / 20  # far above chance (20-way)
    assert sweep(path, "torchvision-mobilenet_v2", **opts).trained == 0 and result.trained == 40  # resumes like any sweep
