"""The sweep on a 2-worker dask LocalCluster (loopback) writes the same rows as the in-process sweep."""

from __future__ import annotations

import numpy as np
import pytest
from support_sweep import fast_config, metrics, synth_dataset

from sa.train.results import ResultsDir
from sa.train.sweep import sweep


def test_dask_local_cluster_gives_the_same_rows(tmp_path_factory, tmp_path):
    path, info = synth_dataset(tmp_path_factory)
    kw = dict(cache=info["planted"]["cache"], layers="9", encoders="linear", subjects="all", seeds=2,
              config=fast_config(), val_fraction=0.25, progress=False)
    local = sweep(path, "torchvision-mobilenet_v2", out=tmp_path / "local", **kw)
    dist = sweep(path, "torchvision-mobilenet_v2", out=tmp_path / "dist", workers=2, **kw)
    assert dist.trained == local.trained == 8
    a = {r["run_id"]: metrics(r) for r in ResultsDir(tmp_path / "local").runs()}
    b = {r["run_id"]: metrics(r) for r in ResultsDir(tmp_path / "dist").runs()}
    assert a.keys() == b.keys()
    for rid in a:  # accuracies and epochs exactly; the learned temperature up to float summation order
        assert a[rid][:-1] == b[rid][:-1] and a[rid][-1] == pytest.approx(b[rid][-1], rel=1e-5)
    for rid in a:
        ca = [(c["epoch"], c["train_loss"], c["val_top1"]) for c in ResultsDir(tmp_path / "local").curves(rid)]
        cb = [(c["epoch"], c["train_loss"], c["val_top1"]) for c in ResultsDir(tmp_path / "dist").curves(rid)]
        np.testing.assert_allclose(ca, cb, rtol=1e-5)  # thread counts may reorder float sums
    again = sweep(path, "torchvision-mobilenet_v2", out=tmp_path / "dist", workers=2, **kw)
    assert again.trained == 0 and again.skipped == 8
