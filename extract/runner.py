"""`extract()`: run backbones once over an image set and store every layer's pooled features in the cache.

Images are decoded by DataLoader workers while the model runs; batches never
straddle a cache block, and a block is written (and recorded done) as soon as
its last batch is in, so a killed run resumes at the first unfinished block
and produces the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sa.cache.keys import backbone_key
from sa.errors import SAError
from sa.extract.backbones import DTYPES, Backbone, load_backbone
from sa.extract.images import ImageSet
from sa.extract.layers import LayerTaps
from sa.extract.pooling import choose_pools

DEFAULT_BLOCK_ROWS = 256


# ---------------------------------------------------------------- device and dtype


def resolve_device(device: str) -> torch.device:
    """`auto` -> cuda, then mps, then cpu; an explicit device that is absent is an SAError."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SAError(f"--device {device} asked for CUDA but torch sees no CUDA GPU; use --device cpu or auto.")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SAError("--device mps is not available on this machine; use --device cpu or auto.")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise SAError(f"--device {device} is not one of auto, cpu, cuda, mps.")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """`auto` -> bf16 where the hardware has it natively (CUDA with bf16, CPU with AVX512-BF16/AMX), else fp32."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise SAError(f"--dtype {dtype} is not one of auto, {', '.join(DTYPES)}.")
        return dtype
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


# ---------------------------------------------------------------- images -> tensors


def decode_image(path: Union[str, Path]):
    """Open an image with PIL and return it fully decoded as RGB."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


class ImageRows(Dataset):
    """Row i -> (i, transformed image, error text or ""). Errors travel as text so the caller can name the file."""

    def __init__(self, paths: Sequence[Path], transform: Callable, image_size: int):
        self.paths, self.transform, self.image_size = list(paths), transform, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(decode_image(self.paths[i])), ""
        except Exception as exc:  # noqa: BLE001 - any decode failure is reported with its file
            return i, torch.zeros(3, self.image_size, self.image_size), f"{type(exc).__name__}: {exc}"


def block_batches(blocks: Iterable[int], n_rows: int, block_rows: int, batch_size: int) -> list[list[int]]:
    """Row-index batches of at most `batch_size` that never cross a block boundary, in block order."""
    out = []
    for b in blocks:
        start, stop = b * block_rows, min((b + 1) * block_rows, n_rows)
        out += [list(range(s, min(s + batch_size, stop))) for s in range(start, stop, batch_size)]
    return out


def aligned_block_rows(batch_size: int, target: int = DEFAULT_BLOCK_ROWS) -> int:
    """A block size that is a whole number of batches, close to `target` rows."""
    return batch_size * max(1, round(target / batch_size))


def default_num_workers() -> int:
    """DataLoader decode workers: one per spare core, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def find_bad_images(imageset: ImageSet, rows: Iterable[int]) -> list[str]:
    """Ids among `rows` that PIL cannot decode (used to recover `skipped` for blocks done before a resume)."""
    bad = []
    for r in rows:
        try:
            decode_image(imageset.root / imageset.ids[r])
        except Exception:  # noqa: BLE001
            bad.append(imageset.ids[r])
    return bad


# ---------------------------------------------------------------- the block loop (shared with dask workers)


@dataclass
class BlockJob:
    """Everything the block loop needs besides the backbone and the writer."""

    imageset: ImageSet
    pools: tuple[str, ...]
    batch_size: int
    device: torch.device
    skip_bad: bool
    num_workers: int


def probe_widths(bb: Backbone, pools: Sequence[str], device: torch.device) -> dict[str, int]:
    """Array name -> width, from one forward pass of a blank image."""
    x = torch.zeros(1, 3, bb.image_size, bb.image_size, device=device, dtype=next(bb.model.parameters()).dtype)
    with torch.inference_mode(), LayerTaps(bb.model, bb.plan, bb.embed, tuple(pools)) as taps:
        out = taps.run(x)
    return {name: int(v.shape[1]) for name, v in out.items()}


def run_blocks(bb: Backbone, writer: Any, blocks: Sequence[int], job: BlockJob, on_batch: Optional[Callable[[int], None]] = None) -> list[str]:
    """Compute and write `blocks` of the writer's group; returns the ids skipped as unreadable (rows NaN)."""
    n, block_rows = writer.n_rows, writer.block_rows
    batches = block_batches(blocks, n, block_rows, job.batch_size)
    if not batches:
        return []
    dataset = ImageRows([job.imageset.root / i for i in job.imageset.ids], bb.transform, bb.image_size)
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=job.num_workers,
        pin_memory=job.device.type == "cuda",
        prefetch_factor=4 if job.num_workers else None,
        persistent_workers=False,
    )
    model_dtype = next(bb.model.parameters()).dtype
    skipped: list[str] = []
    buf: dict[str, np.ndarray] = {}
    filled, current = 0, None
    with torch.inference_mode(), LayerTaps(bb.model, bb.plan, bb.embed, job.pools) as taps:
        for rows, x, errors in loader:
            b = int(rows[0]) // block_rows
            if b != current:
                current, filled, buf = b, 0, {}
            bad = [k for k, e in enumerate(errors) if e]
            for k in bad:
                path = job.imageset.root / job.imageset.ids[int(rows[k])]
                if not job.skip_bad:
                    raise SAError(f"Cannot read image {path} ({errors[k]}); fix or remove it, or pass --skip-bad to store NaN for it.")
                skipped.append(job.imageset.ids[int(rows[k])])
            out = taps.run(x.to(job.device, dtype=model_dtype, non_blocking=True))
            sl = writer.block_rows_slice(b)
            lo = int(rows[0]) - sl.start
            for name, v in out.items():
                a = buf.setdefault(name, np.empty((sl.stop - sl.start, v.shape[1]), dtype=np.float16))
                chunk = v.cpu().numpy().astype(np.float16)
                chunk[bad] = np.nan
                a[lo : lo + len(rows)] = chunk
            filled += len(rows)
            if filled == sl.stop - sl.start:
                writer.write_block(b, buf)
            if on_batch is not None:
                on_batch(len(rows))
    return skipped


# ---------------------------------------------------------------- keys, manifest, writer


def key_spec(bb: Backbone, pools: Sequence[str], dtype: str) -> dict:
    """Everything that changes the stored numbers (hashed into the backbone key)."""
    return {
        "source": bb.spec.generic,
        "weights": bb.weights_digest,
        "transform": bb.transform_text,
        "image_size": bb.image_size,
        "dtype": dtype,
        "pools": list(pools),
        "libraries": bb.libraries,
    }


def build_manifest(bb: Backbone, spec: dict, imageset: ImageSet, pools: Sequence[str], dtype: str, device: torch.device, widths: dict, seed: int) -> dict:
    """The extractor's part of the group manifest (the cache adds status, ids, arrays, created...)."""
    last = bb.plan.layers[-1].label
    return {
        "backbone": {
            "name": bb.spec.name,
            "source": bb.spec.generic,
            "weights": bb.weights,
            "weights_digest": bb.weights_digest,
            "random_init": bb.random_init,
            "seed": seed if bb.random_init else None,
            "params": bb.params,
            "n_blocks": bb.plan.n_blocks,
            "width": widths.get(f"{pools[0]}/{last}", -1),
            "family": bb.plan.family,
            "prefix_tokens": bb.plan.n_prefix,
        },
        "key_spec": spec,
        "transform": bb.transform_text,
        "image_size": bb.image_size,
        "compute_dtype": dtype,
        "device": str(device),
        "layers": [layer.manifest() for layer in bb.plan.layers],
        "pools": list(pools),
        "image_root": str(imageset.root),
        "image_layout": imageset.layout,
        "libraries": dict(bb.libraries),
    }


def _complete_group(root: Any, isid: str, bb: Backbone, pools: Optional[Sequence[str]], dtype: str, name: str) -> Any:
    """The complete cache group this backbone would write, or None."""
    spec = key_spec(bb, choose_pools(pools, bb.plan.pools, name), dtype)
    key = f"{isid}/{backbone_key(bb.spec.key_name, spec)}"
    return root.open(key) if root.status(key) == "complete" else None


def open_group_writer(root: Any, isid: str, bkey: str, ids: Sequence[str], widths: dict, manifest: dict, block_rows: int, wait: bool, say: Callable[[str], None]) -> Any:
    """root.create with the writer lock, or None once another writer completed the group while we waited (`wait`).

    If the other writer dies while we wait, its partial group is resumed here.
    """
    from sa.cache import GroupLocked
    from sa.cache.wait import WriterGone, wait_for_complete

    while True:
        try:
            return root.create(isid, bkey, list(ids), widths, manifest, block_rows=block_rows, lock=True)
        except GroupLocked as exc:
            if not wait:
                raise SAError(f"{exc} Pass --wait to wait for it and reuse its result.") from None
            say(f"waiting: {exc}")
            try:
                wait_for_complete(root, f"{isid}/{bkey}", timeout=None)
                return None
            except WriterGone:
                say("the other writer stopped before finishing; resuming its group here.")


# ---------------------------------------------------------------- the public call


def _as_list(backbones: Union[str, Sequence[str]]) -> list[str]:
    return [backbones] if isinstance(backbones, str) else list(backbones)


def _weights_for(weights: Union[None, str, Path, Sequence], n: int) -> list:
    if weights is None or isinstance(weights, (str, Path)):
        if weights is not None and n > 1:
            raise SAError("--weights was given once for several --backbone; give one --weights per backbone, in the same order.")
        return [weights] * n
    weights = list(weights)
    if len(weights) != n:
        raise SAError(f"{len(weights)} --weights for {n} --backbone; give one per backbone, in the same order.")
    return weights


def extract(
    images: Union[str, Path, ImageSet],
    backbones: Union[str, Sequence[str]],
    cache: Union[str, Path, None] = None,
    *,
    weights: Union[None, str, Path, Sequence] = None,
    random_init: bool = False,
    seed: int = 0,
    pools: Optional[Sequence[str]] = None,
    image_size: Optional[int] = None,
    batch_size: int = 32,
    device: str = "auto",
    dtype: str = "auto",
    skip_bad: bool = False,
    num_workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    n_workers: Optional[int] = None,
    wait: bool = False,
    progress: bool = True,
    block_rows: Optional[int] = None,
    log: Optional[Callable[[str], None]] = None,
) -> list:
    """Extract every layer of each backbone over `images` into the cache; returns one FeatureGroup per backbone."""
    from sa.cache import open_root

    say = log or (lambda msg: None)
    if batch_size < 1:
        raise SAError(f"--batch-size {batch_size} must be at least 1.")
    imageset = images if isinstance(images, ImageSet) else ImageSet.from_path(images)
    names = _as_list(backbones)
    if not names:
        raise SAError("no --backbone given; name at least one (see `sa backbones`).")
    root = open_root(cache)
    isid = imageset.digest()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    groups = []
    for name, w in zip(names, _weights_for(weights, len(names))):
        load = dict(weights=w, random_init=random_init, seed=seed, image_size=image_size, dtype=dt)
        done = _complete_group(root, isid, load_backbone(name, device="meta", **load), pools, dt, name)
        if done is not None:  # known from a weightless build: no giant model loaded just to skip it
            say(f"{name}: already complete in {root.url} as {done.key}; nothing to do.")
            groups.append(done)
            continue
        bb = load_backbone(name, device=str(dev), **load)
        chosen = choose_pools(pools, bb.plan.pools, name)
        spec = key_spec(bb, chosen, dt)
        bkey = backbone_key(bb.spec.key_name, spec)
        key = f"{isid}/{bkey}"
        widths = probe_widths(bb, chosen, dev)
        manifest = build_manifest(bb, spec, imageset, chosen, dt, dev, widths, seed)
        rows = block_rows or aligned_block_rows(batch_size)
        writer = open_group_writer(root, isid, bkey, imageset.ids, widths, manifest, rows, wait, say)
        if writer is None:
            say(f"{name}: {key} was completed by the other writer; reusing it.")
            groups.append(root.open(key))
            continue
        try:
            job = BlockJob(imageset, chosen, batch_size, dev, skip_bad, default_num_workers() if num_workers is None else num_workers)
            pending = writer.pending_blocks()
            done_rows = [r for b in sorted(writer.done_blocks()) for r in range(*writer.block_rows_slice(b).indices(writer.n_rows))]
            earlier_bad = find_bad_images(imageset, done_rows) if (skip_bad and done_rows) else []
            if done_rows:
                say(f"{name}: resuming {key} at {len(pending)} of {writer.n_blocks} blocks left.")
            if scheduler or n_workers:
                from sa.extract.distributed import run_distributed

                skipped = run_distributed(writer, root.url, name, pending, job, spec, w, random_init, seed, image_size, dt, scheduler, n_workers, progress)
            else:
                skipped = _run_local(bb, writer, pending, job, name, progress)
            group = writer.finalize({"skipped": sorted(set(earlier_bad) | set(skipped))})
        finally:
            writer.close()
        say(f"{name}: wrote {key} ({len(imageset)} images, {len(widths)} arrays).")
        groups.append(group)
    return groups


def _run_local(bb: Backbone, writer: Any, pending: Sequence[int], job: BlockJob, name: str, progress: bool) -> list[str]:
    """The block loop in this process, under a progress bar with images/s and ETA."""
    from sa.progress import make_progress

    total = sum(len(range(*writer.block_rows_slice(b).indices(writer.n_rows))) for b in pending)
    with make_progress("img", disable=not progress) as bar:
        task = bar.add_task(f"extract {name}", total=total)
        return run_blocks(bb, writer, pending, job, on_batch=lambda k: bar.advance(task, k))
