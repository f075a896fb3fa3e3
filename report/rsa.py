"""Time-resolved RSA with rsatoolbox: each layer's RDM of the test images against the EEG's RDM at every time point.

Layer RDMs are correlation distances between the images' cached features. EEG RDMs are cross-validated across
repetitions (rsatoolbox's crossnobis with identity noise = cross-validated Euclidean distance, each repetition a
fold), one per time sample. Layer and EEG RDMs are compared by Spearman correlation. The noise ceiling at each time
is the Spearman correlation between the RDMs of the odd and the even repetitions, Spearman-Brown corrected: how
well any model RDM could match this EEG's RDM given its noise.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sa.errors import DamagedError, SAError

TIME_CHUNK = 8
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
    depth: list[float | None] = field(default_factory=list)  # relative depth per layer (None: final / unknown)
    meta: dict = field(default_factory=dict)  # dataset, subject, backbone, cache_key, pool, n_images, n_reps

    def peak(self, layer: str) -> tuple[float, float]:
        """(latency in s, Spearman r) of a layer's peak."""
        row = self.r[self.layers.index(layer)]
        k = int(np.nanargmax(row))
        return float(self.times[k]), float(row[k])

    def best_layer(self) -> str:
        """The layer whose peak correlation is highest."""
        return self.layers[int(np.nanargmax(np.nanmax(self.r, axis=1)))]


def crossnobis(eeg: np.ndarray) -> np.ndarray:
    """(T, n_pairs) cross-validated Euclidean distances of (images, reps, C, T) EEG, in rsatoolbox's upper-triangle order.

    Equals rsatoolbox's crossnobis (identity noise, each repetition a fold, leave-one-fold-out) in closed form:
    with d_f the pattern difference in fold f and D their sum, the mean over folds of (D - d_f)/(n-1) . d_f / C is
    (D.D - sum_f d_f.d_f) / (n (n-1) C). rsatoolbox's loop over folds costs ~8 s per time point at THINGS-EEG2's
    80 repetitions; this costs milliseconds (tests/test_rsa_cli.py checks it against rsatoolbox).
    """
    n_img, reps, c, n_t = np.shape(eeg)
    if reps < 2:
        raise SAError("time-resolved RSA needs at least two repetitions per test image to cross-validate the EEG RDM.")
    iu = np.triu_indices(n_img, k=1)
    out = np.empty((n_t, len(iu[0])))
    for start in range(0, n_t, TIME_CHUNK):  # float64 a few time points at a time: a THINGS subject stays float32
        x = np.asarray(eeg[..., start:start + TIME_CHUNK], dtype=np.float64)
        folds = np.ascontiguousarray(x.transpose(3, 0, 1, 2)).reshape(x.shape[-1], n_img, reps * c)
        total = np.ascontiguousarray(x.sum(axis=1).transpose(2, 0, 1))  # (t, images, C)
        dist = (_sq_dist(total @ total.transpose(0, 2, 1))
                - _sq_dist(folds @ folds.transpose(0, 2, 1))) / (reps * (reps - 1) * c)
        out[start:start + x.shape[-1]] = dist[:, iu[0], iu[1]]
    return out


def _sq_dist(gram: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances from (t, n, n) Gram matrices."""
    diag = np.diagonal(gram, axis1=1, axis2=2)
    return diag[:, :, None] + diag[:, None, :] - 2 * gram


def eeg_rdms(eeg: np.ndarray):
    """rsatoolbox RDMs (one per time point) of (images, reps, C, T) EEG, cross-validated across repetitions."""
    rsa = _rsatoolbox()
    return rsa.rdm.RDMs(crossnobis(eeg), dissimilarity_measure="crossnobis")


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
    a, b = (crossnobis(h) for h in halves)
    r = np.asarray([float(rsa.rdm.compare(rsa.rdm.RDMs(x[None]), rsa.rdm.RDMs(y[None]), method="spearman")[0, 0])
                    for x, y in zip(a, b)])
    return 2 * r / (1 + r)


def time_resolved_rsa(eeg: np.ndarray, features: Mapping[str, np.ndarray], times: np.ndarray) -> RSAResult:
    """RSA of every layer against the EEG at each time point; eeg is (images, reps, C, T), features[layer] (images, D)."""
    rsa = _rsatoolbox()
    if np.ndim(eeg) != 4 or len(times) != eeg.shape[-1]:
        raise SAError(f"RSA needs EEG shaped (images, reps, channels, times) with {len(times)} times; got {np.shape(eeg)}.")
    brain = eeg_rdms(eeg)
    layers = list(features)
    r = np.empty((len(layers), brain.n_rdm))
    for i, name in enumerate(layers):
        f = np.asarray(features[name])
        if f.shape[0] != eeg.shape[0]:
            raise SAError(f"layer {name} has {f.shape[0]} feature rows for {eeg.shape[0]} test images.")
        r[i] = rsa.rdm.compare(layer_rdm(f), brain, method="spearman")[0]
    return RSAResult(layers=layers, times=np.asarray(times, float), r=r, ceiling=split_half_ceiling(eeg))


# ---------------------------------------------------------------- from a dataset and a cache group


def test_eeg(ds: Any, subject: str, channels: Any = "all", window: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eeg (images, reps, C, T) float32, times, image ids) of a subject's test split, every repetition kept."""
    from sa.brain.data import require_ids, select
    from sa.brain.raw import first_bad_trial

    raw = ds.raw(subject)
    sel = select(raw, channels, window)
    split = require_ids(raw, "test")
    eeg = np.asarray(split.read_block(0, split.n_images, sel.channels, sel.window), dtype=np.float32)
    bad = first_bad_trial(eeg)
    if bad is not None:
        raise SAError(f"subject {raw.subject}: test image row {bad[0]} (repetition {bad[1] + 1}) holds NaN or Inf "
                      f"values in {split.source}; fix or drop that trial.")
    return eeg, np.asarray(sel.times, dtype=float), np.asarray(split.image_ids)


def run_rsa(data: Any, backbone: str, *, subject: Any = None, cache: Any = None, layers: str = "all",
            pool: str = "auto", channels: Any = "all", window: Any = None, layout: str = "auto", image_root: Any = None,
            meta: Any = None) -> RSAResult:
    """Time-resolved RSA of a subject's test EEG against every selected layer of a cached backbone."""
    from sa.brain.data import open_dataset
    from sa.cache import default_root, open_root
    from sa.train.features import array_name, expand_layers, layer_depth, resolve_group, resolve_pool
    from sa.train.jobs import parse_window

    _rsatoolbox()
    span = parse_window(window)
    ds = open_dataset(data, layout=layout, image_root=image_root, meta=meta)
    if subject is None:
        if len(ds.subjects) != 1:
            raise SAError(f"{data} has {len(ds.subjects)} subjects ({', '.join(ds.subjects[:5])}); pick one with --subject.")
        subject = ds.subjects[0]
    name = ds.subject_name(subject)
    eeg, times, ids = test_eeg(ds, name, channels, span)
    if len(ids) < 3:
        raise SAError(f"subject {name} has {len(ids)} test images; an RDM needs at least 3.")
    root = open_root(cache if cache is not None else default_root(), read_only=True)
    group = resolve_group(root, backbone, ids)
    p = resolve_pool(group, pool) if str(layers).strip().lower() != "final" else (pool if pool != "auto" else "")
    chosen = expand_layers(str(layers), group, p or "mean")
    rows = group.rows_for_ids([str(i) for i in ids])
    order = np.argsort(rows, kind="stable")
    feats = {}
    for lyr in chosen:
        data_rows = np.asarray(group.read(array_name(p, lyr), rows[order]), dtype=np.float64)
        block = np.empty_like(data_rows)
        block[order] = data_rows
        if not np.isfinite(block).all():
            raise SAError(f"layer {lyr} of {group.key} holds NaN/Inf features for the test images; re-extract it "
                          "(sa cache verify names damaged arrays) or leave it out with --layers.")
        feats[lyr] = block
    res = time_resolved_rsa(eeg, feats, times)
    res.depth = [layer_depth(group, lyr) for lyr in chosen]
    bmeta = group.manifest.get("backbone") or {}
    res.meta = {"dataset": Path(os.fspath(data)).name, "subject": name,
                "backbone": bmeta.get("name") or group.backbone_key, "cache_key": group.key, "pool": p,
                "n_images": int(eeg.shape[0]), "n_reps": int(eeg.shape[1]), "n_channels": int(eeg.shape[2])}
    return res


# ---------------------------------------------------------------- the CSV

COLUMNS = ("dataset", "subject", "backbone", "cache_key", "pool", "layer", "depth", "time_s", "spearman_r",
           "noise_ceiling", "n_images", "n_reps", "n_channels")
PREFIX = "rsa-"


def stem(res: RSAResult) -> str:
    """The file stem of a result: rsa-<subject>-<backbone>."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{res.meta.get('subject')}-{res.meta.get('backbone')}").strip("_")
    return PREFIX + slug


def _num(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else repr(float(v))


def write_csv(res: RSAResult, path: Path) -> Path:
    """One row per layer x time point (written to a temporary file, then renamed: never half-written)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    m = res.meta
    for i, lyr in enumerate(res.layers):
        depth = res.depth[i] if i < len(res.depth) else None
        for k, t in enumerate(res.times):
            w.writerow([m.get("dataset", ""), m.get("subject", ""), m.get("backbone", ""), m.get("cache_key", ""),
                        m.get("pool", ""), lyr, _num(depth), _num(t), _num(res.r[i, k]), _num(res.ceiling[k]),
                        m.get("n_images", ""), m.get("n_reps", ""), m.get("n_channels", "")])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_csv(path: Path) -> RSAResult:
    """An RSAResult from a CSV written by write_csv; DamagedError naming the file when it is not one."""
    path = Path(path)
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (UnicodeDecodeError, csv.Error):
        raise DamagedError(f"{path} is not a readable RSA CSV; rerun `sa rsa` to write it again.") from None
    if not rows or any(c not in rows[0] for c in COLUMNS):
        raise DamagedError(f"{path} lacks the RSA columns ({', '.join(COLUMNS)}) or holds no row; rerun `sa rsa` "
                           "to write it again.")
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    times = np.asarray(sorted({float(r["time_s"]) for r in rows if r["time_s"]}))
    try:
        r = np.full((len(layers), len(times)), np.nan)
        ceiling = np.full(len(times), np.nan)
        t_index = {t: k for k, t in enumerate(times)}
        depth: dict[str, float | None] = {}
        for row in rows:
            i, k = layers.index(row["layer"]), t_index[float(row["time_s"])]
            r[i, k] = float(row["spearman_r"]) if row["spearman_r"] else np.nan
            ceiling[k] = float(row["noise_ceiling"]) if row["noise_ceiling"] else np.nan
            depth[row["layer"]] = float(row["depth"]) if row["depth"] else None
    except (ValueError, KeyError, TypeError):
        raise DamagedError(f"{path} holds a value that is not a number; rerun `sa rsa` to write it again.") from None
    if len(rows) != len(layers) * len(times) or not np.isfinite(r).any():
        raise DamagedError(f"{path} does not hold one correlation per layer and time point (truncated?); rerun "
                           "`sa rsa` to write it again.")
    head = rows[0]
    meta = {k: head[k] for k in ("dataset", "subject", "backbone", "cache_key", "pool")}
    meta.update({k: int(head[k]) for k in ("n_images", "n_reps", "n_channels") if head[k].isdigit()})
    return RSAResult(layers=layers, times=times, r=r, ceiling=ceiling, depth=[depth[lyr] for lyr in layers], meta=meta)


# ---------------------------------------------------------------- figures and captions

HOW = ("EEG RDMs: cross-validated Euclidean (crossnobis, identity noise) distances between the test images at each "
       "time point, each repetition a fold; layer RDMs: correlation distance (1 - Pearson r) between the images' "
       "cached features; the two compared by Spearman correlation. Noise ceiling: Spearman r between the RDMs of "
       "odd and even repetitions, Spearman-Brown corrected.")


def _where(res: RSAResult) -> str:
    m = res.meta
    return (f"{m.get('backbone')} ({m.get('pool') or 'final'}) vs {m.get('subject')}'s test EEG "
            f"({m.get('n_images')} images x {m.get('n_reps')} repetitions, {m.get('n_channels')} channels)")


def captions(res: RSAResult) -> dict[str, str]:
    """The caption of each RSA figure: what it shows, then how it was computed."""
    best = res.best_layer()
    t, r = res.peak(best)
    ceiling = float(np.nanmax(res.ceiling)) if np.isfinite(res.ceiling).any() else float("nan")
    return {
        "heatmap": (f"Time-resolved RSA, {_where(res)}: Spearman r of every layer's RDM with the EEG RDM at each time "
                    f"point (top), and the best layer's and the final layer's time course against the noise ceiling "
                    f"(bottom). Best layer {best}: r = {r:.3f} at {t * 1000:.0f} ms (noise ceiling peak "
                    f"{ceiling:.3f}). {HOW}"),
        "peaks": (f"Per-layer peak of the RSA time course, {_where(res)}: the latency of each layer's highest "
                  f"Spearman r (left) and that r against the noise ceiling's peak (right). {HOW}"),
    }


def plot_heatmap(res: RSAResult, path: Path) -> Path:
    """Layer x time heat map of Spearman r (peaks dotted), with the best and final layers' curves and the ceiling below."""
    from sa.report.plotting import STYLE, _plt, _save

    plt = _plt()
    ms = res.times * 1000
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 3.0 + 0.18 * len(res.layers) + 2.2), sharex=True,
                                          height_ratios=[max(2.0, 0.18 * len(res.layers) + 1.0), 2.0],
                                          layout="constrained")
        lim = float(np.nanmax(np.abs(res.r))) or 1.0
        step = (ms[1] - ms[0]) / 2 if len(ms) > 1 else 1.0
        im = top.imshow(res.r, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest",
                        extent=(ms[0] - step, ms[-1] + step, len(res.layers) - 0.5, -0.5))
        top.set_yticks(range(len(res.layers)), res.layers)
        for i, lyr in enumerate(res.layers):
            t, _ = res.peak(lyr)
            top.plot(t * 1000, i, "k.", markersize=4)
        top.set_ylabel("layer")
        top.set_title(f"Time-resolved RSA · {res.meta.get('backbone')} · {res.meta.get('subject')}")
        fig.colorbar(im, ax=top, label="Spearman r", shrink=0.9)
        best = res.best_layer()
        shown = [best] + [lyr for lyr in ("final",) if lyr in res.layers and lyr != best]
        for lyr, color in zip(shown, ("#1f77b4", "#7f7f7f")):
            bottom.plot(ms, res.r[res.layers.index(lyr)], color=color, label=f"layer {lyr}")
        if np.isfinite(res.ceiling).any():
            bottom.plot(ms, res.ceiling, "k--", linewidth=1, label="noise ceiling")
        bottom.axhline(0, color="k", linewidth=0.5)
        bottom.set_xlabel("time (ms)")
        bottom.set_ylabel("Spearman r")
        bottom.grid(alpha=0.3)
        bottom.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_peaks(res: RSAResult, path: Path) -> Path:
    """Each layer's peak latency (left) and peak Spearman r with the noise ceiling's peak (right)."""
    from sa.report.plotting import STYLE, _plt, _save

    plt = _plt()
    peaks = [res.peak(lyr) for lyr in res.layers]
    x = np.arange(len(res.layers))
    with plt.rc_context(STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(max(7.0, 0.35 * len(x) + 4), 3.2), layout="constrained")
        left.plot(x, [p[0] * 1000 for p in peaks], "o-", color="#1f77b4")
        left.set_ylabel("peak latency (ms)")
        right.bar(x, [p[1] for p in peaks], color="#1f77b4", alpha=0.8)
        if np.isfinite(res.ceiling).any():
            right.axhline(float(np.nanmax(res.ceiling)), color="k", linestyle="--", linewidth=1, label="noise ceiling (peak)")
            right.legend(fontsize=8, loc="lower right")
        right.set_ylabel("peak Spearman r")
        for ax in (left, right):
            ax.set_xticks(x, res.layers, rotation=90 if len(x) > 12 else 0)
            ax.set_xlabel("layer")
        fig.suptitle(f"RSA peak per layer · {res.meta.get('backbone')} · {res.meta.get('subject')}")
    return _save(fig, path)


def check_out(out: Path) -> Path:
    """The output folder, or SAError when it names a file (checked before any work)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SAError(f"--out {out} is a file; give a folder (it will hold the RSA CSV and figures).")
    return out


def write_rsa(res: RSAResult, out: Path) -> dict[str, Path]:
    """Figures, a captions file and the CSV (last: its presence marks a complete result) into `out`."""
    out = check_out(out)
    name = stem(res)
    paths = {"csv": out / f"{name}.csv", "heatmap": out / f"{name}-heatmap.png", "peaks": out / f"{name}-peaks.png",
             "md": out / f"{name}.md"}
    out.mkdir(parents=True, exist_ok=True)
    paths["csv"].unlink(missing_ok=True)  # an older CSV must not sit beside figures of this run if we stop midway
    plot_heatmap(res, paths["heatmap"])
    plot_peaks(res, paths["peaks"])
    caps = captions(res)
    md = [f"# Time-resolved RSA: {res.meta.get('backbone')}, {res.meta.get('subject')}\n",
          f"![RSA heat map]({paths['heatmap'].name})\n", caps["heatmap"] + "\n",
          f"![RSA peaks]({paths['peaks'].name})\n", caps["peaks"] + "\n", peak_table(res), ""]
    tmp = paths["md"].with_name(paths["md"].name + ".tmp")
    tmp.write_text("\n".join(md), encoding="utf-8")
    os.replace(tmp, paths["md"])
    write_csv(res, paths["csv"])
    return paths


def peak_table(res: RSAResult) -> str:
    """Markdown table: layer, depth, peak latency (ms), peak Spearman r."""
    lines = ["| layer | depth | peak latency (ms) | peak Spearman r |", "|---|---|---|---|"]
    for i, lyr in enumerate(res.layers):
        t, r = res.peak(lyr)
        d = res.depth[i] if i < len(res.depth) else None
        lines.append(f"| {lyr} | {'–' if d is None else f'{d:.2f}'} | {t * 1000:.0f} | {r:.3f} |")
    return "\n".join(lines)


def rsa_section(results: Path, out_dir: Path) -> tuple[list[str], list[tuple]]:
    """(markdown lines, plot jobs) for every rsa-*.csv in a results folder; nothing when there is none."""
    files = sorted(Path(results).glob(f"{PREFIX}*.csv"))
    if not files:
        return [], []
    md, jobs = ["## Time-resolved RSA (`sa rsa`)\n"], []
    for f in files:
        res = read_csv(f)
        caps = captions(res)
        heat, peaks = out_dir / f"{f.stem}-heatmap.png", out_dir / f"{f.stem}-peaks.png"
        jobs += [("rsa", lambda r=res, p=heat: plot_heatmap(r, p)), ("rsa", lambda r=res, p=peaks: plot_peaks(r, p))]
        md += [f"### {res.meta.get('backbone')} · {res.meta.get('subject')} (`{f.name}`)\n",
               f"![RSA heat map]({heat.name})", "", caps["heatmap"], "", f"![RSA peaks]({peaks.name})", "",
               caps["peaks"], "", peak_table(res), ""]
    return md, jobs
