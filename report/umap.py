"""UMAP of a run's projected test embeddings (brain trials and gallery images in one map), best vs final layer.

The sweep keeps them with `--save-embeddings` (sa.train.embeddings: embeddings/<run_id>.npz); the report only
reads those files. Brain and image embeddings are L2-normalised (retrieval scores them by cosine) and embedded
together by umap-learn (cosine metric, fixed seed), so a brain point near its image point is a trial the aligner
placed close to its stimulus. Points are coloured by category (--categories) or else by concept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sa.errors import SAError

INSTALL = "pip install 'sa[analysis]' (or pip install umap-learn)"
MISSING = f"UMAP figures need umap-learn, which is not installed; run {INSTALL} and write the report again."


def _umap():
    try:
        import umap
    except ImportError:
        raise SAError(MISSING) from None
    return umap


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (as cosine retrieval sees them)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def joint_umap(brain: np.ndarray, image: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2-D UMAP coordinates of brain (n, d) and image (m, d) embeddings fitted together: (n, 2), (m, 2)."""
    umap = _umap()
    both = np.vstack([unit(brain), unit(image)])
    model = umap.UMAP(n_neighbors=max(2, min(15, len(both) - 1)), min_dist=0.1, metric="cosine", random_state=seed,
                      n_jobs=1, init="spectral" if len(both) > 10 else "random")
    xy = model.fit_transform(both)
    return xy[: len(brain)], xy[len(brain):]


def colour_labels(emb: Mapping[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """Per gallery row the label to colour by, and what it is: the category when saved, else the concept."""
    from sa.train.concepts import gallery_concepts

    if "category" in emb:
        return np.asarray(emb["category"]).astype(str), "category"
    return np.asarray(gallery_concepts(emb["labels"].tolist())), "concept"


def plot_umap(panels: Sequence[tuple[str, Mapping[str, np.ndarray]]], title: str, path: Path) -> Path:
    """One panel per (name, embeddings): brain trials (dots) and gallery images (crosses), a line to each trial's target."""
    from sa.report.plotting import STYLE, _plt, _save

    plt = _plt()
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels) + 1.8, 4.8), squeeze=False,
                                 layout="constrained")
        handles: dict[str, Any] = {}
        for ax, (name, emb) in zip(axes[0], panels):
            b_xy, i_xy = joint_umap(emb["brain"], emb["image"])
            labels, kind = colour_labels(emb)
            names = sorted(set(labels.tolist()))
            few = len(names) <= 20
            cmap = plt.get_cmap("tab20" if few else "hsv")
            colour = {c: cmap(k if few else k / len(names)) for k, c in enumerate(names)}
            targets = np.asarray(emb["targets"], dtype=int)
            for (bx, by), t in zip(b_xy, targets):
                ax.plot([bx, i_xy[t, 0]], [by, i_xy[t, 1]], color="0.75", linewidth=0.4, zorder=1)
            ax.scatter(b_xy[:, 0], b_xy[:, 1], s=14, c=[colour[labels[t]] for t in targets], marker="o",
                       edgecolors="none", alpha=0.85, zorder=2)
            ax.scatter(i_xy[:, 0], i_xy[:, 1], s=30, c=[colour[c] for c in labels], marker="x", linewidths=1.2, zorder=3)
            ax.set_title(name, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("UMAP 1")
            ax.set_ylabel("UMAP 2")
            if few:
                for c in names:
                    handles.setdefault(c, plt.Line2D([], [], marker="s", linestyle="", color=colour[c], label=c))
        shape = [plt.Line2D([], [], marker="o", linestyle="", color="0.3", label="brain (test trial)"),
                 plt.Line2D([], [], marker="x", linestyle="", color="0.3", label="image (gallery)")]
        fig.legend(handles=shape + list(handles.values()), loc="outside right center", fontsize=8,
                   title=kind if handles else None)
        fig.suptitle(title)
    return _save(fig, path)


def umap_runs(runs: Sequence[Mapping[str, Any]], best: Any, results: Path) -> list[tuple[str, Mapping[str, Any]]]:
    """(panel name, run row) of the best layer's and the final layer's first run (by subject, seed) with embeddings."""
    from sa.train.embeddings import path_of

    out = []
    wanted = [("best", best.pool, best.layer)] + ([("final", "", "final")] if best.layer != "final" else [])
    for kind, pool, layer in wanted:
        rows = sorted((r for r in runs if str(r["layer"]) == layer and (layer == "final" or str(r.get("pool") or "") == pool)
                       and r.get("status") == "ok" and path_of(results, str(r["run_id"])).is_file()),
                      key=lambda r: (str(r["subject"]), int(r["seed"])))
        if rows:
            out.append((f"{kind} layer {layer}", rows[0]))
    return out
