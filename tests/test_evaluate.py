"""Retrieval metrics against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sa.errors import SAError
from sa.train.evaluate import kway_accuracy, retrieval_metrics, top1_accuracy


def brute_kway(sims: np.ndarray, targets: np.ndarray, k: int, seed: int) -> float:
    """Row by row: the same seeded draw of k-1 non-target columns, then a plain comparison loop."""
    n, m = sims.shape
    order = np.argsort(np.random.default_rng(seed).random((n, m - 1)), axis=1)
    hits = 0
    for r in range(n):
        others = [j for j in range(m) if j != targets[r]]
        distractors = [others[p] for p in order[r, : k - 1]]
        hits += all(sims[r, targets[r]] > sims[r, j] for j in distractors)
    return 100.0 * hits / n


def test_kway_matches_brute_force():
    rng = np.random.default_rng(0)
    sims = rng.standard_normal((30, 12))
    targets = rng.integers(0, 12, 30)
    for k in (2, 4, 10, 12):
        assert kway_accuracy(sims, targets, k, seed=5) == pytest.approx(brute_kway(sims, targets, k, 5))


def test_kway_distractors_are_distinct_and_exclude_target():
    sims = np.eye(6)  # target always scores 1, others 0: every draw is a hit
    assert kway_accuracy(sims, np.arange(6), 6, seed=1) == 100.0
    sims2 = -np.eye(6)  # target always worst: every draw is a miss
    assert kway_accuracy(sims2, np.arange(6), 2, seed=1) == 0.0


def test_topk_and_mean_rank_by_hand():
    gallery = torch.eye(4)
    brain = torch.tensor([[1.0, 0, 0, 0], [1.0, 0.5, 0, 0], [0, 0, 0.1, 1.0], [0, 0, 0, 1.0]])
    m = retrieval_metrics(brain, gallery, ks=(2, 4, 10))
    # ranks: 1, 2, 2, 1
    assert m["top1"] == 50.0 and m["top5"] == 100.0 and m["mean_rank"] == 1.5
    assert "k10" not in m and m["k4"] == 50.0
    m2 = retrieval_metrics(brain.numpy(), gallery.numpy(), targets=[0, 0, 3, 3])
    assert m2["top1"] == 100.0 and m2["mean_rank"] == 1.0


def test_kway_is_seeded():
    rng = np.random.default_rng(1)
    sims = rng.standard_normal((200, 200))
    targets = np.arange(200)
    assert kway_accuracy(sims, targets, 10, seed=3) == kway_accuracy(sims, targets, 10, seed=3)
    draws = {kway_accuracy(sims, targets, 10, seed=s) for s in range(5)}
    assert len(draws) > 1  # the seed really chooses the distractors


def test_collapsed_embeddings_rank_last_not_first():
    rng = np.random.default_rng(2)
    gallery = rng.standard_normal((50, 8))
    m = retrieval_metrics(np.zeros((50, 8)), gallery)  # every similarity ties
    assert m["top1"] == 0 and m["top5"] == 0 and m["mean_rank"] == 50
    assert top1_accuracy(torch.ones(50, 8), torch.as_tensor(gallery).float()) == 2.0  # only the row whose target wins outright


def brute_top1(brain: np.ndarray, gallery: np.ndarray, ids) -> float:
    """Row by row: the gallery is the first row of each distinct id; a hit beats every other id strictly."""
    first = {}
    for k, i in enumerate(ids):
        first.setdefault(i, k)
    unit = lambda a: a / np.linalg.norm(a)  # noqa: E731
    hits = 0
    for r in range(len(brain)):
        own = unit(brain[r]) @ unit(gallery[first[ids[r]]])
        others = [unit(brain[r]) @ unit(gallery[k]) for i, k in first.items() if i != ids[r]]
        hits += all(own > o for o in others)
    return 100.0 * hits / len(brain)


def test_validation_top1_merges_repeated_images_by_id():
    rng = np.random.default_rng(3)
    images = torch.as_tensor(rng.standard_normal((20, 8))).float()
    gallery = torch.cat([images, images])  # the same 20 images seen by two subjects (a LOSO fold)
    ids = [f"img{k}" for k in range(20)] * 2
    brain = gallery + 0.01 * torch.as_tensor(rng.standard_normal((40, 8))).float()
    assert top1_accuracy(brain, gallery, ids) == 100.0 == brute_top1(brain.numpy(), gallery.numpy(), ids)
    noisy = gallery + 0.8 * torch.as_tensor(rng.standard_normal((40, 8))).float()
    assert top1_accuracy(noisy, gallery, ids) == pytest.approx(brute_top1(noisy.numpy(), gallery.numpy(), ids))
    # without ids nothing is merged: each row ties with its copy, and ties count against the target
    assert top1_accuracy(brain, gallery) == 0.0
    with pytest.raises(SAError, match="one id per row"):
        top1_accuracy(brain, gallery, ids[:5])


def test_constant_features_score_at_chance_not_100():
    """A dead layer (every image the same feature) once merged into one gallery row and scored 100 %."""
    gallery = torch.ones(30, 8)  # what every image of a constant layer projects to
    brain = torch.as_tensor(np.random.default_rng(4).standard_normal((30, 8))).float()
    ids = [f"img{k}" for k in range(30)]
    assert top1_accuracy(brain, gallery, ids) == 0.0 == brute_top1(brain.numpy(), gallery.numpy(), ids)
    assert top1_accuracy(brain, gallery) == 0.0


def test_bad_targets_raise():
    with pytest.raises(SAError, match="targets"):
        retrieval_metrics(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(SAError, match="targets"):
        retrieval_metrics(np.ones((3, 2)), np.ones((4, 2)), targets=[0, 1, 9])
