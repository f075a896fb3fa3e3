"""`--encoders ridge`: a closed-form linear decoder from the flattened brain response to every layer's features.

One eigendecomposition of the training brain matrix (the Gram matrix of its smaller side) serves every layer and
every regularisation strength: for each layer only X'Y is computed, and each alpha then costs O(rank x width).
The strength is chosen per layer by generalised cross-validation (GCV; Golub, Heath & Wahba 1979) on the
training rows alone -- validation and test rows are never read for it. The decoded features are scored like every
other encoder (sa.train.evaluate: n-way top-1/top-5 by cosine against the gallery, validation top-1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from sa.errors import SAError

# alphas tried, as multiples of the mean eigenvalue of the centred training Gram matrix
RELATIVE_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-4, 4, 17))
_FLOAT64_LIMIT = 512 * 2**20  # brain matrices up to this size in float64 are held in float64, bigger in float32


@dataclass
class BrainBasis:
    """The centred training brain matrix's right singular vectors V (P, r) and squared singular values s2 (r,)."""

    mean: np.ndarray  # (P,) column means of the training rows
    v: np.ndarray  # (P, r)
    s2: np.ndarray  # (r,), descending, all > 0
    n: int  # training rows
    xc: np.ndarray = field(repr=False)  # (n, P) centred training rows, kept for X'Y of each layer


def flatten(x: Any) -> np.ndarray:
    """(n, C, T) brain responses -> (n, C*T) rows; float64 when small, float32 when big (THINGS-sized)."""
    a = np.asarray(x)
    a = a.reshape(len(a), -1)
    dtype = np.float64 if a.size * 8 <= _FLOAT64_LIMIT else np.float32
    return a.astype(dtype, copy=False)


def fit_basis(x_train: Any) -> BrainBasis:
    """Eigendecompose the centred training brain matrix once (through whichever Gram matrix is smaller)."""
    x = flatten(x_train)
    if not np.isfinite(x).all():
        raise SAError("the training brain data hold NaN or Inf values, so no ridge decoder can be fitted; "
                      "check the data with `sa data check`.")
    mean = x.mean(axis=0)
    xc = x - mean.astype(x.dtype)
    n, p = xc.shape
    if p <= n:
        s2, v = np.linalg.eigh((xc.T @ xc).astype(np.float64))
    else:
        s2, u = np.linalg.eigh((xc @ xc.T).astype(np.float64))
        keep = s2 > 0
        v = (xc.T.astype(np.float64) @ u[:, keep]) / np.sqrt(s2[keep])
        s2 = s2[keep]
    order = np.argsort(s2)[::-1]
    s2, v = s2[order], v[:, order]
    keep = s2 > s2[0] * 1e-10 if len(s2) and s2[0] > 0 else np.zeros(len(s2), bool)
    if not keep.any():
        raise SAError("the training brain data are constant across rows, so no ridge decoder can be fitted.")
    return BrainBasis(mean=mean, v=np.ascontiguousarray(v[:, keep]), s2=s2[keep], n=n, xc=xc)


@dataclass
class LayerFit:
    """One layer's ridge fit in the basis: B = V'X'Yc (r, D), feature means, the chosen alpha and the GCV curve."""

    b: np.ndarray
    y_mean: np.ndarray
    alpha: float
    alphas: np.ndarray
    gcv: np.ndarray

    def coef(self, basis: BrainBasis) -> np.ndarray:
        """The (P, D) weights W = V diag(1/(s2+alpha)) V'X'Yc, i.e. (X'X + alpha I)^-1 X'Y on centred data."""
        return basis.v @ (self.b / (basis.s2 + self.alpha)[:, None])

    def predict_projected(self, zv: np.ndarray, basis: BrainBasis) -> np.ndarray:
        """Features decoded from rows already centred and projected on V (zv = (Z - mean) V)."""
        return zv @ (self.b / (basis.s2 + self.alpha)[:, None]) + self.y_mean


def gcv_curve(s2: np.ndarray, uty_sq: np.ndarray, yy: float, n: int, alphas: np.ndarray) -> np.ndarray:
    """GCV(alpha) = RSS / (n (1 - df/n)^2) of ridge with an unpenalised intercept, summed over targets.

    uty_sq[j] = ||u_j' Yc||^2 over targets; yy = ||Yc||^2. The intercept adds one degree of freedom.
    """
    shrink = alphas[:, None] / (s2[None, :] + alphas[:, None])  # (A, r)
    rss = yy - uty_sq.sum() + (shrink**2 * uty_sq[None, :]).sum(1)
    df = 1.0 + (s2[None, :] / (s2[None, :] + alphas[:, None])).sum(1)
    denom = n * (1.0 - df / n) ** 2
    return np.where(df < n, np.maximum(rss, 0.0) / np.where(df < n, denom, 1.0), np.inf)


def fit_layer(basis: BrainBasis, y_train: Any, alphas: Sequence[float] | None = None) -> LayerFit:
    """Ridge from the training brain rows to one layer's (n, D) training features, alpha by GCV on those rows only."""
    y = np.asarray(y_train, dtype=np.float64)
    if y.shape[0] != basis.n:
        raise SAError(f"ridge got {y.shape[0]} feature rows for {basis.n} training brain rows; give one per row.")
    y_mean = y.mean(axis=0)
    yc = y - y_mean
    c = basis.xc.T @ yc.astype(basis.xc.dtype)  # (P, D): the one pass over the training rows per layer
    b = basis.v.T @ c.astype(np.float64)  # (r, D)
    uty_sq = (b**2).sum(1) / basis.s2  # ||u_j' Yc||^2, since u_j = Xc v_j / s_j
    scale = float(basis.s2.mean())
    grid = np.asarray(alphas if alphas is not None else [a * scale for a in RELATIVE_ALPHAS], dtype=np.float64)
    if not len(grid) or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise SAError(f"ridge alphas must be positive finite numbers (got {list(grid)}).")
    curve = gcv_curve(basis.s2, uty_sq, float((yc**2).sum()), basis.n, grid)
    alpha = float(grid[int(np.argmin(curve))])
    return LayerFit(b=b, y_mean=y_mean, alpha=alpha, alphas=grid, gcv=curve)


@dataclass
class RidgeResult:
    """A ridge run's test metrics, in the attribute names of sa.train.trainer.RunResult (so jobs write the same row)."""

    layer: str
    alpha: float
    top1: float
    top5: float
    kway: dict[str, float]
    mean_rank: float
    val_top1: float
    train_seconds: float
    encoder_params: int
    brain_test: np.ndarray = field(repr=False)  # (n_test, D) decoded features of the test trials
    image_test: np.ndarray = field(repr=False)  # (m, D) the gallery features they are scored against
    best_epoch: int | None = None
    temperature_final: float | None = None
    curves: list = field(default_factory=list, repr=False)
    model: Any = None
    diverged: bool = False


def ridge_scan(train_x: Any, train_feats: Mapping[str, np.ndarray], val_x: Any | None,
               val_feats: Mapping[str, np.ndarray] | None, test_x: Any, test_feats: Mapping[str, np.ndarray],
               test_targets: np.ndarray | None = None, val_ids: Sequence[str] | None = None,
               ks: Sequence[int] = (2, 4, 10, 50, 100), eval_seed: int = 0,
               alphas: Sequence[float] | None = None) -> dict[str, RidgeResult]:
    """Fit and score a ridge decoder for every layer from one eigendecomposition of the training brain matrix."""
    import torch

    from sa.train.evaluate import retrieval_metrics, top1_accuracy

    start = time.perf_counter()
    basis = fit_basis(train_x)
    shared = time.perf_counter() - start
    dtype = basis.xc.dtype

    def project(x: Any) -> np.ndarray:
        return (flatten(x).astype(dtype, copy=False) - basis.mean.astype(dtype)) @ basis.v.astype(dtype)

    test_v = project(test_x)
    val_v = project(val_x) if val_x is not None and len(val_x) and val_feats is not None else None
    out = {}
    for layer, y in train_feats.items():
        t0 = time.perf_counter()
        fit = fit_layer(basis, y, alphas)
        pred = fit.predict_projected(test_v, basis).astype(np.float32)
        gallery = np.asarray(test_feats[layer], dtype=np.float32)
        m = retrieval_metrics(pred, gallery, test_targets, ks=ks, seed=eval_seed)
        val = float("nan")
        if val_v is not None:
            val = top1_accuracy(torch.as_tensor(fit.predict_projected(val_v, basis).astype(np.float32)),
                                torch.as_tensor(np.asarray(val_feats[layer], dtype=np.float32)), val_ids)
        d = gallery.shape[1]
        out[layer] = RidgeResult(layer=layer, alpha=fit.alpha, top1=m["top1"], top5=m["top5"],
                                 kway={k: v for k, v in m.items() if k.startswith("k")}, mean_rank=m["mean_rank"],
                                 val_top1=val, train_seconds=time.perf_counter() - t0 + shared / len(train_feats),
                                 encoder_params=int(basis.mean.size * d + d), brain_test=pred, image_test=gallery)
    return out


def ridge_runs(train_x: np.ndarray, train_feats: Mapping[str, np.ndarray], val_x: np.ndarray | None,
               val_feats: Mapping[str, np.ndarray] | None, test_x: np.ndarray, test_feats: Mapping[str, np.ndarray],
               runs: Sequence[Any], cfg: Any, test_targets: np.ndarray | None = None, progress: bool = False,
               val_ids: Sequence[str] | None = None) -> list[RidgeResult]:
    """sa.train.trainer.train_runs' signature for ridge: one result per RunSpec (seeds share the deterministic fit)."""
    layers = list(dict.fromkeys(r.layer for r in runs))
    scan = ridge_scan(train_x, {lyr: train_feats[lyr] for lyr in layers}, val_x,
                      None if val_feats is None else {lyr: val_feats[lyr] for lyr in layers}, test_x,
                      {lyr: test_feats[lyr] for lyr in layers}, test_targets, val_ids, ks=cfg.ks,
                      eval_seed=cfg.eval_seed)
    return [scan[r.layer] for r in runs]
