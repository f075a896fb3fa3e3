"""Helpers of the fidelity suite (tests/test_fidelity_*.py): photos, a weights file, and the float16 comparison.

Each fidelity test builds one small randomly initialised model, writes its state dict to a file, extracts
through sa's real `--weights` path, and compares every stored array with what the library's own
intermediate API (or its documented forward) computes from the same file on the same images,
preprocessed by the library's own eval transform.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "camera")  # shipped inside scikit-image (no download)


def photo_dir(folder: Path, names: tuple[str, ...] = PHOTOS) -> Path:
    """The skimage.data photos as 8-bit PNGs (camera is greyscale, so the RGB conversion is exercised too)."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.asarray(getattr(data, name)())).save(folder / f"{name}.png")
    return folder


def pil_images(folder: Path, ids: list[str]) -> list[Any]:
    """The images as PIL RGB, opened the plain way (the oracle's side, not sa's decoder)."""
    from PIL import Image

    out = []
    for i in ids:
        with Image.open(folder / i) as im:
            out.append(im.convert("RGB"))
    return out


def save_weights(model: torch.nn.Module, path: Path) -> Path:
    """Write the model's state dict the way its users do: safetensors for .safetensors, torch.save otherwise."""
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


def assert_within_float16(stored: np.ndarray, ref: torch.Tensor | np.ndarray, what: str) -> None:
    """`stored` (as read from the cache) equals `ref` (fp32, the library's own numbers) up to float16 rounding.

    Allowed per value: half a float16 step of |ref| (2**-11 relative; 2**-25 absolute below float16's normal range),
    plus 1e-6 of the row's largest magnitude for fp32 kernels that sum in another order.
    """
    ref = np.asarray(ref.detach().float().cpu() if isinstance(ref, torch.Tensor) else ref, dtype=np.float64)
    got = np.asarray(stored, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: stored shape {got.shape}, library gives {ref.shape}"
    assert np.isfinite(got).all(), f"{what}: stored values are not all finite"
    tol = 2.0**-11 * np.abs(ref) + 2.0**-25 + 1e-6 * np.abs(ref).max(axis=1, keepdims=True)
    bad = np.abs(got - ref) > tol
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.size} values differ beyond float16 rounding, "
                           f"max |diff| {np.abs(got - ref).max():.3g} (max |ref| {np.abs(ref).max():.3g})")


def assert_group_matches(group: Any, expected: Mapping[str, torch.Tensor], rows: slice = slice(None)) -> None:
    """Every array of the group is in `expected`, and vice versa, and each matches within float16 rounding."""
    assert set(group.arrays) == set(expected), f"stored {sorted(set(group.arrays) ^ set(expected))} differ from the reference's"
    for name in group.arrays:
        assert_within_float16(group.read(name)[rows], expected[name], f"{group.key} {name}")


def token_pools(tokens: torch.Tensor, n_prefix: int, has_cls: bool, label: str) -> dict[str, torch.Tensor]:
    """`cls` (token 0) and `mean` (tokens after the class/register tokens) of one batch-first (B, N, D) layer."""
    out = {f"mean/{label}": tokens[:, n_prefix:].float().mean(1)}
    if has_cls:
        out[f"cls/{label}"] = tokens[:, 0].float()
    return out


def gap(maps: torch.Tensor, label: str) -> dict[str, torch.Tensor]:
    """The global average of one (B, C, H, W) map."""
    return {f"gap/{label}": maps.float().mean((2, 3))}


def labels(n_blocks: int) -> list[str]:
    """'00'..'NN' as sa labels layers."""
    return [f"{i:02d}" for i in range(n_blocks + 1)]


def batch(transform: Callable, images: list[Any]) -> torch.Tensor:
    """The library's transform applied to each image, stacked."""
    return torch.stack([transform(im) for im in images])
