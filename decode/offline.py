"""Rank gallery images for new brain trials with a trained checkpoint: the call a BCI application makes.

`decode(checkpoint, x, gallery_group)` prepares x the way the checkpoint was
trained (its channels by name, its time points, its z-score statistics), embeds
the trials and the gallery's cached features, and returns the top-k gallery ids
and cosine scores per trial.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sa.errors import SAError
from sa.train.checkpoint import Checkpoint, load_checkpoint


def as_checkpoint(checkpoint: Checkpoint | str | os.PathLike[str]) -> Checkpoint:
    """A loaded Checkpoint from itself or a path."""
    return checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)


def select_channels(ckpt: Checkpoint, x: np.ndarray, ch_names: Sequence[str] | None) -> np.ndarray:
    """x reduced to the checkpoint's channels (by name when given); SAError naming missing channels or the shape."""
    if ch_names is None:
        if x.shape[1] != ckpt.n_channels:
            raise SAError(f"the trials have {x.shape[1]} channels but the checkpoint was trained on {ckpt.n_channels} "
                          f"({', '.join(ckpt.ch_names[:6])}{' ...' if len(ckpt.ch_names) > 6 else ''}); pass ch_names= "
                          "(--data loads them) so the right channels are picked.")
        return x
    names = [str(c) for c in ch_names]
    if len(names) != x.shape[1]:
        raise SAError(f"ch_names lists {len(names)} channels but the trials have {x.shape[1]}; give one name per channel.")
    lookup = {n.lower(): i for i, n in enumerate(names)}
    missing = [c for c in ckpt.ch_names if c.lower() not in lookup]
    if missing:
        raise SAError(f"channel(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} of the checkpoint are "
                      f"missing from the trials (they have {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}); "
                      "record or interpolate those channels.")
    return x[:, [lookup[c.lower()] for c in ckpt.ch_names]]


def select_times(ckpt: Checkpoint, x: np.ndarray, times: Sequence[float] | None) -> np.ndarray:
    """x reduced to the checkpoint's time points (matched within half a sample when times are given)."""
    if times is None:
        if x.shape[2] != ckpt.n_times:
            raise SAError(f"the trials have {x.shape[2]} time points but the checkpoint expects {ckpt.n_times} "
                          f"({ckpt.times[0]:.3f}..{ckpt.times[-1]:.3f} s); pass times= to cut the window.")
        return x
    have = np.asarray(times, dtype=float)
    if len(have) != x.shape[2]:
        raise SAError(f"times has {len(have)} points but the trials have {x.shape[2]}; give one time per sample.")
    want = np.asarray(ckpt.times, dtype=float)
    idx = np.abs(have[None, :] - want[:, None]).argmin(axis=1)
    tol = 0.5 / ckpt.sfreq if ckpt.sfreq and np.isfinite(ckpt.sfreq) else 1e-6
    if np.abs(have[idx] - want).max() > tol + 1e-9:
        raise SAError(f"the trials' time axis ({have[0]:.3f}..{have[-1]:.3f} s) does not hold the checkpoint's "
                      f"samples ({want[0]:.3f}..{want[-1]:.3f} s at {ckpt.sfreq:g} Hz); resample or re-epoch the data.")
    return x[:, :, idx]


def prepare(ckpt: Checkpoint, x: np.ndarray, ch_names: Sequence[str] | None = None,
            times: Sequence[float] | None = None, zscored: bool = False) -> np.ndarray:
    """(n, C, T) float32 trials as the checkpoint saw them in training: channels, window, z-score."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise SAError(f"trials must be (n, channels, times) or one (channels, times) trial, got shape {x.shape}.")
    x = select_times(ckpt, select_channels(ckpt, x, ch_names), times)
    if not zscored and ckpt.zscore_mean is not None:
        x = (x - ckpt.zscore_mean[None, :, None]) / ckpt.zscore_std[None, :, None]
    if not np.isfinite(x).all():
        raise SAError("the trials hold NaN or Inf values; clean or drop those trials before decoding.")
    return np.ascontiguousarray(x, dtype=np.float32)


def open_gallery(ckpt: Checkpoint, gallery: Any, root: Any = None) -> Any:
    """The gallery FeatureGroup: given, or a key resolved under `root` (default: the checkpoint's cache root)."""
    if not isinstance(gallery, str):
        group = gallery
    else:
        from sa.cache import open_root
        from sa.train.features import resolve_group

        group = resolve_group(open_root(root if root is not None else ckpt.cache_root, read_only=True), gallery)
    if group.backbone_key != ckpt.backbone_key:
        raise SAError(f"gallery cache group {group.key} was extracted with {group.backbone_key}, but the checkpoint "
                      f"aligns with {ckpt.backbone_key}; extract the gallery images with that backbone.")
    if ckpt.array not in group.arrays:
        raise SAError(f"gallery cache group {group.key} has no array {ckpt.array!r}; extract it with pool {ckpt.pool!r}.")
    return group


def embed(ckpt: Checkpoint, x: np.ndarray, feats: np.ndarray, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised brain and gallery embeddings (float32)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        zb = torch.cat([ckpt.model.encode_brain(torch.from_numpy(x[s:s + batch])) for s in range(0, len(x), batch)] or
                       [torch.zeros(0, 1)])
        zi = torch.cat([ckpt.model.encode_image(torch.from_numpy(feats[s:s + batch])) for s in range(0, len(feats), batch)])
    return F.normalize(zb, dim=-1).numpy(), F.normalize(zi, dim=-1).numpy()


def decode(checkpoint: Checkpoint | str | os.PathLike[str], x: np.ndarray, gallery_group: Any, *, top_k: int = 5,
           ch_names: Sequence[str] | None = None, times: Sequence[float] | None = None, zscored: bool = False,
           root: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery image ids (n, k) and cosine scores (n, k), best first, for trials x (n, C, T).

    x is raw (z-scored here with the training statistics) unless zscored=True;
    with ch_names/times its channels and samples are picked by name and time.
    """
    ckpt = as_checkpoint(checkpoint)
    group = open_gallery(ckpt, gallery_group, root)
    trials = prepare(ckpt, x, ch_names, times, zscored)
    skipped = set(group.manifest.get("skipped") or [])
    keep = np.asarray([i not in skipped for i in group.ids.tolist()])
    ids = group.ids[keep]
    feats = group.read(ckpt.array).astype(np.float32)[keep]
    if top_k < 1:
        raise SAError(f"--top-k {top_k} must be at least 1.")
    k = min(top_k, len(ids))
    zb, zi = embed(ckpt, trials, feats)
    sims = zb @ zi.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(sims, order, axis=1)


@dataclass
class DatasetPredictions:
    """Predictions for a split of a dataset: per trial the true image id, top-k ids and scores."""

    true_ids: np.ndarray
    ids: np.ndarray
    scores: np.ndarray
    in_gallery: np.ndarray  # per trial: is its true image a gallery candidate

    def accuracy(self, k: int) -> float | None:
        """Share (%) of trials whose true image is among the first k, over trials whose image is in the gallery."""
        if not self.in_gallery.any():
            return None
        hits = (self.ids[:, :k] == self.true_ids[:, None]).any(axis=1)
        return float(hits[self.in_gallery].mean() * 100)

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """trial, true_id, then id_1, score_1, ... id_k, score_k."""
        import csv

        k = self.ids.shape[1]
        path = os.fspath(path)
        tmp = path + ".tmp"  # written whole, then renamed: an interrupted write never looks complete
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["trial", "true_id"] + [c for j in range(1, k + 1) for c in (f"id_{j}", f"score_{j}")])
            for t in range(len(self.ids)):
                cells = [c for j in range(k) for c in (self.ids[t, j], f"{self.scores[t, j]:.6f}")]
                w.writerow([t, self.true_ids[t], *cells])
        os.replace(tmp, path)


def decode_dataset(checkpoint: Checkpoint | str | os.PathLike[str], data: Any, gallery: Any, *, subject: str | None = None,
                   split: str = "test", top_k: int = 5, root: Any = None, layout: str = "auto",
                   image_root: Any = None, meta: Any = None) -> DatasetPredictions:
    """Decode a split of a brain dataset (default: the checkpoint's subject, test split) against a gallery."""
    from sa.brain.data import open_dataset

    ckpt = as_checkpoint(checkpoint)
    if split not in ("train", "val", "test"):
        raise SAError(f"--split {split!r} is not known; use test, val or train.")
    ds = open_dataset(data, layout=layout, image_root=image_root, meta=meta)
    subj = subject if subject is not None else ckpt.meta.get("subject")
    if subj is None:
        raise SAError("the checkpoint names no subject; pass --subject.")
    opts = ckpt.meta.get("data_options") or {}
    have = list(ds.raw(subj).ch_names)
    lookup = {str(c).lower() for c in have}
    missing = [c for c in ckpt.ch_names if c.lower() not in lookup]
    if missing:
        raise SAError(f"subject {subj} in {data} lacks channel(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                      f"that the checkpoint was trained on (the recording has {', '.join(have[:6])}"
                      f"{' ...' if len(have) > 6 else ''}); decode a recording with those channels, or train a checkpoint "
                      "on channels it has (`sa train --channels ...`).")
    loaded = ds.load(subj, channels=list(ckpt.ch_names), window=None if ckpt.window is None else tuple(ckpt.window),
                     average_reps=ckpt.average_reps, zscore=False, val_fraction=opts.get("val_fraction", 0.1),
                     seed=opts.get("split_seed", 0))
    part = getattr(loaded, split)
    group = open_gallery(ckpt, gallery, root)
    ids, scores = decode(ckpt, part.x, group, top_k=top_k, ch_names=loaded.ch_names, times=loaded.times)
    true = np.asarray([str(i) for i in part.image_ids])
    return DatasetPredictions(true, ids, scores, np.isin(true, group.ids))
