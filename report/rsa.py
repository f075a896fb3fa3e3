"""Time-resolved RSA with rsatoolbox: each layer's RDM of the test images against the EEG's RDM at every time point.

Layer RDMs are correlation distances between the images' cached features. EEG RDMs are cross-validated across
repetitions (rsatoolbox's crossnobis with identity noise = cross-validated Euclidean distance, each repetition a
fold), one per time sample. Layer and EEG RDMs are compared by Spearman correlation. The noise ceiling at each time
is the Spearman correlation between the RDMs of the odd and the even repetitions, Spearman-Brown corrected: how
well any model RDM could match this EEG's RDM given its noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from sa.errors import SAError

INSTALL = "pip install 'sa[analysis]' (or pip install rsatoolbox)"


def _rsatoolbox():
    try:
        import rsatoolbox
    except ImportError:
        raise SAError(f"time-resolved RSA needs rsatoolbox, which is not installed; run {INSTALL}.") from None
    return rsatoolbox


@dataclass
class RSAResult:
    """Spearman r (layers x times), the noise ceiling per time, each layer's peak latency and r."""

    layers: list[str]
    times: np.ndarray
    r: np.ndarray  # (n_layers, n_times)
    ceiling: np.ndarray  # (n_times,)

    def peak(self, layer: str) -> tuple[float, float]:
        """(latency in s, Spearman r) of a layer's peak."""
        row = self.r[self.layers.index(layer)]
        k = int(np.nanargmax(row))
        return float(self.times[k]), float(row[k])

    def best_layer(self) -> str:
        """The layer whose peak correlation is highest."""
        return self.layers[int(np.nanargmax(np.nanmax(self.r, axis=1)))]


def eeg_rdms(eeg: np.ndarray):
    """rsatoolbox RDMs (one per time) of (images, reps, C, T) EEG, cross-validated across repetitions."""
    rsa = _rsatoolbox()
    n_img, reps, c, t = eeg.shape
    if reps < 2:
        raise SAError("time-resolved RSA needs at least two repetitions per test image to cross-validate the EEG RDM.")
    conds = np.repeat(np.arange(n_img), reps)
    folds = np.tile(np.arange(reps), n_img)
    data = eeg.reshape(n_img * reps, c, t)
    out = []
    for k in range(t):
        ds = rsa.data.Dataset(data[:, :, k], obs_descriptors={"conds": conds, "fold": folds})
        out.append(rsa.rdm.calc_rdm(ds, method="crossnobis", descriptor="conds", cv_descriptor="fold"))
    return out


def layer_rdm(features: np.ndarray):
    """rsatoolbox RDM of (images, D) features: correlation distance."""
    rsa = _rsatoolbox()
    return rsa.rdm.calc_rdm(rsa.data.Dataset(np.asarray(features, dtype=np.float64)), method="correlation")


def split_half_ceiling(eeg: np.ndarray) -> np.ndarray:
    """Per time, the Spearman-Brown corrected Spearman r between the RDMs of odd and even repetitions."""
    rsa = _rsatoolbox()
    halves = [eeg[:, 0::2], eeg[:, 1::2]]
    if min(h.shape[1] for h in halves) < 2:
        return np.full(eeg.shape[-1], np.nan)
    a, b = (eeg_rdms(h) for h in halves)
    r = np.asarray([float(rsa.rdm.compare(x, y, method="spearman")[0, 0]) for x, y in zip(a, b)])
    return 2 * r / (1 + r)


def time_resolved_rsa(eeg: np.ndarray, features: Mapping[str, np.ndarray], times: np.ndarray) -> RSAResult:
    """RSA of every layer against the EEG at each time point; eeg is (images, reps, C, T), features[layer] (images, D)."""
    rsa = _rsatoolbox()
    eeg = np.asarray(eeg, dtype=np.float64)
    if eeg.ndim != 4 or len(times) != eeg.shape[-1]:
        raise SAError(f"RSA needs EEG shaped (images, reps, channels, times) with {len(times)} times; got {eeg.shape}.")
    brain = eeg_rdms(eeg)
    layers = list(features)
    r = np.empty((len(layers), len(brain)))
    for i, name in enumerate(layers):
        f = np.asarray(features[name])
        if f.shape[0] != eeg.shape[0]:
            raise SAError(f"layer {name} has {f.shape[0]} feature rows for {eeg.shape[0]} test images.")
        model = layer_rdm(f)
        r[i] = [float(rsa.rdm.compare(model, b, method="spearman")[0, 0]) for b in brain]
    return RSAResult(layers=layers, times=np.asarray(times, float), r=r, ceiling=split_half_ceiling(eeg))
