"""The batched trainer: batched == alone, AdamW per run, validation-based selection, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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
    cfg = TrainConfig(encoder="linear", embed_dim=32, epochs=6, batch_size=128, lr=3e-3, precision="fp32", ks=(),
                      select="val")
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


# --- the hand-written stacked path (train/stacked.py) against the module definition ---

def _models(encoder: str, image_proj: bool = True, n: int = 3):
    """n freshly initialised single-run models of one seed on layers of different widths (4 x 12 trials)."""
    from sa.train.trainer import plain_model

    cfg = TrainConfig(**{**CFG.__dict__, "encoder": encoder, "image_proj": image_proj})
    layers = list(WIDTHS)[:n] if image_proj else ["a"] * n
    return [plain_model(RunSpec(layer, seed), cfg, (4, 12), WIDTHS[layer]) for seed, layer in enumerate(layers)]


def _loss_and_grads(stack, x, feats, amp):
    with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
        losses = stack.loss(x, feats)
    (losses * torch.arange(1.0, len(stack) + 1)).sum().backward()
    return losses.detach(), {k: v.grad for k, v in stack.params.items()}


@pytest.mark.parametrize("encoder,image_proj", [("eegproject", True), ("linear", True), ("eegproject", False)])
@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_projection_stack_matches_generic_stack_on_one_step(encoder, image_proj, amp):
    """Same parameters -> same per-run losses and gradients as the vmapped module definition (dropout off)."""
    from sa.train.batched import Stack
    from sa.train.stacked import ProjectionStack

    models = _models(encoder, image_proj)
    generic, fast = Stack(models, torch.device("cpu")), ProjectionStack(models, torch.device("cpu"))
    generic.train(False)
    fast.train(False)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(32, 4, 12, generator=gen)
    feats = torch.randn(len(models), 32, generic.width, generator=gen)
    for i, d in enumerate(generic.feat_dims):
        feats[i, :, d:] = 0  # padding, as the trainer builds it
    loss_g, grad_g = _loss_and_grads(generic, x, feats, amp)
    loss_f, grad_f = _loss_and_grads(fast, x, feats, amp)
    assert grad_g.keys() == grad_f.keys()
    # bf16: the generic path rounds the logits to bf16 after scaling, the fast one keeps them fp32
    tol = dict(atol=1e-5, rtol=1e-5) if amp is None else dict(atol=0.1, rtol=0.02)
    torch.testing.assert_close(loss_f.float(), loss_g.float(), **tol)
    for k in grad_g:
        scale = float(grad_g[k].abs().max())
        err = float((grad_f[k].float() - grad_g[k].float()).abs().max())
        assert err <= (1e-5 if amp is None else 0.05) * scale + 1e-7, (k, err, scale)
    torch.testing.assert_close(fast.encode_brain(x), generic.encode_brain(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.encode_image(feats), generic.encode_image(feats), atol=1e-5, rtol=1e-5)


def test_stacked_clip_losses_equal_clip_loss_per_run():
    """The hand-written backward of the R-run CLIP loss gives autograd's gradients through clip_loss."""
    import torch.nn.functional as F

    from sa.train.loss import clip_loss
    from sa.train.stacked import stacked_clip_losses

    gen = torch.Generator().manual_seed(0)
    brain, image = torch.randn(3, 20, 8, generator=gen), torch.randn(3, 20, 8, generator=gen)
    raw, weights = torch.randn(3, generator=gen), torch.tensor([1.0, -2.0, 0.5])
    grads = []
    for fn in (lambda b, i, s: stacked_clip_losses(b, i, s),
               lambda b, i, s: torch.stack([clip_loss(b[r], i[r], s[r]) for r in range(3)])):
        leaves = [t.clone().requires_grad_(True) for t in (brain, image, raw)]
        losses = fn(leaves[0], leaves[1], F.softplus(leaves[2]))
        (losses * weights).sum().backward()
        grads.append([losses.detach()] + [t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_trainer_uses_the_fast_path_and_generic_path_still_equals_alone(monkeypatch):
    """eegproject goes through ProjectionStack; forced onto the vmapped Stack, batched still equals alone."""
    from sa.train import stacked

    made = []
    real = stacked.make_stack
    monkeypatch.setattr("sa.train.trainer.make_stack", lambda models, device: made.append(real(models, device)) or made[-1])
    tr, va, te = subject(200, 0), subject(40, 1), subject(40, 2)
    runs = [RunSpec("a", 0), RunSpec("c", 0)]
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 1})
    fast = train_runs(*tr, *va, *te, runs, cfg, progress=False)
    assert type(made[-1]) is stacked.ProjectionStack
    monkeypatch.setattr(stacked, "supports", lambda model: False)
    batch = train_runs(*tr, *va, *te, runs, cfg, progress=False)
    assert type(made[-1]) is not stacked.ProjectionStack
    alone = train_runs(*tr, *va, *te, runs[1:], cfg, progress=False)[0]
    for k, v in alone.model.state_dict().items():
        torch.testing.assert_close(batch[1].model.state_dict()[k], v, atol=1e-5, rtol=1e-5)
    # and the two paths train the same model (same masks, same shuffling), up to float rounding
    for k, v in batch[0].model.state_dict().items():
        torch.testing.assert_close(fast[0].model.state_dict()[k], v, atol=1e-4, rtol=1e-4)


def test_result_model_reproduces_the_stack_embeddings():
    """RunResult.model (a single AlignModel) embeds val data exactly as the stack did when it was selected."""
    from sa.train.batched import AlignModel
    from sa.train.evaluate import top1_accuracy
    from sa.train.stacked import ProjectionStack

    models = _models("eegproject")
    stack = ProjectionStack(models, torch.device("cpu"))
    opt = torch.optim.AdamW(list(stack.params.values()), lr=1e-2, fused=True)
    x, feats = torch.randn(40, 4, 12), torch.randn(3, 40, stack.width)
    for _ in range(3):
        opt.zero_grad()
        stack.loss(x, feats).sum().backward()
        opt.step()
    stack.train(False)
    with torch.no_grad():
        emb = stack.encode_brain(x)
    for i, m in enumerate(_models("eegproject")):
        m.load_state_dict(stack.state_of(i))
        m.eval()
        assert isinstance(m, AlignModel)
        torch.testing.assert_close(m.encode_brain(x), emb[i], atol=1e-5, rtol=1e-5)

    tr, va, te = subject(300, 0), subject(60, 1), subject(40, 2)
    res = train_runs(*tr, *va, *te, [RunSpec("a", 0), RunSpec("b", 0)], CFG, progress=False)
    for r in res:
        with torch.no_grad():
            top1 = top1_accuracy(r.model.encode_brain(torch.as_tensor(va[0])),
                                 r.model.encode_image(torch.as_tensor(va[1][r.spec.layer])))
        assert top1 == pytest.approx(r.val_top1)
        assert r.curves[r.best_epoch - 1]["val_top1"] == r.val_top1


def _rule_oracle(rule: str, curves: list[dict]) -> int:
    """Each rule's epoch computed directly with numpy from the curves (first of equal scores)."""
    val = np.array([c["val_top1"] for c in curves])
    loss = np.array([c["val_loss"] for c in curves])
    if rule == "val":
        return int(np.argmax(val)) + 1
    if rule == "val-loss":
        return int(np.argmin(loss)) + 1
    if rule == "smooth":  # trailing mean over up to 3 epochs
        trailing = [val[max(0, e - 2): e + 1].mean() for e in range(len(val))]
        return int(np.argmax(trailing)) + 1
    return len(curves)


@pytest.mark.parametrize("rule", ["val", "val-loss", "smooth", "last"])
def test_each_selection_rule_keeps_the_epoch_it_names(rule):
    from sa.train.trainer import choose_epoch

    tr, va, te = subject(400, 0), subject(80, 1, noise=2.0), subject(60, 2)
    cfg = TrainConfig(encoder="linear", embed_dim=16, epochs=7, batch_size=64, lr=1e-2, precision="fp32", ks=(),
                      select=rule)
    res = train_runs(*tr, *va, *te, [RunSpec("a", 0)], cfg, progress=False)[0]
    assert res.best_epoch == _rule_oracle(rule, res.curves) == choose_epoch(rule, res.curves)
    assert res.val_top1 == res.curves[res.best_epoch - 1]["val_top1"]


@pytest.mark.parametrize("field,value", [("lr", -1.0), ("lr", float("nan")), ("temperature", 0.0),
                                         ("temperature", -1.0), ("weight_decay", -5.0), ("epochs", 0),
                                         ("batch_size", 1), ("select", "best"), ("embed_dim", 0)])
def test_config_that_cannot_train_is_refused_before_training(field, value):
    cfg = TrainConfig(**{**CFG.__dict__, field: value})
    with pytest.raises(SAError, match=f"--{field.replace('_', '-')}|{field}"):
        cfg.check()
    tr, va, te = subject(50, 0), subject(20, 1), subject(20, 2)
    with pytest.raises(SAError):
        train_runs(*tr, *va, *te, [RunSpec("a", 0)], cfg, progress=False)


def test_diverged_run_has_no_scores():
    tr, va, te = subject(200, 0), subject(40, 1), subject(40, 2)
    res = train_runs(*tr, *va, *te, [RunSpec("a", 0), RunSpec("b", 0)], TrainConfig(**{**CFG.__dict__, "lr": 1e30}),
                     progress=False)
    for r in res:
        assert r.diverged and np.isnan(r.top1) and np.isnan(r.val_top1) and np.isnan(r.curves[-1]["train_loss"])
    ok = train_runs(*tr, *va, *te, [RunSpec("a", 0)], CFG, progress=False)[0]
    assert not ok.diverged and np.isfinite(ok.top1)


def test_validation_rows_of_one_image_share_its_gallery_entry():
    """A LOSO fold's validation holds each image once per training subject: merged by image id, not by value."""
    from sa.train.evaluate import top1_accuracy

    tr, te = subject(300, 0), subject(40, 2)
    va_x, va_f = subject(30, 1)
    two = (np.concatenate([va_x, va_x + 0.05]), {k: np.concatenate([f, f]) for k, f in va_f.items()})
    ids = [f"img{i}" for i in range(30)] * 2
    res = train_runs(*tr, *two, *te, [RunSpec("a", 0)], CFG, progress=False, val_ids=ids)[0]
    with torch.no_grad():
        zb = res.model.encode_brain(torch.as_tensor(two[0]))
        zi = res.model.encode_image(torch.as_tensor(two[1]["a"]))
    assert res.val_top1 == pytest.approx(top1_accuracy(zb, zi, ids)) and res.val_top1 > 0
    assert top1_accuracy(zb, zi) == 0.0  # unmerged, every row ties with its copy: what the ids prevent


CONV_ENCODERS = ("tsconv", "eegnet", "shallownet", "atms", "eegconformer")


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("encoder", CONV_ENCODERS)
def test_loop_stack_equals_the_module_definition_with_dropout_and_batch_norm(encoder, fused):
    """LoopStack (the conv encoders' path) in training mode: per-run losses, every gradient and the updated
    batch-norm statistics equal each model's own forward + autograd from the same RNG state (dropout on)."""
    from sa.train import stacked
    from sa.train.batched import LoopStack
    from sa.train.trainer import _init_model

    shape, widths = (4, 100), (24, 16)
    cfg = TrainConfig(encoder=encoder, embed_dim=16)
    models = [_init_model(RunSpec(str(i), i), cfg, encoder, shape, w) for i, w in enumerate(widths)]
    stack = LoopStack(models, torch.device("cpu"))
    if fused:  # what make_stack builds: conv + average pool as one strided conv (tsconv, atms), temporal + spatial
        # conv as one (C, k) conv (shallownet, eegconformer), EEGNet's conv + norm + depthwise conv channel-mix first
        assert stacked.fuse_conv_pool(stack.base) == (encoder in ("tsconv", "atms"))
        assert stacked.fuse_time_space(stack.base) == (encoder in ("shallownet", "eegconformer"))
        assert stacked.fuse_time_norm_space(stack.base) == (encoder == "eegnet")
        assert type(stacked.make_stack(models, torch.device("cpu"))) is LoopStack
    tol = dict(atol=1e-5, rtol=1e-4) if fused else dict(atol=1e-6, rtol=1e-5)
    stack.train(True)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(12, *shape, generator=gen)
    feats = torch.zeros(2, 12, max(widths))
    for i, w in enumerate(widths):
        feats[i, :, :w] = torch.randn(12, w, generator=gen)
    weights = torch.tensor([1.0, -0.5])
    torch.manual_seed(11)
    losses = stack.loss(x, feats)
    (losses * weights).sum().backward()
    for i, (model, w) in enumerate(zip(models, widths)):
        model.train(True)
        torch.manual_seed(11)  # what the run draws alone: the same dropout masks
        loss = model(x, feats[i, :, :w])
        (loss * weights[i]).backward()
        assert float(losses[i].detach()) == pytest.approx(float(loss.detach()), abs=tol["atol"])
        for k, p in model.named_parameters():
            g = stack.params[k].grad[i]
            g = g[:, :w] if k == "image.weight" else g
            torch.testing.assert_close(g, p.grad, **tol, msg=lambda m, k=k: f"{k}: {m}")
        for k, b in model.named_buffers():
            torch.testing.assert_close(stack.buffers[k][i], b, **tol)
    # evaluation embeddings equal the modules' own, in eval mode
    stack.train(False)
    with torch.no_grad():
        zb, zi = stack.encode_brain(x), stack.encode_image(feats)
        for i, (model, w) in enumerate(zip(models, widths)):
            model.train(False)
            torch.testing.assert_close(zb[i], model.encode_brain(x), **tol)
            torch.testing.assert_close(zi[i], model.encode_image(feats[i, :, :w]), **tol)


def test_trainer_runs_conv_encoders_through_the_loop_stack_and_batched_equals_alone(monkeypatch):
    """tsconv trains as a LoopStack; two layers trained together equal each trained alone (dropout, batch norm)."""
    from sa.train import stacked

    made = []
    real = stacked.make_stack
    monkeypatch.setattr("sa.train.trainer.make_stack", lambda models, device: made.append(real(models, device)) or made[-1])
    rng = np.random.default_rng(0)
    split = lambda n: (rng.standard_normal((n, 4, 100)).astype(np.float32),  # noqa: E731
                       {k: rng.standard_normal((n, w)).astype(np.float32) for k, w in WIDTHS.items()})
    tr, va, te = split(96), split(24), split(24)
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 2, "encoder": "tsconv", "batch_size": 32})
    runs = [RunSpec("a", 0), RunSpec("c", 0)]
    batch = train_runs(*tr, *va, *te, runs, cfg, progress=False)
    assert type(made[-1]) is stacked.LoopStack
    for spec, res in zip(runs, batch):
        alone = train_runs(*tr, *va, *te, [spec], cfg, progress=False)[0]
        for k, v in alone.model.state_dict().items():
            torch.testing.assert_close(res.model.state_dict()[k], v, atol=1e-5, rtol=1e-5)
        assert res.top1 == alone.top1


@pytest.mark.parametrize("encoder, fuse", [("shallownet", "fuse_time_space"), ("eegconformer", "fuse_time_space"),
                                           ("eegnet", "fuse_time_norm_space")])
def test_fused_front_equals_pytorch_layers_over_training_steps(encoder, fuse):
    """A fused copy trained side by side with the module definition (PyTorch's own Conv2d / BatchNorm2d) on data
    with a large offset and an odd length: outputs, gradients, running statistics and eval outputs agree."""
    import copy

    from sa.train import stacked
    from sa.train.encoders import build_encoder

    torch.manual_seed(0)
    ref = build_encoder(encoder, 5, 131, 8)
    fused = copy.deepcopy(ref)
    assert getattr(stacked, fuse)(fused) == 1
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert [n for n, _ in fused.named_buffers()] == [n for n, _ in ref.named_buffers()]
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (ref, fused)]
    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        x = 4.0 + 2.0 * torch.randn(10, 5, 131, generator=gen)  # mean far from 0: the norm's mean term matters
        outs = []
        for m, opt in zip((ref, fused), opts):
            m.train(True)
            torch.manual_seed(step)
            y = m(x)
            opt.zero_grad()
            y.square().mean().backward()
            opt.step()
            outs.append(y.detach())
        torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-4)
        for (k, a), (_, b) in zip(ref.named_parameters(), fused.named_parameters()):
            torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    for (k, a), (_, b) in zip(ref.named_buffers(), fused.named_buffers()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    ref.eval(), fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), ref(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("n_in, k, stride", [(250, 75, 5), (131, 75, 5), (100, 7, 3), (76, 75, 5), (50, 4, 4)])
def test_polyphase_conv_equals_strided_conv2d_with_gradients(n_in, k, stride):
    """ConvPool's input-gradient path equals torch's strided conv2d: output (values and memory layout) and the
    gradients of input, weight and bias."""
    from sa.train.stacked import polyphase_conv

    gen = torch.Generator().manual_seed(n_in)
    args = [torch.randn(*s, generator=gen, requires_grad=True) for s in ((3, 2, 4, n_in), (5, 2, 1, k), (5,))]
    ours, ref = polyphase_conv(*args, stride), F.conv2d(*args, stride=(1, stride))
    assert ours.is_contiguous() and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-5)
    g = torch.randn(ref.shape, generator=gen)
    for a, b in zip(torch.autograd.grad(ours, args, g), torch.autograd.grad(ref, args, g)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_loop_stack_draws_dropout_masks_once_and_leaves_the_generator_where_one_run_would(monkeypatch):
    """Three runs of EEGConformer (9 dropout layers on the training path): masks are drawn by the first run only,
    and afterwards the global generator is where one run of the module alone leaves it."""
    from sa.train.batched import LoopStack
    from sa.train.trainer import _init_model

    cfg = TrainConfig(encoder="eegconformer", embed_dim=8)
    models = [_init_model(RunSpec(str(i), i), cfg, "eegconformer", (3, 120), 6) for i in range(3)]
    stack = LoopStack(models, torch.device("cpu"))
    stack.train(True)
    x, feats = torch.randn(5, 3, 120), torch.randn(3, 5, 6)
    calls = []
    real = F.dropout
    monkeypatch.setattr(F, "dropout", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(4)
    stack.loss(x, feats)
    after_stack = torch.get_rng_state()
    n_stack = len(calls)
    models[0].train(True)
    torch.manual_seed(4)
    models[0](x, feats[0])
    assert n_stack == len(calls) - n_stack > 0  # one run's worth of draws for three runs
    assert torch.equal(after_stack, torch.get_rng_state())


@pytest.mark.parametrize("encoder", CONV_ENCODERS)
def test_fused_fronts_under_bf16_autocast_are_as_accurate_as_the_module(encoder):
    """Under bf16 autocast (how a GPU trains) the fused stack structure is no further from the fp32 module than
    the module itself under bf16 is."""
    import copy

    from sa.train import stacked
    from sa.train.encoders import build_encoder

    torch.manual_seed(0)
    ref = build_encoder(encoder, 5, 131, 8)
    fused = copy.deepcopy(ref)
    stacked.fuse_conv_pool(fused), stacked.fuse_time_space(fused), stacked.fuse_time_norm_space(fused)
    x = 4.0 + 2.0 * torch.randn(16, 5, 131)
    ref.train(True), fused.train(True)
    torch.manual_seed(1)
    exact = ref(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        module = ref(x).float()
        torch.manual_seed(1)
        ours = fused(x).float()
    err = lambda y: float((y - exact).detach().norm() / exact.detach().norm())  # noqa: E731
    assert 0 < err(ours) <= 1.25 * err(module) + 1e-3
