"""Encoders: output shape and parameter counts of the reference architectures, derived by hand."""

from __future__ import annotations

import pytest
import torch

from sa.errors import SAError
from sa.train.encoders import ENCODERS, build_encoder, count_params


def head(i: int, d: int) -> int:
    """Linear(i, d) + residual Linear(d, d) + LayerNorm(d)."""
    return (i * d + d) + (d * d + d) + 2 * d


def tsconv_patch(c: int) -> int:
    """NICE PatchEmbedding: conv 1x25, BN, conv Cx1, BN, 1x1 projection (40 filters)."""
    return (25 * 40 + 40) + 80 + (40 * 40 * c + 40) + 80 + (40 * 40 + 40)


EXPECTED = {
    # UBP / the paper: 5,404,672 on 17 x 250 with d = 1024 (REFERENCE.md)
    ("eegproject", 17, 250, 1024): 5_404_672,
    ("linear", 17, 250, 1024): 17 * 250 * 1024 + 1024,
    # NICE on 63 x 250, proj 768: 36 patches x 40 = 1440 -> 768
    ("tsconv", 63, 250, 768): tsconv_patch(63) + head(1440, 768),
    # ATM-S, 63 x 250, d_model 250, 4 heads of 62, d_ff 256, then NICE's patch embedding and head to 1024
    ("atms", 63, 250, 1024): (250 * 250 + 250) + 3 * (250 * 248 + 248) + (248 * 250 + 250) + (250 * 256 + 256)
    + (256 * 250 + 250) + 2 * 500 + 500 + tsconv_patch(63) + head(1440, 1024),
    # braindecode EEGNetv4, 63 x 250: 16 x 7 features -> 1024
    ("eegnet", 63, 250, 1024): 8 * 64 + 16 + 16 * 63 + 32 + 16 * 16 + 16 * 16 + 32 + (16 * 7 * 1024 + 1024),
    # braindecode ShallowFBCSPNet, 63 x 250: 40 x 11 features -> 1024
    ("shallownet", 63, 250, 1024): (25 * 40 + 40) + 40 * 40 * 63 + 80 + (40 * 11 * 1024 + 1024),
    # braindecode EEGConformer, 63 x 250: patch embedding, 6 blocks of 19,720, FC 440-256-32, final 32 -> 1024
    ("eegconformer", 63, 250, 1024): (25 * 40 + 40) + (40 * 40 * 63 + 40) + 80 + (40 * 40 + 40) + 6 * 19_720
    + (440 * 256 + 256) + (256 * 32 + 32) + (32 * 1024 + 1024),
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_parameter_counts_match_reference(key):
    name, c, t, d = key
    assert count_params(build_encoder(name, c, t, d)) == EXPECTED[key]


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_every_encoder_maps_trials_to_embeddings(name):
    torch.manual_seed(0)
    enc = build_encoder(name, 9, 120, embed_dim=32).eval()
    out = enc(torch.randn(3, 9, 120))
    assert out.shape == (3, 32) and torch.isfinite(out).all()


def test_unknown_or_too_short_input_raises():
    with pytest.raises(SAError, match="unknown encoder"):
        build_encoder("resnet", 17, 250)
    with pytest.raises(SAError, match="time samples"):
        build_encoder("tsconv", 17, 50)
    assert type(build_encoder("EEG-Project", 2, 3, 4)).__name__ == "EEGProject"
