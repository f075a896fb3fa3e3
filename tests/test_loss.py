"""CLIP loss: symmetric, equal to a hand computation, temperature fixed or learnable."""

from __future__ import annotations

import math

import pytest
import torch

from sa.train.loss import ClipLoss, clip_loss


def test_matches_hand_computation_on_two_pairs():
    b = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    i = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    s = 10.0
    c = 1 / math.sqrt(2)  # cosines: [[1, c], [0, c]]
    row0 = -math.log(math.exp(s) / (math.exp(s) + math.exp(s * c)))
    row1 = -math.log(math.exp(s * c) / (math.exp(0) + math.exp(s * c)))
    col0 = -math.log(math.exp(s) / (math.exp(s) + math.exp(0)))
    col1 = -math.log(math.exp(s * c) / (math.exp(s * c) + math.exp(s * c)))
    want = 0.5 * ((row0 + row1) / 2 + (col0 + col1) / 2)
    assert float(clip_loss(b, i, torch.tensor(s))) == pytest.approx(want, rel=1e-6)


def test_symmetric_and_scale_invariant_inputs():
    torch.manual_seed(0)
    b, i = torch.randn(8, 5), torch.randn(8, 5)
    s = torch.tensor(7.0)
    assert float(clip_loss(b, i, s)) == pytest.approx(float(clip_loss(i, b, s)), rel=1e-6)
    assert float(clip_loss(3 * b, i, s)) == pytest.approx(float(clip_loss(b, i, s)), rel=1e-6)


def test_temperature_learnable_or_fixed():
    learn, fixed = ClipLoss(0.07, learnable=True), ClipLoss(0.07, learnable=False)
    assert float(learn.logit_scale.detach()) == pytest.approx(1 / 0.07, rel=1e-6)
    assert fixed.temperature == pytest.approx(0.07, rel=1e-6)
    assert [n for n, _ in learn.named_parameters()] == ["logit_scale_raw"]
    assert list(fixed.parameters()) == []
    b, i = torch.randn(4, 3), torch.randn(4, 3)
    learn(b, i).backward()
    assert learn.logit_scale_raw.grad is not None and learn.logit_scale_raw.grad != 0
