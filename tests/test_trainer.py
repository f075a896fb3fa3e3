"""The batched trainer: batched == alone, AdamW per run, validation-based selection, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sa.errors import SAError
from sa.train.trainer import RunSpec, TrainConfig, train_runs

WIDTHS = {"a": 24, "b": 16, "c": 40}


def subject(n: int, seed: int, sign: float = 1.0, noise: float = 0.1):
    """x (n, 4, 12) = sign * (features of layer 'a') @ fixed mix + noise; layers b, c are unrelated."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).standard_normal((24, 48))
    feats = {k: rng.standard_normal((n, w)).astype(np.float32) for k, w in WIDTHS.items()}
    x = sign * feats["a"] @ mix + noise * rng.standard_normal((n, 48))
    return x.reshape(n, 4, 12).astype(np.float32), feats


CFG = TrainConfig(embed_dim=16, epochs=2, batch_size=64, lr=1e-3, precision="fp32", device="cpu", ks=(2, 4))


def test_batched_run_equals_the_same_run_alone():
    tr, va, te = subject(300, 0), subject(60, 1), subject(40, 2)
    runs = [RunSpec(layer, seed) for layer in WIDTHS for seed in (0, 1)]
    batch = train_runs(*tr, *va, *te, runs, CFG, progress=False)
    for spec, res in zip(runs, batch):
        alone = train_runs(*tr, *va, *te, [spec], CFG, progress=False)[0]
        sa, sb = alone.model.state_dict(), res.model.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sb[k], sa[k], atol=1e-5, rtol=1e-5)
        for ca, cb in zip(alone.curves, res.curves):
            assert ca["train_loss"] == pytest.approx(cb["train_loss"], abs=1e-5)
        assert res.top1 == alone.top1
    # different seeds of one layer really differ
    assert not torch.equal(batch[0].model.brain.head[0].weight, batch[1].model.brain.head[0].weight)


def test_same_seed_reproduces_the_run_exactly():
    tr, va, te = subject(200, 0), subject(40, 1), subject(40, 2)
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 1})
    a = train_runs(*tr, *va, *te, [RunSpec("a", 3)], cfg, progress=False)[0]
    b = train_runs(*tr, *va, *te, [RunSpec("a", 3)], cfg, progress=False)[0]
    torch.testing.assert_close(a.model.state_dict(), b.model.state_dict(), atol=0, rtol=0)


def test_stacked_adamw_matches_torch_adamw_per_run():
    """One AdamW over stacked tensors updates each slice as a separate AdamW would (elementwise, decoupled decay)."""
    torch.manual_seed(0)
    ps = [torch.randn(5, 3) for _ in range(3)]
    gs = [[torch.randn(5, 3) for _ in range(3)] for _ in range(4)]
    stacked = torch.stack(ps).requires_grad_(True)
    opt = torch.optim.AdamW([stacked], lr=0.1, weight_decay=0.5, fused=True)
    singles = [p.clone().requires_grad_(True) for p in ps]
    opts = [torch.optim.AdamW([p], lr=0.1, weight_decay=0.5) for p in singles]
    for g in gs:
        stacked.grad = torch.stack(g)
        opt.step()
        for p, o, gi in zip(singles, opts, g):
            p.grad = gi
            o.step()
    torch.testing.assert_close(stacked.detach(), torch.stack([p.detach() for p in singles]), atol=1e-6, rtol=1e-6)


def test_learns_a_learnable_problem_well_above_chance():
    tr, va, te = subject(1200, 0), subject(100, 1), subject(100, 2)
    cfg = TrainConfig(encoder="linear", embed_dim=32, epochs=15, batch_size=128, lr=3e-3, precision="fp32", ks=(2, 10))
    res = train_runs(*tr, *va, *te, [RunSpec("a", 0), RunSpec("b", 0)], cfg, progress=False)
    assert res[0].top1 > 60  # chance is 1 %
    assert res[0].kway["k2"] > 95
    assert res[1].top1 < 15  # layer b carries no signal
    assert res[0].curves[-1]["train_loss"] < res[0].curves[0]["train_loss"]
    assert res[0].mean_rank < res[1].mean_rank


def test_selection_uses_validation_never_test():
    """Test trials are built with the opposite sign: test accuracy falls as training goes while val rises."""
    tr, va, te = subject(600, 0), subject(100, 1), subject(100, 2, sign=-1.0)
    cfg = TrainConfig(encoder="linear", embed_dim=32, epochs=6, batch_size=128, lr=3e-3, precision="fp32", ks=())
    res = train_runs(*tr, *va, *te, [RunSpec("a", 0)], cfg, progress=False)[0]
    val = [c["val_top1"] for c in res.curves]
    assert res.best_epoch == int(np.argmax(val)) + 1 and res.best_epoch > 1
    assert res.val_top1 == max(val)
    assert res.top1 < 5  # what test-based selection would have avoided
    assert set(res.curves[0]) == {"epoch", "train_loss", "val_loss", "val_top1"}
    last = train_runs(*tr, *va, *te, [RunSpec("a", 0)], TrainConfig(**{**cfg.__dict__, "select": "last"}),
                      progress=False)[0]
    assert last.best_epoch == cfg.epochs


def test_fixed_temperature_stays_and_learnable_moves():
    tr, va, te = subject(300, 0), subject(60, 1), subject(40, 2)
    fixed = train_runs(*tr, *va, *te, [RunSpec("a", 0)], TrainConfig(**{**CFG.__dict__, "learn_temperature": False}),
                       progress=False)[0]
    learned = train_runs(*tr, *va, *te, [RunSpec("a", 0)], TrainConfig(**{**CFG.__dict__, "lr": 1e-1}), progress=False)[0]
    assert fixed.temperature_final == pytest.approx(0.07, rel=1e-6)
    assert abs(learned.temperature_final - 0.07) > 1e-4


def test_no_image_projector_projects_brain_to_feature_width():
    tr, va, te = subject(200, 0), subject(40, 1), subject(40, 2)
    cfg = TrainConfig(**{**CFG.__dict__, "image_proj": False, "epochs": 1})
    res = train_runs(*tr, *va, *te, [RunSpec("a", 0), RunSpec("c", 0)], cfg, progress=False)
    assert res[0].model.encode_brain(torch.zeros(2, 4, 12)).shape == (2, 24)
    assert res[1].model.encode_brain(torch.zeros(2, 4, 12)).shape == (2, 40)


def test_bad_options_raise_saerror():
    tr, te = subject(100, 0), subject(20, 2)
    with pytest.raises(SAError, match="select"):
        train_runs(*tr, None, None, *te, [RunSpec("a", 0)], CFG, progress=False)
    with pytest.raises(SAError, match="layer 'zz'"):
        train_runs(*tr, *tr, *te, [RunSpec("zz", 0)], CFG, progress=False)
