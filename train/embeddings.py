"""A run's test-set embeddings, kept for the report's UMAP (`sa sweep --save-embeddings`).

One small `embeddings/<run_id>.npz` per run in the results folder: the projected brain embeddings of the test trials
(repetition averages), the projected image embeddings of the gallery, the gallery labels (image ids or concepts),
each trial's gallery row and, with --categories, each gallery row's category. float16: a THINGS-EEG2 run at
embed dim 1024 takes ~0.8 MB (200 + 200 rows x 1024 x 2 bytes).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sa.errors import DamagedError

FOLDER = "embeddings"
KEYS = ("brain", "image", "labels", "targets")


def embedding_arrays(result: Any, test_x: np.ndarray, gallery_feats: np.ndarray, labels: Sequence[str],
                     targets: Sequence[int], categories: Mapping[str, frozenset[str]] | None = None) -> dict[str, np.ndarray]:
    """The arrays of one run's npz: brain (n, d) and image (m, d) float16, labels (m,), targets (n,), category (m,)."""
    from sa.train.concepts import gallery_concepts, normalise, test_embeddings

    brain, image = test_embeddings(result, test_x, gallery_feats)
    out = {"brain": brain.astype(np.float16), "image": image.astype(np.float16),
           "labels": np.asarray([str(x) for x in labels]), "targets": np.asarray(targets, dtype=np.int32)}
    if categories is not None:  # a concept in several categories is shown under the first, alphabetically
        out["category"] = np.asarray([sorted(categories[normalise(c)])[0] for c in gallery_concepts(labels)])
    return out


def path_of(results: str | os.PathLike[str], run_id: str) -> Path:
    """Where a run's embeddings live in a results folder."""
    return Path(results) / FOLDER / f"{run_id}.npz"


def save_embeddings(results: str | os.PathLike[str], run_id: str, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write a run's npz (to a temporary name, then renamed: a cut-short write never looks complete)."""
    path = path_of(results, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def read_embeddings(results: str | os.PathLike[str], run_id: str) -> dict[str, np.ndarray] | None:
    """A run's arrays, None when it has none; DamagedError naming the file when it cannot be read."""
    path = path_of(results, run_id)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise DamagedError(f"{path} is damaged (not a readable npz); delete it and rerun that run with "
                           "`sa sweep --save-embeddings` into a fresh results folder.") from None
    if any(k not in out for k in KEYS) or len(out["brain"]) != len(out["targets"]) \
            or len(out["image"]) != len(out["labels"]) or out["brain"].shape[1:] != out["image"].shape[1:]:
        raise DamagedError(f"{path} lacks or mismatches the arrays {', '.join(KEYS)}; delete it and rerun that run "
                           "with `sa sweep --save-embeddings`.")
    return out
