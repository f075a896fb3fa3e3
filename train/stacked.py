"""The trainer's fast paths: ProjectionStack for EEGProject / Linear (R runs in a few big GEMMs), and the fused
conv fronts (ConvPool, TimeSpaceConv, TimeNormSpaceConv) that compute the conv encoders' first layers in fewer
multiply-adds for LoopStack; `make_stack` picks. The projection path:

The generic `Stack` runs each Linear under vmap, which expands the shared
brain batch per run and lets autocast re-cast every weight inside the
batched call; on a CPU those copies cost about as much as the matmuls. Here
the first layer of all R runs is ONE wide GEMM, x (B, C*T) @ [W_1 | ... | W_R]
-> (B, R*d); the residual Linear and the image projectors are bmm over the
run axis, the CLIP losses one (R, B, B) bmm with a hand-written backward.
Weights stay fp32 masters, cast once per step to the ambient autocast dtype
(bf16); like autocast, the layer norm runs on bf16 input, softmaxes and the
loss in fp32. Same parameters, keys and state_of as `Stack`, so the trainer
and its AdamW see no difference; dropout draws one (B, d) mask per step from
the global generator, shared by the runs like vmap's randomness="same".
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sa.train.batched import AlignModel, LoopStack, Stack
from sa.train.encoders import EEGProject, LinearEncoder


def supports(model: AlignModel) -> bool:
    """True for the encoders the hand-written path reproduces exactly (EEGProject, LinearEncoder), with a plain projector."""
    return isinstance(model.brain, (EEGProject, LinearEncoder)) and isinstance(model.image, (nn.Linear, nn.Identity))


def make_stack(models: Sequence[AlignModel], device: torch.device) -> Stack:
    """The fast ProjectionStack when every model's encoder supports it, else a LoopStack.

    The vmapped Stack measured slower than running the runs one after another for every conv / attention
    encoder (tsconv 1.2x, shallownet 1.3x slower on this CPU, docs/performance.md), so it is kept for tests only.
    """
    if all(supports(m) for m in models):
        return ProjectionStack(models, device)
    stack = LoopStack(models, device)
    fuse_conv_pool(stack.base)
    fuse_time_space(stack.base)
    fuse_time_norm_space(stack.base)
    return stack


class ConvPool(nn.Module):
    """Conv2d (1, k) then AvgPool2d ((1, p), stride (1, s)) as ONE strided conv with the composite (1, k+p-1) filter.

    Both are linear in time, so pool(conv(x)) = conv(x, w * box_p / p, stride s) exactly in real arithmetic; in
    TSConv (k 25, p 51, s 5) that is 2.2x fewer multiply-adds and no pooling pass (the pool took a fifth of the step,
    docs/performance.md). Same parameter names and shapes as the conv it replaces, so states are unchanged.
    """

    def __init__(self, conv: nn.Conv2d, pool: nn.AvgPool2d) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.pool, self.stride = int(pool.kernel_size[1]), int(pool.stride[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, cin, _, k = self.weight.shape
        box = self.weight.new_full((1, 1, self.pool), 1.0 / self.pool)
        w = F.conv1d(F.pad(self.weight.reshape(out * cin, 1, k), (self.pool - 1, self.pool - 1)), box)
        w = w.reshape(out, cin, 1, k + self.pool - 1)
        if x.requires_grad and self.stride > 1:  # ATMS: the input's gradient through a strided conv is slow
            return polyphase_conv(x, w, self.bias, self.stride)
        return F.conv2d(x, w, self.bias, stride=(1, self.stride))


def polyphase_conv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, stride: int) -> torch.Tensor:
    """conv2d(x, w, bias, stride=(1, stride)) as a unit-stride conv over the `stride` phases of x and w.

    out[o] = sum_k w[k] x[s o + k] = sum_p sum_j w[s j + p] x[s (o + j) + p]: the same multiply-adds, but the input
    gradient becomes an ordinary transposed conv, which the CPU runs 2x faster than a strided one (docs/performance.md).
    """
    batch, cin, height, n_in = x.shape
    out, _, _, k = w.shape
    n_out, taps = (n_in - k) // stride + 1, -(-k // stride)
    length = stride * (n_out - 1 + taps)  # every sample a nonzero tap reaches, rounded up to whole phases
    x = F.pad(x, (0, length - n_in)) if length > n_in else x[..., :length]
    phases = x.reshape(batch, cin, height, length // stride, stride).permute(0, 1, 4, 2, 3)
    wp = F.pad(w, (0, taps * stride - k)).reshape(out, cin, 1, taps, stride).permute(0, 1, 4, 2, 3)
    # contiguous: a channels-last layout would run slower and hand dropout a differently ordered mask
    return F.conv2d(phases.reshape(batch, cin * stride, height, length // stride).contiguous(),
                    wp.reshape(out, cin * stride, 1, taps).contiguous(), bias)


def _fusable(conv: nn.Module, pool: nn.Module) -> bool:
    """A (1, k) conv with unit stride, no padding / dilation / groups, then a (1, p) average pool without padding."""
    if not (type(conv) is nn.Conv2d and type(pool) is nn.AvgPool2d):
        return False
    as_pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    return (conv.kernel_size[0] == 1 and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.dilation == (1, 1)
            and conv.groups == 1 and as_pair(pool.kernel_size)[0] == 1 and as_pair(pool.stride)[0] == 1
            and as_pair(pool.padding) == (0, 0) and not pool.ceil_mode and pool.divisor_override is None)


def _replace_runs(model: nn.Module, fits: Callable[..., bool], build: Callable[..., tuple[nn.Module, ...]]) -> int:
    """In every Sequential, replace each run of adjacent modules that `fits` (as many as it takes arguments) by the
    same number of modules `build` makes from them; returns how many runs were replaced."""
    width, fused = len(inspect.signature(fits).parameters), 0
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - width + 1):
                run = [module[j] for j in range(i, i + width)]
                if fits(*run):
                    for j, new in enumerate(build(*run)):
                        module[i + j] = new
                    fused += 1
    return fused


def fuse_conv_pool(model: nn.Module) -> int:
    """Replace every Sequential's adjacent (1, k) Conv2d + (1, p) AvgPool2d by a ConvPool in place; returns how many."""
    return _replace_runs(model, _fusable, lambda conv, pool: (ConvPool(conv, pool), nn.Identity()))


class _Folded(nn.Module):
    """Keeps a folded module's parameters and buffers under their own names and passes its input through (the work
    is done by the fused module before it, which reads them at call time, so functional_call's swaps reach it)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        for name, p in module.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in module.named_buffers(recurse=False):
            self.register_buffer(name, b)
        for name in ("weight", "bias"):
            if not hasattr(self, name):
                setattr(self, name, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class TimeSpaceConv(nn.Module):
    """Conv2d (1, k) over time then Conv2d (C, 1) over channels as ONE conv with the composite (C, k) filter.

    With nothing between them both are linear, so spatial(temporal(x)) = conv(x, sum_f S[g, f, c] w[f, k]) with
    bias S b + b_s exactly in real arithmetic. In ShallowNet / EEGConformer (40 + 40 filters) that is 2.6x fewer
    multiply-adds forward, no (B, 40, C, T) intermediate, and a backward with weight gradients only. Parameter
    names and shapes are unchanged: the temporal conv's stay here, the spatial conv's in the `_Folded` after it.
    """

    def __init__(self, temporal: nn.Conv2d, spatial: _Folded) -> None:
        super().__init__()
        self.weight, self.bias = temporal.weight, temporal.bias
        self.padding = temporal.padding
        object.__setattr__(self, "_spatial", spatial)  # a reference, not a submodule: its names stay its own

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, w = self._spatial.weight[:, :, :, 0], self.weight[:, 0, 0, :]  # (G, F, C), (F, k)
        composite = torch.einsum("gfc,fk->gck", s, w).unsqueeze(1)  # (G, 1, C, k)
        bias = None
        if self.bias is not None:
            bias = torch.einsum("gfc,f->g", s, self.bias)
        if self._spatial.bias is not None:
            bias = self._spatial.bias if bias is None else bias + self._spatial.bias
        return F.conv2d(x, composite, bias, padding=self.padding)


def _time_space(temporal: nn.Module, spatial: nn.Module) -> bool:
    """A one-input-plane (1, k) conv, then a (C, 1) conv over all its filters; unit strides, no dilation or groups,
    and no padding across channels (padding in time commutes with the channel mix)."""
    if not (type(temporal) is nn.Conv2d and type(spatial) is nn.Conv2d):
        return False
    plain = lambda c: c.stride == (1, 1) and c.dilation == (1, 1) and c.groups == 1  # noqa: E731
    return (plain(temporal) and plain(spatial) and temporal.in_channels == 1 and temporal.kernel_size[0] == 1
            and temporal.padding[0] == 0 and spatial.kernel_size[1] == 1 and spatial.padding == (0, 0)
            and spatial.in_channels == temporal.out_channels
            and temporal.padding_mode == "zeros" and spatial.padding_mode == "zeros")


def fuse_time_space(model: nn.Module) -> int:
    """Replace every Sequential's adjacent temporal (1, k) + spatial (C, 1) Conv2d pair by a TimeSpaceConv in place;
    returns how many."""

    def build(temporal: nn.Conv2d, spatial: nn.Conv2d) -> tuple[nn.Module, ...]:
        folded = _Folded(spatial)
        return TimeSpaceConv(temporal, folded), folded

    return _replace_runs(model, _time_space, build)


class TimeNormSpaceConv(nn.Module):
    """EEGNet's temporal conv (1, k), batch norm, depthwise spatial conv (C, 1) with the channel mix done FIRST.

    All three are affine per filter, so the block equals a_f * conv_f(sum_c S[f, d, c] x_c) + b_f * sum_c S[f, d, c]
    with a_f, b_f the batch norm's scale and shift: the k-tap filter then runs on F*D mixed signals instead of C
    channels (C/D times fewer multiply-adds), as one banded-matrix GEMM instead of a one-input-plane conv that runs
    far below the matmul peak. The norm's batch statistics of conv_f(x) come from the batch's lagged Gram matrix:
    mean w_f.m, second moment w_f^T G w_f (fp32, with their gradients), and the running statistics update in
    place as BatchNorm2d's do. Parameter and buffer names are unchanged (the norm's and spatial conv's stay in
    the `_Folded` modules after this one).
    """

    def __init__(self, temporal: nn.Conv2d, norm: _Folded, spatial: _Folded, eps: float, momentum: float) -> None:
        super().__init__()
        self.weight = temporal.weight
        self.pad = int(temporal.padding[1])
        self.eps, self.momentum = eps, momentum
        object.__setattr__(self, "_norm", norm)  # references, not submodules: their names stay their own
        object.__setattr__(self, "_spatial", spatial)

    def _banded(self, w: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
        """(F, n_in, n_out) matrices with [f, t, o] = w[f, t - o + pad]: the cross-correlation as a GEMM."""
        k = w.shape[1]
        lag = (torch.arange(n_in, device=w.device)[:, None] - torch.arange(n_out, device=w.device)[None, :]) + self.pad
        inside = (lag >= 0) & (lag < k)
        return w[:, lag.clamp(0, k - 1)] * inside

    def _batch_stats(self, x: torch.Tensor, w: torch.Tensor, n_out: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """fp32 mean and biased variance of conv_f(x) over (batch, channels, time), and the count behind them."""
        with torch.autocast(x.device.type, enabled=False):
            rows, w = x.reshape(-1, x.shape[-1]).float(), w.float()
            k, L = w.shape[1], x.shape[-1] + 2 * self.pad
            gram = F.pad(rows.T @ rows, (self.pad,) * 4)  # (L, L) lagged products summed over batch and channels
            second = gram.as_strided((k, k, n_out), (L, 1, L + 1)).sum(-1)  # [a, b] = sum_o gram[o + a, o + b]
            total = F.pad(rows.sum(0), (self.pad, self.pad))
            first = F.conv1d(total.view(1, 1, L), total.new_ones(1, 1, n_out)).view(k)  # sum_o total[o + a]
            count = rows.shape[0] * n_out
            mean = (w @ first) / count
            var = torch.einsum("fa,ab,fb->f", w, second, w) / count - mean * mean
        return mean, var, count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, channels, n_in = x.shape
        w = self.weight[:, 0, 0, :]  # (F, k)
        n_f, k = w.shape
        s = self._spatial.weight[:, 0, :, 0].reshape(n_f, -1, channels)  # (F, D, C): output channel f * D + d
        depth, n_out = s.shape[1], n_in + 2 * self.pad - k + 1
        mixed = torch.einsum("fdc,bct->fbdt", s, x[:, 0]).reshape(n_f, batch * depth, n_in)
        z = torch.matmul(mixed, self._banded(w, n_in, n_out).to(mixed.dtype))  # (F, B * D, n_out)
        norm = self._norm
        if self.training:
            mean, var, count = self._batch_stats(x, w, n_out)
            with torch.no_grad():
                norm.running_mean.mul_(1 - self.momentum).add_(mean.detach(), alpha=self.momentum)
                norm.running_var.mul_(1 - self.momentum).add_(var.detach() * (count / (count - 1)), alpha=self.momentum)
                norm.num_batches_tracked.add_(1)
        else:
            mean, var = norm.running_mean, norm.running_var
        scale = norm.weight * torch.rsqrt(var + self.eps)  # (F,)
        shift = (norm.bias - scale * mean)[:, None] * s.sum(-1)  # (F, D)
        out = z.view(n_f, batch, depth, n_out) * scale[:, None, None, None].to(z.dtype) + shift[:, None, :, None].to(z.dtype)
        return out.permute(1, 0, 2, 3).reshape(batch, n_f * depth, 1, n_out)


def _time_norm_space(temporal: nn.Module, norm: nn.Module, spatial: nn.Module) -> bool:
    """EEGNet's front: a bias-free one-plane (1, k) conv, an affine tracking BatchNorm2d, and a bias-free depthwise
    (C, 1) conv (groups = the temporal filters) with unit strides and no padding across channels."""
    if not (type(temporal) is nn.Conv2d and type(norm) is nn.BatchNorm2d and type(spatial) is nn.Conv2d):
        return False
    return (temporal.in_channels == 1 and temporal.kernel_size[0] == 1 and temporal.stride == (1, 1)
            and temporal.dilation == (1, 1) and temporal.padding[0] == 0 and temporal.bias is None
            and temporal.padding_mode == "zeros" and norm.num_features == temporal.out_channels and norm.affine
            and norm.track_running_stats and norm.momentum is not None
            and spatial.groups == temporal.out_channels == spatial.in_channels and spatial.kernel_size[1] == 1
            and spatial.stride == (1, 1) and spatial.dilation == (1, 1) and spatial.padding == (0, 0)
            and spatial.bias is None)


def fuse_time_norm_space(model: nn.Module) -> int:
    """Replace every Sequential's temporal conv + BatchNorm2d + depthwise spatial conv (EEGNet's front) by a
    TimeNormSpaceConv in place; returns how many."""

    def build(temporal: nn.Conv2d, bn: nn.BatchNorm2d, spatial: nn.Conv2d) -> tuple[nn.Module, ...]:
        norm, folded = _Folded(bn), _Folded(spatial)
        return TimeNormSpaceConv(temporal, norm, folded, float(bn.eps), float(bn.momentum)), norm, folded

    return _replace_runs(model, _time_norm_space, build)


def _compute_dtype(device: torch.device) -> torch.dtype:
    """The ambient autocast dtype on `device` (what the generic path would compute in), else float32."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return torch.float32


def _scaled(x: torch.Tensor, factor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x * factor in dtype; one pass when x already is dtype (mixed-dtype CPU ops cast their inputs first)."""
    if x.dtype == dtype:
        return x * factor.to(dtype)
    return (x * factor).to(dtype)


def _inv_norm(x: torch.Tensor) -> torch.Tensor:
    """(..., 1) fp32 reciprocal L2 norms over the last axis (computed in x's dtype: no cast pass)."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).float().clamp_min_(1e-12).reciprocal_()


def _unit_grad(g: torch.Tensor, u: torch.Tensor, inv_norm: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Gradient through x -> x / |x| = u: (g - u <g, u>) / |x|, in u's dtype, returned as dtype."""
    out = torch.addcmul(g, u, -torch.linalg.vecdot(g, u).unsqueeze(-1))
    return _scaled(out, inv_norm, dtype)


class _CastLinear(torch.autograd.Function):
    """x @ w^T + b (w (N, K) or stacked (R, N, K)) with fp32 masters cast once to x's dtype; grads return fp32.

    Autograd through `w.to(bf16).mT` would hand back a transposed bf16 gradient, then cast and re-layout it in
    two more passes; here the weight gradient is computed directly in w's layout.
    """

    @staticmethod
    def forward(ctx, x, w, b):
        wc = w.to(x.dtype)
        if w.dim() == 2:
            y = torch.addmm(b.to(x.dtype), x, wc.t())
        else:
            y = torch.baddbmm(b.to(x.dtype).unsqueeze(1), x, wc.mT)
        ctx.save_for_backward(x, wc)
        ctx.w_dtype = w.dtype
        return y

    @staticmethod
    def backward(ctx, gy):
        x, wc = ctx.saved_tensors
        gx = torch.matmul(gy, wc) if ctx.needs_input_grad[0] else None
        gw = torch.matmul(gy.mT.contiguous(), x).to(ctx.w_dtype) if ctx.needs_input_grad[1] else None
        gb = gy.sum(-2).to(ctx.w_dtype) if ctx.needs_input_grad[2] else None
        return gx, gw, gb


class _StackedClipLoss(torch.autograd.Function):
    """R CLIP losses with a hand-written backward: a few fused passes over (R, B, B) instead of autograd's dozens."""

    @staticmethod
    def forward(ctx, brain, image, scale, dtype):
        rb, ri = _inv_norm(brain), _inv_norm(image)
        b, i = _scaled(brain, rb, dtype), _scaled(image, ri, dtype)  # unit vectors
        logits = torch.bmm(b, i.transpose(1, 2)) * scale[:, None, None]  # (R, B, B) cosines in dtype, then fp32
        log_row, log_col = torch.log_softmax(logits, dim=2), torch.log_softmax(logits, dim=1)
        loss = -0.5 * (log_row.diagonal(dim1=1, dim2=2).mean(1) + log_col.diagonal(dim1=1, dim2=2).mean(1))
        ctx.save_for_backward(b, i, rb, ri, logits, scale, log_row, log_col)
        ctx.in_dtypes = (brain.dtype, image.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad):
        b, i, rb, ri, logits, scale, log_row, log_col = ctx.saved_tensors
        n = logits.shape[1]
        # d loss / d logits = (softmax over rows + softmax over columns - 2 I) / 2B, per run times grad
        d = log_row.exp_().add_(log_col.exp_())
        d.diagonal(dim1=1, dim2=2).sub_(2.0)
        d.mul_((grad / (2 * n))[:, None, None])
        g_scale = torch.linalg.vecdot(d.flatten(1), logits.flatten(1)) / scale
        d_cos = _scaled(d, scale[:, None, None], b.dtype)
        g_b, g_i = torch.bmm(d_cos, i), torch.bmm(d_cos.transpose(1, 2), b)
        return _unit_grad(g_b, b, rb, ctx.in_dtypes[0]), _unit_grad(g_i, i, ri, ctx.in_dtypes[1]), g_scale, None


def stacked_clip_losses(brain: torch.Tensor, image: torch.Tensor, scale: torch.Tensor,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(R,) symmetric InfoNCE losses of R runs at once: brain, image (R, B, d), scale (R,); = clip_loss per run.

    Cosines are one bmm in `dtype`; softmaxes and the loss are fp32.
    """
    return _StackedClipLoss.apply(brain, image, scale, dtype)


class ProjectionStack(Stack):
    """A `Stack` of EEGProject or Linear aligners evaluated by wide GEMM + bmm instead of vmap."""

    def __init__(self, models: Sequence[AlignModel], device: torch.device) -> None:
        super().__init__(models, device)
        brain = self.base.brain
        if isinstance(brain, EEGProject):
            _, residual, norm = brain.head
            gelu, _, drop = residual.fn
            self._keys = ("brain.head.0.", "brain.head.1.fn.1.", "brain.head.2.")
            self._gelu, self._drop, self._eps = gelu.approximate, float(drop.p), float(norm.eps)
        elif isinstance(brain, LinearEncoder):
            self._keys = ("brain.proj.",)
        else:
            raise TypeError(f"ProjectionStack cannot run encoder {type(brain).__name__}; use Stack.")

    def _get(self, key: str) -> torch.Tensor:
        return self.params[key] if key in self.params else self.buffers[key]

    def _embed_brain(self, x: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
        """(R, B, d) brain embeddings of a shared batch x (B, C, T), matmuls in dt."""
        n_runs, batch = len(self), x.shape[0]
        w1, b1 = self._get(self._keys[0] + "weight"), self._get(self._keys[0] + "bias")
        d = w1.shape[1]
        h = _CastLinear.apply(x.reshape(batch, -1).to(dt), w1.reshape(n_runs * d, -1), b1.reshape(-1))
        h = h.view(batch, n_runs, d).transpose(0, 1)  # (R, B, d), one wide GEMM above
        if len(self._keys) == 1:
            return h
        w2, b2 = self._get(self._keys[1] + "weight"), self._get(self._keys[1] + "bias")
        z = _CastLinear.apply(F.gelu(h, approximate=self._gelu), w2, b2)
        if self.base.training and self._drop > 0:
            keep = torch.empty(batch, d, device=x.device).bernoulli_(1 - self._drop)  # shared by the runs
            z = z * (keep / (1 - self._drop)).to(dt)
        y = F.layer_norm(h + z, (d,), eps=self._eps)  # in dt, as autocast runs layer_norm on bf16 input
        gamma, beta = self._get(self._keys[2] + "weight"), self._get(self._keys[2] + "bias")
        return torch.addcmul(beta.to(dt).unsqueeze(1), y, gamma.to(dt).unsqueeze(1))

    def _embed_image(self, feats: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
        """(R, B, d) image embeddings of per-run (padded) features (R, B, width)."""
        if "image.weight" not in self.params:
            return feats
        w, b = self.params["image.weight"], self.params["image.bias"]
        return _CastLinear.apply(feats.to(dt), w, b)

    def _scales(self) -> torch.Tensor:
        return F.softplus(self._get("loss.logit_scale_raw"))

    def loss(self, x: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Per-run losses (R,) for one shared brain batch (B, C, T) and per-run features (R, B, width)."""
        dt = _compute_dtype(x.device)
        with torch.autocast(x.device.type, enabled=False):
            return stacked_clip_losses(self._embed_brain(x, dt), self._embed_image(feats, dt), self._scales(), dt)

    def encode_brain(self, x: torch.Tensor) -> torch.Tensor:
        """(R, n, d) brain embeddings of shared trials."""
        dt = _compute_dtype(x.device)
        with torch.autocast(x.device.type, enabled=False):
            return self._embed_brain(x, dt)

    def encode_image(self, feats: torch.Tensor) -> torch.Tensor:
        """(R, n, d) image embeddings of per-run (padded) features."""
        dt = _compute_dtype(feats.device)
        with torch.autocast(feats.device.type, enabled=False):
            return self._embed_image(feats, dt)
