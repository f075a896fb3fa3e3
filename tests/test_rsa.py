"""Time-resolved RSA (rsatoolbox) on `sa data synth` data: the planted layer wins, at the time its signal peaks."""

from __future__ import annotations

import numpy as np
import pytest
from support_sweep import synth_dataset

from sa.report.rsa import time_resolved_rsa


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synth_dataset(tmp_path_factory)


def test_rsa_peaks_at_planted_layer_and_signal_peak(synth):
    from sa.cache import open_root

    path, info = synth
    sub = np.load(path / "eeg" / "sub-01" / "preprocessed_eeg_test.npy", allow_pickle=True).item()
    eeg, times = sub["preprocessed_eeg_data"], np.asarray(sub["times"])
    group = open_root(info["planted"]["cache"]).open(info["planted"]["cache_key"])
    ids = sorted(i for i in group.ids.tolist() if i.startswith("test_images/"))
    rows = group.rows_for_ids(ids)
    planted = info["planted"]["layer"]
    feats = {lyr: np.asarray(group.read(f"gap/{lyr}"))[rows] for lyr in ("02", planted, "16")}
    res = time_resolved_rsa(eeg, feats, times)
    assert res.best_layer() == planted, {k: np.nanmax(v) for k, v in zip(res.layers, res.r)}
    # the synthetic signal's peak: the time of largest across-image variance of the repetition-averaged EEG
    signal_peak = times[int(np.argmax(eeg.mean(1).var(0).sum(0)))]
    latency, r = res.peak(planted)
    assert abs(latency - signal_peak) <= 0.05 and r > 0.3, (latency, signal_peak, r)
    assert np.nanmax(res.ceiling) > r * 0.9  # the ceiling bounds what a model can reach (within noise)
