"""One aligner per run, and many same-shaped aligners stacked into one vmapped model.

A `Stack` holds the parameters of L runs as tensors with a leading run axis
and evaluates all of them in one call through torch.func.functional_call +
vmap: the brain batch is shared (in_dims=None), so each Linear becomes one
wide matmul. Image projectors of different input widths are zero-padded to
the widest; padded columns see zero inputs, get zero gradients and stay zero
under AdamW, so every run computes exactly what it would alone.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from sa.train.loss import ClipLoss, clip_loss


class AlignModel(nn.Module):
    """Brain encoder + image projector (or identity) + CLIP loss scale: one trained run."""

    def __init__(self, encoder: nn.Module, feat_dim: int, embed_dim: int, image_proj: bool = True,
                 temperature: float = 0.07, learn_temperature: bool = True) -> None:
        super().__init__()
        self.brain = encoder
        self.image = nn.Linear(feat_dim, embed_dim) if image_proj else nn.Identity()
        self.loss = ClipLoss(temperature, learn_temperature)
        self.feat_dim = feat_dim

    @property
    def logit_scale(self) -> torch.Tensor:
        """1 / temperature, as trained."""
        return self.loss.logit_scale

    def encode_brain(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C, T) trials -> (n, d) embeddings (not normalised)."""
        return self.brain(x)

    def encode_image(self, feats: torch.Tensor) -> torch.Tensor:
        """(n, D) cached image features -> (n, d) embeddings (not normalised)."""
        return self.image(feats)

    def forward(self, x: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The symmetric InfoNCE loss of a batch of paired trials and features."""
        return clip_loss(self.brain(x), self.image(feats), self.loss.logit_scale)


def _pad_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Zero-pad `t` at the end of each axis up to `shape`."""
    if t.shape == shape:
        return t
    pad: list[int] = []
    for have, want in zip(reversed(t.shape), reversed(shape)):
        pad += [0, want - have]
    return F.pad(t, pad)


class Stack:
    """L AlignModels of one architecture as stacked tensors, run together with vmap."""

    def __init__(self, models: Sequence[AlignModel], device: torch.device) -> None:
        widest = max(models, key=lambda m: m.feat_dim)
        self.feat_dims = [m.feat_dim for m in models]
        self.width = widest.feat_dim
        self.base = copy.deepcopy(widest).to("meta")
        self.device = device
        states = [dict(m.named_parameters()) for m in models]
        shapes = dict(widest.named_parameters())
        self.params = {k: torch.stack([_pad_to(s[k].detach(), shapes[k].shape) for s in states]).to(device)
                       .requires_grad_(True) for k in shapes}
        bufs = [dict(m.named_buffers()) for m in models]
        self.buffers = {k: torch.stack([b[k] for b in bufs]).to(device) for k in bufs[0]}
        self._loss = vmap(self._one_loss, in_dims=(0, 0, None, 0), randomness="same")
        self._brain = vmap(self._one_brain, in_dims=(0, 0, None), randomness="same")
        self._image = vmap(self._one_image, in_dims=(0, 0, 0), randomness="same")

    def __len__(self) -> int:
        return len(self.feat_dims)

    def train(self, mode: bool = True) -> None:
        """Switch dropout / batch norm of the shared structure between training and evaluation."""
        self.base.train(mode)

    def _one_loss(self, p, b, x, f):
        return functional_call(self.base, (p, b), (x, f))

    def _one_brain(self, p, b, x):
        sub = lambda d: {k[6:]: v for k, v in d.items() if k.startswith("brain.")}  # noqa: E731
        return functional_call(self.base.brain, (sub(p), sub(b)), (x,))

    def _one_image(self, p, b, f):
        sub = lambda d: {k[6:]: v for k, v in d.items() if k.startswith("image.")}  # noqa: E731
        return functional_call(self.base.image, (sub(p), sub(b)), (f,))

    def loss(self, x: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Per-run losses (L,) for one shared brain batch (B, C, T) and per-run features (L, B, width)."""
        return self._loss(self.params, self.buffers, x, feats)

    def encode_brain(self, x: torch.Tensor) -> torch.Tensor:
        """(L, n, d) brain embeddings of shared trials."""
        return self._brain(self.params, self.buffers, x)

    def encode_image(self, feats: torch.Tensor) -> torch.Tensor:
        """(L, n, d) image embeddings of per-run (padded) features."""
        return self._image(self.params, self.buffers, feats)

    def logit_scales(self) -> torch.Tensor:
        """(L,) current 1 / temperature of each run."""
        raw = self.params.get("loss.logit_scale_raw", self.buffers.get("loss.logit_scale_raw"))
        return F.softplus(raw.detach())

    def state_of(self, i: int) -> dict[str, torch.Tensor]:
        """A detached copy of run i's parameters and buffers, unpadded, on the CPU."""
        out = {}
        for k, v in list(self.params.items()) + list(self.buffers.items()):
            t = v[i].detach()
            if k == "image.weight":
                t = t[:, : self.feat_dims[i]]
            out[k] = t.to("cpu", copy=True)
        return out


class _MaskTape:
    """The dropout masks the first run of a LoopStack call draws, in call order, replayed to the other runs."""

    def __init__(self) -> None:
        self.mode: str | None = None  # None (draw), "record" or "replay"
        self.masks: list[torch.Tensor] = []
        self.pos = 0


class TapedDropout(nn.Module):
    """nn.Dropout whose scaled mask (drawn exactly as F.dropout draws it) is recorded or replayed by a `_MaskTape`.

    Every LoopStack run starts from the same RNG state and so draws the same masks; drawing them once saves the
    other runs' Bernoulli sampling, which was a fifth of EEGConformer's step (docs/performance.md).
    """

    def __init__(self, p: float, tape: _MaskTape) -> None:
        super().__init__()
        self.p = p
        object.__setattr__(self, "_tape", tape)  # shared by every TapedDropout of the stack; not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        tape = self._tape
        if tape.mode == "replay":
            mask = tape.masks[tape.pos]
            tape.pos += 1
        else:
            mask = F.dropout(torch.ones_like(x), self.p, True)  # bernoulli(1 - p) / (1 - p), as F.dropout(x)
            if tape.mode == "record":
                tape.masks.append(mask)
        return x * mask


class LoopStack(Stack):
    """A `Stack` whose runs are evaluated one after another by the module itself, on views of the stacked tensors.

    For conv and attention encoders vmap turns each conv into an expanded, per-run batched call that measured
    slower than a plain loop (docs/performance.md). Here each run is `functional_call(model, run r's views)`: the
    module's own forward, gradients flowing into the stacked parameters (so one fused AdamW steps all runs),
    batch-norm statistics updated in place in the stacked buffers. The global RNG is rewound before every run
    so all runs draw the same dropout masks, as vmap's randomness="same" does and as each run would alone.
    """

    def __init__(self, models: Sequence[AlignModel], device: torch.device) -> None:
        super().__init__(models, device)
        self._tape = _MaskTape()
        for module in list(self.base.modules()):
            for name, child in list(module.named_children()):
                if type(child) is nn.Dropout:
                    setattr(module, name, TapedDropout(float(child.p), self._tape))

    def _views(self, r: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return {k: v[r] for k, v in self.params.items()}, {k: v[r] for k, v in self.buffers.items()}

    def _each(self, fn) -> torch.Tensor:
        """torch.stack([fn(r) for every run]), every run starting from the same RNG state."""
        cuda = self.device.type == "cuda"
        states = lambda: (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if cuda else None)  # noqa: E731

        def restore(cpu_state: torch.Tensor, dev_state: torch.Tensor | None) -> None:
            torch.set_rng_state(cpu_state)
            if cuda:
                torch.cuda.set_rng_state(dev_state, self.device)

        start, after, out = states(), None, []
        tape = self._tape
        try:
            for r in range(len(self)):
                if r:
                    restore(*start)
                tape.mode, tape.pos = ("record" if r == 0 else "replay"), 0
                out.append(fn(r))
                if r == 0:
                    after = states()
        finally:
            tape.mode, tape.masks = None, []
        if after is not None and len(self) > 1:
            restore(*after)  # where one run leaves the generator, replayed masks drew nothing
        return torch.stack(out)

    def loss(self, x: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Per-run losses (L,) for one shared brain batch (B, C, T) and per-run features (L, B, width)."""
        return self._each(lambda r: functional_call(self.base, self._views(r), (x, feats[r])))

    def encode_brain(self, x: torch.Tensor) -> torch.Tensor:
        """(L, n, d) brain embeddings of shared trials."""
        return self._each(lambda r: self._one_brain(*self._views(r), x))

    def encode_image(self, feats: torch.Tensor) -> torch.Tensor:
        """(L, n, d) image embeddings of per-run (padded) features."""
        return self._each(lambda r: self._one_image(*self._views(r), feats[r]))
