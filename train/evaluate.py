"""Zero-shot retrieval metrics: n-way top-1/top-5, k-way with seeded distractors, mean rank."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sa.errors import SAError


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, m) cosine similarities between the rows of a and b, in float32."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def target_ranks(sims: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's target among the gallery; ties count against the target.

    Pessimistic on purpose: a collapsed encoder (all similarities equal) must
    rank last, not first, or it would win checkpoint selection.
    """
    own = sims.gather(1, targets[:, None])
    return (sims >= own).sum(1)


def top1_accuracy(brain: torch.Tensor, gallery: torch.Tensor, ids: Sequence[str] | np.ndarray | None = None) -> float:
    """% of rows whose own (same-index) gallery item ranks first; the per-epoch validation score.

    With `ids` (one image id per row), rows showing the same image (an image
    seen by several subjects in a LOSO fold) share one gallery entry, so a row
    is not penalised for tying with its own copy. Rows are merged by id only,
    never by value: a layer whose features are all equal must score at chance,
    not 100 %.
    """
    if ids is None:
        targets = torch.arange(len(gallery))
        unique = gallery
    else:
        names = np.asarray([str(i) for i in ids])
        if len(names) != len(gallery):
            raise SAError(f"top1_accuracy got {len(names)} image ids for {len(gallery)} gallery rows; give one id per row.")
        _, first, inverse = np.unique(names, return_index=True, return_inverse=True)
        unique = gallery[torch.as_tensor(first, device=gallery.device)]
        targets = torch.as_tensor(inverse.reshape(-1))
    sims = cosine_similarity(brain, unique)
    return float((target_ranks(sims, targets.to(sims.device)) == 1).float().mean() * 100)


def kway_accuracy(sims: np.ndarray, targets: np.ndarray, k: int, seed: int = 0) -> float:
    """% of rows whose target beats k-1 distractors drawn (seeded, without replacement) from the rest of the gallery."""
    n, m = sims.shape
    rng = np.random.default_rng(seed)
    picks = np.argsort(rng.random((n, m - 1)), axis=1)[:, : k - 1]  # positions among the m-1 non-targets
    picks = picks + (picks >= targets[:, None])  # skip the target's own column
    own = sims[np.arange(n), targets]
    return float((sims[np.arange(n)[:, None], picks] < own[:, None]).all(1).mean() * 100)


def retrieval_metrics(brain_emb, gallery_emb, targets=None, ks: Sequence[int] = (2, 4, 10, 50, 100),
                      seed: int = 0) -> dict[str, float]:
    """top1, top5 (m-way over the whole gallery), k{k} for each k <= m, mean_rank; accuracies in %.

    brain_emb (n, d) and gallery_emb (m, d) are arrays or tensors; targets[i] is
    the gallery index of row i (default: row i pairs with gallery item i).
    """
    b = torch.as_tensor(np.asarray(brain_emb) if not torch.is_tensor(brain_emb) else brain_emb).detach().cpu()
    g = torch.as_tensor(np.asarray(gallery_emb) if not torch.is_tensor(gallery_emb) else gallery_emb).detach().cpu()
    n, m = b.shape[0], g.shape[0]
    t = torch.arange(n) if targets is None else torch.as_tensor(np.asarray(targets), dtype=torch.long)
    if targets is None and n != m:
        raise SAError(f"retrieval needs targets when there are {n} trials but {m} gallery images; pass test_targets.")
    if t.shape != (n,) or (n and (int(t.min()) < 0 or int(t.max()) >= m)):
        raise SAError(f"targets must be {n} gallery indices in [0, {m}); check test_targets.")
    sims = cosine_similarity(b, g)
    ranks = target_ranks(sims, t).double()
    out = {"top1": float((ranks <= 1).double().mean() * 100), "top5": float((ranks <= 5).double().mean() * 100)}
    for k in ks:
        if k <= m:
            out[f"k{k}"] = kway_accuracy(sims.numpy(), t.numpy(), k, seed=seed + k)
    out["mean_rank"] = float(ranks.mean())
    return out
