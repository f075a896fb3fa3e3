"""Pooling a layer's output to one vector per image: `cls`, `mean` (patch tokens only) and `gap` (CNN maps).

Inputs are batch-first: tokens (B, N, D) with the class token first and any
register tokens right after it (the timm and open_clip layout); maps (B, C, H, W).
Pooling runs in float32 whatever the model dtype.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch

from sa.errors import SAError

ALL_POOLS = ("cls", "mean", "gap")


def applicable_pools(family: str, has_cls: bool) -> tuple[str, ...]:
    """Poolings that make sense for a backbone family: ViTs get cls (if they have one) and mean; CNNs gap."""
    if family == "tokens":
        return ("cls", "mean") if has_cls else ("mean",)
    return ("gap",)


def choose_pools(requested: Optional[Iterable[str]], available: Sequence[str], backbone: str) -> tuple[str, ...]:
    """The requested poolings (default: all that apply), refusing any the backbone cannot give."""
    if not requested:
        return tuple(available)
    pools = tuple(dict.fromkeys(requested))
    bad = [p for p in pools if p not in available]
    if bad:
        raise SAError(
            f"--pool {', '.join(bad)} does not apply to {backbone}; it offers {', '.join(available)}."
        )
    return pools


def pool_tokens(x: torch.Tensor, n_prefix: int, has_cls: bool, pools: Sequence[str]) -> dict[str, torch.Tensor]:
    """`cls` = token 0; `mean` = mean of tokens after the `n_prefix` class/register tokens."""
    out = {}
    if "cls" in pools:
        if not has_cls:
            raise SAError("this backbone has no class token, so --pool cls cannot apply; use --pool mean.")
        out["cls"] = x[:, 0].float()
    if "mean" in pools:
        out["mean"] = x[:, n_prefix:].float().mean(dim=1)
    return out


def pool_map(x: torch.Tensor) -> torch.Tensor:
    """Global average over the spatial dims of an NCHW map (2-D inputs pass through)."""
    if x.ndim == 2:
        return x.float()
    return x.float().mean(dim=tuple(range(2, x.ndim)))

