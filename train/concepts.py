"""Concept accuracy: the share of each test trial's top-5 retrieved gallery images whose concept shares a coarse
category (THINGS' high-level categories: animal, food, tool, ...) with the target's concept.

Categories come from a CSV (or TSV) with one `concept,category` pair per row; a concept in several categories
has several rows, and a retrieved image counts when its concept shares any category with the target's.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sa.errors import SAError


def normalise(concept: str) -> str:
    """Concept names compared case-insensitively with spaces as underscores (THINGS writes both)."""
    return str(concept).strip().lower().replace(" ", "_")


def read_categories(path: str | Path) -> dict[str, frozenset[str]]:
    """{concept: its categories} from a two-column concept,category CSV/TSV (a header row is skipped)."""
    p = Path(path)
    if not p.is_file():
        raise SAError(f"--categories {p} is not a file; give a CSV with one concept,category pair per row.")
    text = p.read_text(encoding="utf-8-sig")
    first = text.splitlines()[0] if text.strip() else ""
    dialect = "excel-tab" if "\t" in first else "excel"
    out: dict[str, set[str]] = {}
    for k, row in enumerate(csv.reader(text.splitlines(), dialect=dialect)):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise SAError(f"--categories {p} line {k + 1} is not a concept,category pair; write one pair per row.")
        if k == 0 and normalise(cells[0]) in ("concept", "word", "uniqueid", "name"):
            continue
        out.setdefault(normalise(cells[0]), set()).add(normalise(cells[1]))
    if not out:
        raise SAError(f"--categories {p} holds no concept,category pair.")
    return {c: frozenset(v) for c, v in out.items()}


def check_concepts(categories: Mapping[str, frozenset[str]], concepts: Sequence[str], source: str) -> None:
    """SAError naming the concepts the category table lacks."""
    missing = sorted({str(c) for c in concepts if normalise(c) not in categories})
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise SAError(f"--categories {source} has no category for {len(missing)} test concept(s): {shown}; "
                      "add a concept,category row for each.")


def concept_top5(sims: Any, targets: Sequence[int], gallery_concepts: Sequence[str],
                 categories: Mapping[str, frozenset[str]], k: int = 5) -> float:
    """% of the top-k gallery rows (by similarity, over all trials) whose concept shares a category with the target's."""
    s = np.asarray(sims, dtype=np.float64)
    t = np.asarray(targets, dtype=np.int64)
    cats = [categories[normalise(c)] for c in gallery_concepts]
    k = min(k, s.shape[1])
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    same = np.asarray([[bool(cats[j] & cats[t[i]]) for j in row] for i, row in enumerate(top)])
    return float(same.mean() * 100)


def gallery_concepts(labels: Sequence[str]) -> list[str]:
    """The concept of each gallery row: image ids map to their folder's concept, concept labels stay."""
    from sa.brain.things import concepts_of_ids

    labels = [str(x) for x in labels]
    return [str(c) for c in concepts_of_ids(labels)] if all("/" in x for x in labels) else labels


def test_embeddings(result: Any, test_x: np.ndarray, test_feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(brain, image) test embeddings of a run: a ridge run's decoded features, or a trained model's projections."""
    if getattr(result, "brain_test", None) is not None:
        return np.asarray(result.brain_test), np.asarray(result.image_test)
    import torch

    model = result.model
    with torch.no_grad():
        brain = model.encode_brain(torch.as_tensor(test_x, dtype=torch.float32))
        image = model.encode_image(torch.as_tensor(test_feats, dtype=torch.float32))
    return brain.float().cpu().numpy(), image.float().cpu().numpy()


def run_concept_top5(result: Any, test_x: np.ndarray, test_feats: np.ndarray, targets: Sequence[int],
                     labels: Sequence[str], categories: Mapping[str, frozenset[str]]) -> float:
    """concept_top5 of one run, by cosine similarity of its test embeddings (as top-1/top-5 are scored)."""
    brain, image = test_embeddings(result, test_x, test_feats)
    b = brain / np.maximum(np.linalg.norm(brain, axis=1, keepdims=True), 1e-12)
    g = image / np.maximum(np.linalg.norm(image, axis=1, keepdims=True), 1e-12)
    return concept_top5(b @ g.T, targets, gallery_concepts(labels), categories)
