"""Symmetric InfoNCE (CLIP) loss on cosine similarities, with a fixed or learnable temperature."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def inverse_softplus(y: float) -> float:
    """x with softplus(x) == y, so a softplus-parametrised scale can start at y."""
    return y + math.log(-math.expm1(-y))


def clip_loss(brain: torch.Tensor, image: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mean of brain->image and image->brain cross-entropy over scale * cosine similarity; row i pairs with i."""
    b = F.normalize(brain.float(), dim=-1)
    i = F.normalize(image.float(), dim=-1)
    logits = scale * (b @ i.T)
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class ClipLoss(nn.Module):
    """clip_loss with scale = softplus(raw); raw is a parameter when learnable, else a buffer.

    `temperature` is the initial (or fixed) tau; the scale starts at 1 / tau.
    """

    def __init__(self, temperature: float = 0.07, learnable: bool = True) -> None:
        super().__init__()
        raw = torch.tensor(inverse_softplus(1.0 / temperature), dtype=torch.float32)
        if learnable:
            self.logit_scale_raw = nn.Parameter(raw)
        else:
            self.register_buffer("logit_scale_raw", raw)

    @property
    def logit_scale(self) -> torch.Tensor:
        """The positive multiplier of the cosine similarities (1 / temperature)."""
        return F.softplus(self.logit_scale_raw)

    @property
    def temperature(self) -> float:
        """Current temperature tau = 1 / scale."""
        return float(1.0 / self.logit_scale.detach())

    def forward(self, brain: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return clip_loss(brain, image, self.logit_scale)
