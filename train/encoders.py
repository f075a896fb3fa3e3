"""Brain encoders: (batch, C, T) EEG/MEG -> (batch, embed_dim), built from the data's shape.

Structures follow the reference code (UBP's EEGProject, NICE's TSConv, ATM-S,
braindecode's EEGNetv4 / ShallowFBCSPNet / EEGConformer); the classifier layer
of the braindecode models becomes a linear map to `embed_dim`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from sa.errors import SAError


class Residual(nn.Module):
    """x + f(x)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(x)


def projection_head(in_dim: int, embed_dim: int, dropout: float) -> nn.Sequential:
    """Linear -> residual[GELU, Linear, Dropout] -> LayerNorm (UBP's EEGProject / NICE's Proj_eeg)."""
    return nn.Sequential(
        nn.Linear(in_dim, embed_dim),
        Residual(nn.Sequential(nn.GELU(), nn.Linear(embed_dim, embed_dim), nn.Dropout(dropout))),
        nn.LayerNorm(embed_dim),
    )


class EEGProject(nn.Module):
    """The paper's default: flatten(C x T) then the residual projection head (dropout 0.3)."""

    def __init__(self, n_channels: int, n_times: int, embed_dim: int = 1024, dropout: float = 0.3) -> None:
        super().__init__()
        self.head = projection_head(n_channels * n_times, embed_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


class LinearEncoder(nn.Module):
    """One linear map from the flattened trial: the simplest shallow aligner."""

    def __init__(self, n_channels: int, n_times: int, embed_dim: int = 1024) -> None:
        super().__init__()
        self.proj = nn.Linear(n_channels * n_times, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1))


class TSConvPatch(nn.Module):
    """NICE's PatchEmbedding: temporal conv, avg-pool, spatial conv, 1x1 projection; -> (batch, patches*emb)."""

    def __init__(self, n_channels: int, emb: int = 40, dropout: float = 0.5) -> None:
        super().__init__()
        self.tsconv = nn.Sequential(
            nn.Conv2d(1, 40, (1, 25), (1, 1)),
            nn.AvgPool2d((1, 51), (1, 5)),
            nn.BatchNorm2d(40),
            nn.ELU(),
            nn.Conv2d(40, 40, (n_channels, 1), (1, 1)),
            nn.BatchNorm2d(40),
            nn.ELU(),
            nn.Dropout(dropout),
        )
        self.projection = nn.Conv2d(40, emb, (1, 1), stride=(1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.projection(self.tsconv(x.unsqueeze(1)))  # (b, emb, 1, patches)
        return y.flatten(2).transpose(1, 2).flatten(1)  # 'b e h w -> b (h w e)'


def _tsconv_patches(n_times: int) -> int:
    """Time patches left by TSConv's conv (25) and pool (51, stride 5)."""
    return (n_times - 24 - 51) // 5 + 1


class TSConv(nn.Module):
    """NICE: TSConv patch embedding, flatten, then the residual projection head (dropout 0.5)."""

    def __init__(self, n_channels: int, n_times: int, embed_dim: int = 1024) -> None:
        super().__init__()
        if _tsconv_patches(n_times) < 1:
            raise SAError(f"encoder 'tsconv' needs at least 75 time samples, the data has {n_times}; use a longer window.")
        self.patch = TSConvPatch(n_channels)
        self.head = projection_head(40 * _tsconv_patches(n_times), embed_dim, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.patch(x))


class ITransformerAttention(nn.Module):
    """iTransformer's AttentionLayer: q/k/v to heads x (d_model // heads), full attention, out projection."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.d_head = n_heads, d_model // n_heads
        inner = self.heads * self.d_head
        self.query = nn.Linear(d_model, inner)
        self.key = nn.Linear(d_model, inner)
        self.value = nn.Linear(d_model, inner)
        self.out = nn.Linear(inner, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        split = lambda t: t.view(b, n, self.heads, self.d_head).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        att = self.drop(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d_head), dim=-1))
        return self.out((att @ v).transpose(1, 2).reshape(b, n, -1))


class ITransformerLayer(nn.Module):
    """iTransformer encoder layer (post-norm): attention over channel tokens, then a 1x1-conv FFN."""

    def __init__(self, d_model: int, n_heads: int = 4, d_ff: int = 256, dropout: float = 0.25) -> None:
        super().__init__()
        self.attn = ITransformerAttention(d_model, n_heads, dropout)
        self.conv1 = nn.Conv1d(d_model, d_ff, 1)
        self.conv2 = nn.Conv1d(d_ff, d_model, 1)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x)))
        y = self.drop(self.act(self.conv1(x.transpose(1, 2))))
        y = self.drop(self.conv2(y).transpose(1, 2))
        return self.norm2(x + y)


class ATMS(nn.Module):
    """ATM-S: channel-token transformer (d_model = T), TSConv patch embedding, residual projection head.

    Unlike the reference (EEG_Image_decode ATMS), there is no learned subject
    token: the reference prepends one and then drops the last EEG channel,
    which only matters when one model serves several subjects. The
    reference's unused parameters are left out, so counts differ by those.
    """

    def __init__(self, n_channels: int, n_times: int, embed_dim: int = 1024, n_heads: int = 4,
                 d_ff: int = 256, dropout: float = 0.25) -> None:
        super().__init__()
        d_model = n_times
        if _tsconv_patches(d_model) < 1:
            raise SAError(f"encoder 'atms' needs at least 75 time samples, the data has {n_times}; use a longer window.")
        self.embed = nn.Linear(n_times, d_model)
        self.embed_drop = nn.Dropout(dropout)
        self.layer = ITransformerLayer(d_model, n_heads, d_ff, dropout)
        self.norm = nn.LayerNorm(d_model)
        self.patch = TSConvPatch(n_channels)
        self.head = projection_head(40 * _tsconv_patches(d_model), embed_dim, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.norm(self.layer(self.embed_drop(self.embed(x))))  # (b, C, d_model)
        return self.head(self.patch(z))


class EEGNet(nn.Module):
    """braindecode EEGNetv4 (F1 8, D 2, F2 16, kernel 64, pools 4 and 8, dropout 0.25) -> Linear to embed_dim.

    Same layers and parameter count; braindecode's max-norm cap on the spatial
    conv and its Glorot initialisation are not reproduced.
    """

    def __init__(self, n_channels: int, n_times: int, embed_dim: int = 1024, f1: int = 8, depth: int = 2,
                 f2: int = 16, kernel: int = 64, dropout: float = 0.25) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, f1, (1, kernel), bias=False, padding=(0, kernel // 2)),
            nn.BatchNorm2d(f1, momentum=0.01, eps=1e-3),
            nn.Conv2d(f1, f1 * depth, (n_channels, 1), groups=f1, bias=False),
            nn.BatchNorm2d(f1 * depth, momentum=0.01, eps=1e-3),
            nn.ELU(),
            nn.AvgPool2d((1, 4), (1, 4)),
            nn.Dropout(dropout),
            nn.Conv2d(f1 * depth, f1 * depth, (1, 16), groups=f1 * depth, bias=False, padding=(0, 8)),
            nn.Conv2d(f1 * depth, f2, (1, 1), bias=False),
            nn.BatchNorm2d(f2, momentum=0.01, eps=1e-3),
            nn.ELU(),
            nn.AvgPool2d((1, 8), (1, 8)),
            nn.Dropout(dropout),
        )
        t = ((n_times + 2 * (kernel // 2) - kernel + 1) // 4 + 1) // 8
        if t < 1:
            raise SAError(f"encoder 'eegnet' needs at least 64 time samples, the data has {n_times}; use a longer window.")
        self.final = nn.Linear(f2 * t, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.features(x.unsqueeze(1)).flatten(1))


class SafeLog(nn.Module):
    """log(clamp(x, eps)) as braindecode's safe_log."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.clamp(x, min=1e-6))


class Square(nn.Module):
    """x * x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def _shallow_time(n_times: int) -> int:
    """Time steps left by the 25-sample conv and the (75, stride 15) pool of ShallowNet / EEGConformer."""
    return (n_times - 24 - 75) // 15 + 1


class ShallowNet(nn.Module):
    """braindecode ShallowFBCSPNet (40 temporal + 40 spatial filters, square, mean-pool, log) -> Linear."""

    def __init__(self, n_channels: int, n_times: int, embed_dim: int = 1024, dropout: float = 0.5) -> None:
        super().__init__()
        if _shallow_time(n_times) < 1:
            raise SAError(f"encoder 'shallownet' needs at least 99 time samples, the data has {n_times}; use a longer window.")
        self.features = nn.Sequential(
            nn.Conv2d(1, 40, (1, 25)),
            nn.Conv2d(40, 40, (n_channels, 1), bias=False),
            nn.BatchNorm2d(40, momentum=0.1),
            Square(),
            nn.AvgPool2d((1, 75), (1, 15)),
            SafeLog(),
            nn.Dropout(dropout),
        )
        self.final = nn.Linear(40 * _shallow_time(n_times), embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.features(x.unsqueeze(1)).flatten(1))


class ConformerAttention(nn.Module):
    """braindecode's MultiHeadAttention: separate q/k/v/out linears, softmax(qk^T / sqrt(d))."""

    def __init__(self, emb: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.keys = nn.Linear(emb, emb)
        self.queries = nn.Linear(emb, emb)
        self.values = nn.Linear(emb, emb)
        self.drop = nn.Dropout(dropout)
        self.projection = nn.Linear(emb, emb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        split = lambda t: t.view(b, n, self.heads, e // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.queries(x)), split(self.keys(x)), split(self.values(x))
        att = self.drop(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(e), dim=-1))
        return self.projection((att @ v).transpose(1, 2).reshape(b, n, e))


class ConformerBlock(nn.Module):
    """Pre-norm transformer block with residual attention and a 4x GELU feed-forward."""

    def __init__(self, emb: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = Residual(nn.Sequential(nn.LayerNorm(emb), ConformerAttention(emb, heads, dropout), nn.Dropout(dropout)))
        self.ff = Residual(nn.Sequential(nn.LayerNorm(emb), nn.Linear(emb, 4 * emb), nn.GELU(), nn.Dropout(dropout),
                                         nn.Linear(4 * emb, emb), nn.Dropout(dropout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(self.attn(x))


class EEGConformer(nn.Module):
    """braindecode EEGConformer: conv patch embedding, 6 attention blocks (10 heads), FC 256-32 -> Linear."""

    def __init__(self, n_channels: int, n_times: int, embed_dim: int = 1024, emb: int = 40, depth: int = 6,
                 heads: int = 10, dropout: float = 0.5) -> None:
        super().__init__()
        if _shallow_time(n_times) < 1:
            raise SAError(f"encoder 'eegconformer' needs at least 99 time samples, the data has {n_times}; use a longer window.")
        self.patch = nn.Sequential(
            nn.Conv2d(1, 40, (1, 25)),
            nn.Conv2d(40, 40, (n_channels, 1)),
            nn.BatchNorm2d(40),
            nn.ELU(),
            nn.AvgPool2d((1, 75), (1, 15)),
            nn.Dropout(dropout),
        )
        self.projection = nn.Conv2d(40, emb, (1, 1))
        self.blocks = nn.Sequential(*[ConformerBlock(emb, heads, dropout) for _ in range(depth)])
        self.fc = nn.Sequential(nn.Linear(emb * _shallow_time(n_times), 256), nn.ELU(), nn.Dropout(0.5),
                                nn.Linear(256, 32), nn.ELU(), nn.Dropout(0.3))
        self.final = nn.Linear(32, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.projection(self.patch(x.unsqueeze(1))).flatten(2).transpose(1, 2)  # (b, patches, emb)
        return self.final(self.fc(self.blocks(y).flatten(1)))


ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "eegproject": EEGProject,
    "linear": LinearEncoder,
    "tsconv": TSConv,
    "atms": ATMS,
    "eegnet": EEGNet,
    "shallownet": ShallowNet,
    "eegconformer": EEGConformer,
}


def build_encoder(name: str, n_channels: int, n_times: int, embed_dim: int = 1024, **kw) -> nn.Module:
    """Instantiate a registered encoder for (C, T) input and an `embed_dim` output."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in ENCODERS:
        raise SAError(f"unknown encoder {name!r}; choose one of {', '.join(sorted(ENCODERS))}.")
    return ENCODERS[key](n_channels, n_times, embed_dim, **kw)


def count_params(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
