"""`extract()`: run backbones once over an image set and store every layer's pooled features in the cache.

Images are decoded by DataLoader workers while the model runs; batches never
straddle a cache block, and a block is handed to a background writer thread
as soon as its last batch is in (written, then recorded done, in order, while
the forward goes on), so a killed run resumes at the first unfinished block
and produces the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

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

# Measured on the real MobileNetV2 (IMAGENET1K_V1) weights over the 24 skimage.data photos, relative to unrounded fp32,
# by `bench/extract.py --precision` (docs/extraction.md); float16 *storage* alone moves a row by 0.02 % (max 0.03 %).
PRECISION_ERROR = {
    "bf16": "rows move 7.5 % from fp32 (median; worst layer 16 %, max 39 %)",
    "fp16": "rows move 0.46 % from fp32 (median; worst layer 0.9 %, max 2 %)",
}


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


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """`auto` -> fp32 on every device: a lab extracts each backbone once and shares it, so it is full precision.

    bf16 / fp16 must be asked for by name (they cast weights and inputs; see PRECISION_ERROR).
    """
    if dtype == "auto":
        return "fp32"
    if dtype not in DTYPES:
        raise SAError(f"--dtype {dtype} is not one of auto, {', '.join(DTYPES)}.")
    return dtype


@contextlib.contextmanager
def full_precision(device: torch.device, dtype: str) -> Iterator[None]:
    """fp32 on CUDA means IEEE fp32: TF32 matmuls and convolutions are switched off for the extraction, then restored."""
    if device.type != "cuda" or dtype != "fp32":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def precision_text(device: torch.device, dtype: str) -> str:
    """How the numbers were computed, for the manifest."""
    if dtype == "fp32":
        return "fp32" + (" (TF32 off)" if device.type == "cuda" else "")
    return f"{dtype}: weights and inputs cast to {dtype} (no autocast); {PRECISION_ERROR[dtype]} on MobileNetV2"


# ---------------------------------------------------------------- images -> tensors

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(im: Any) -> Any:
    """An 8-bit RGB PIL image; 16-bit greyscale is scaled (x / 257), not clipped; float pixels are refused."""
    from PIL import Image

    if im.mode in _SIXTEEN_BIT or im.mode == "I":
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"32-bit integer pixels ({a.min()}..{a.max()}) have no 8-bit meaning; convert the image to 8-bit")
        return Image.fromarray(np.round(a.astype(np.float64) / 257.0).astype(np.uint8), mode="L").convert("RGB")
    if im.mode == "F":
        raise ValueError("floating-point pixels have no 8-bit meaning; convert the image to 8-bit")
    return im if im.mode == "RGB" else im.convert("RGB")


def decode_image(path: Union[str, Path]):
    """Open an image with PIL and return it fully decoded as 8-bit RGB (16-bit images scaled, see `to_rgb`)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return to_rgb(im)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run small tensor ops (a transform's ToTensor/Normalize) on one torch thread, then restore the count.

    On a busy machine every parallel region waits for its slowest thread, so per-image ops on the forward's
    thread count ran 7-10x slower (25-40 ms vs 3.5 ms per image for open_clip's transform, 2 cores, load 1.6).
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def decode_worker_init(worker_id: int) -> None:
    """A DataLoader decode worker runs one torch thread (torch sets it too; said here so it never depends on that).

    Not niced: a decode worker at nice 10 made extraction 10-12 % slower on 2 cores (it starved while the
    forward's threads spun, so the forward then waited for images).
    """
    torch.set_num_threads(1)


class ImageRows(Dataset):
    """Row i -> (i, transformed image, error text or ""). Errors travel as text so the caller can name the file."""

    def __init__(self, paths: Sequence[Path], transform: Callable, input_size: tuple[int, int]):
        self.paths, self.transform, self.input_size = list(paths), transform, tuple(input_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitems__(self, rows: Sequence[int]) -> list:
        """A batch of rows (what DataLoader asks for), transformed on one torch thread (see `one_torch_thread`)."""
        with one_torch_thread():
            return [self[i] for i in rows]

    def __getitem__(self, i: int):
        try:
            return i, self.transform(decode_image(self.paths[i])), ""
        except Exception as exc:  # noqa: BLE001 - any decode failure is reported with its file
            return i, torch.zeros(3, *self.input_size), f"{type(exc).__name__}: {exc}"


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
    """Everything the block loop needs besides the backbone and the writer.

    `skipped` collects the ids of unreadable images as blocks are computed (it survives a restart of the loop).
    """

    imageset: ImageSet
    pools: tuple[str, ...]
    batch_size: int
    device: torch.device
    skip_bad: bool
    num_workers: int
    dtype: str = "fp32"
    skipped: list = field(default_factory=list)


def probe_widths(bb: Backbone, pools: Sequence[str], device: torch.device) -> dict[str, int]:
    """Array name -> width, from one forward pass of a blank image."""
    x = torch.zeros(1, 3, *bb.input_size, device=device, dtype=next(bb.model.parameters()).dtype)
    with torch.inference_mode(), LayerTaps(bb.model, bb.plan, bb.embed, tuple(pools)) as taps:
        out = taps.run(x)
    return {name: int(v.shape[1]) for name, v in out.items()}


def _padded(x: torch.Tensor, rows: int) -> torch.Tensor:
    """`x` with zero images appended up to `rows`: every forward has the same shape, so a row's numbers never
    depend on how many images share its batch (kernels may sum in another order for another batch shape)."""
    if x.shape[0] >= rows:
        return x
    return torch.cat([x, x.new_zeros(rows - x.shape[0], *x.shape[1:])])


def _check_finite(out: dict, good: np.ndarray, rows: Any, job: BlockJob, name: str) -> None:
    """SAError naming the layer and image when the model gave NaN/Inf for a readable image."""
    for array, v in out.items():
        finite = torch.isfinite(v).all(dim=1).numpy()
        bad = np.flatnonzero(good & ~finite)
        if bad.size:
            image = job.imageset.ids[int(rows[bad[0]])]
            fix = ("compute in fp32 (--dtype fp32)" if job.dtype != "fp32"
                   else "the weights overflow even float32: check the --weights file")
            raise SAError(f"layer {array} of {name} gave NaN/Inf for image {image} ({bad.size} image(s) in this batch) "
                          f"at --dtype {job.dtype}; {fix}.")


class BlockWriterThread:
    """Writes finished blocks in one background thread, in order and one at a time, while the forward goes on.

    At most `depth` blocks wait (memory stays bounded: one being written, `depth` waiting, one being filled).
    A block's skipped ids join `job.skipped` only after its `write_block` returned (which records it done), so
    nothing counts as done before its bytes are written. The first write error is raised again in the caller's
    thread, unchanged (so `errors.explain`, `Float16Overflow` and the rest treat it as before); blocks queued
    after it are dropped, never written.
    """

    def __init__(self, writer: Any, job: BlockJob, depth: int = 1):
        self.writer, self.job = writer, job
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: Optional[BaseException] = None
        self._stop = threading.Event()  # set: drop what is queued (after an error, Ctrl-C or a failure upstream)
        self._thread = threading.Thread(target=self._loop, name="sa-block-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._stop.is_set():
                continue
            b, data, skipped = item
            try:
                self.writer.write_block(b, data)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by check()
                self._error = exc
                self._stop.set()
                continue
            self.job.skipped.extend(i for i in skipped if i not in self.job.skipped)

    def check(self) -> None:
        """Raise the writer thread's error, if it had one, in the calling thread."""
        if self._error is not None:
            raise self._error

    def put(self, b: int, data: dict, skipped: list[str]) -> None:
        """Queue block `b` for writing (waits while `depth` blocks are already waiting)."""
        self.check()
        while True:
            try:
                self._queue.put((b, data, skipped), timeout=0.5)
                return
            except queue.Full:
                self.check()

    def finish(self) -> None:
        """Wait until every queued block is written; raise the first write error."""
        self._queue.put(None)
        self._thread.join()
        self.check()

    def abandon(self) -> None:
        """Drop the queued blocks and wait for the one being written (it is then complete and recorded done)."""
        self._stop.set()
        self._queue.put(None)  # the loop drains without writing, so this never waits long
        self._thread.join()


@contextlib.contextmanager
def block_writer_thread(writer: Any, job: BlockJob) -> Iterator[BlockWriterThread]:
    """A BlockWriterThread that is drained on success (its first error raised) and abandoned on any exception."""
    out = BlockWriterThread(writer, job)
    try:
        yield out
        out.finish()
    except BaseException:
        out.abandon()
        raise


def _to_host(out: dict[str, torch.Tensor], n: int, device: torch.device) -> tuple[dict[str, torch.Tensor], Any]:
    """The first n rows of every output on the host; on CUDA as non-blocking copies into pinned memory, with the
    event that marks them landed, so the host never waits for the forward it just queued."""
    if device.type != "cuda":
        return {name: v[:n].cpu() for name, v in out.items()}, None
    host = {}
    for name, v in out.items():
        host[name] = torch.empty(v[:n].shape, dtype=v.dtype, pin_memory=True)
        host[name].copy_(v[:n], non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def run_blocks(bb: Backbone, writer: Any, blocks: Sequence[int], job: BlockJob, on_batch: Optional[Callable[[int], None]] = None) -> list[str]:
    """Compute and write `blocks` of the writer's group; returns the ids skipped as unreadable (rows NaN).

    Every forward runs on exactly `job.batch_size` images (the last batch is padded with blank images), so the
    stored bytes depend on the batch size, which is therefore part of the cache key.
    """
    n, block_rows = writer.n_rows, writer.block_rows
    batches = block_batches(blocks, n, block_rows, job.batch_size)
    if not batches:
        return []
    dataset = ImageRows([job.imageset.root / i for i in job.imageset.ids], bb.transform, bb.input_size)
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=job.num_workers,
        pin_memory=job.device.type == "cuda",
        prefetch_factor=4 if job.num_workers else None,
        persistent_workers=False,
        worker_init_fn=decode_worker_init if job.num_workers else None,
    )
    model_dtype = next(bb.model.parameters()).dtype
    skipped: list[str] = []
    buf: dict[str, np.ndarray] = {}
    filled, current = 0, None

    def land(rows: torch.Tensor, host: dict[str, torch.Tensor], event: Any, bad: list[int]) -> None:
        """Store one finished batch's rows in its block's buffer; hand the block to the writer once it is full."""
        nonlocal skipped, buf, filled, current
        if event is not None:
            event.synchronize()  # the batch's device-to-host copies have landed
        b = int(rows[0]) // block_rows
        if b != current:
            current, filled, buf = b, 0, {}
        skipped.extend(job.imageset.ids[int(rows[k])] for k in bad)
        good = np.ones(len(rows), dtype=bool)
        good[bad] = False
        _check_finite(host, good, rows, job, bb.spec.name)
        sl = writer.block_rows_slice(b)
        lo = int(rows[0]) - sl.start
        for name, v in host.items():
            a = buf.setdefault(name, np.empty((sl.stop - sl.start, v.shape[1]), dtype=np.float32))
            chunk = v.numpy()
            chunk[bad] = np.nan
            a[lo : lo + len(rows)] = chunk
        filled += len(rows)
        if filled == sl.stop - sl.start:
            out_writer.put(b, buf, skipped)  # buf and skipped are not touched again here: the next block gets new ones
            skipped = []
        if on_batch is not None:
            on_batch(len(rows))

    pending: Optional[tuple] = None  # the previous batch, landed after this one's forward is queued
    with block_writer_thread(writer, job) as out_writer, torch.inference_mode(), full_precision(job.device, job.dtype), \
            LayerTaps(bb.model, bb.plan, bb.embed, job.pools) as taps:
        for rows, x, errors in loader:
            out_writer.check()  # a failed write stops the forward at once
            if tuple(x.shape[-2:]) != tuple(bb.input_size):
                raise RuntimeError(f"the transform of {bb.spec.name} gave {tuple(x.shape[-2:])} images, not {bb.input_size}")
            bad = [k for k, e in enumerate(errors) if e]
            for k in bad:
                if not job.skip_bad:
                    path = job.imageset.root / job.imageset.ids[int(rows[k])]
                    raise SAError(f"Cannot read image {path} ({errors[k]}); fix or remove it, or pass --skip-bad to store NaN for it.")
            out = taps.run(_padded(x, job.batch_size).to(job.device, dtype=model_dtype, non_blocking=True))
            host, event = _to_host(out, len(rows), job.device)
            if pending is not None:
                land(*pending)  # on a GPU: while this batch's forward and copies run
            pending = (rows, host, event, bad)
        if pending is not None:
            land(*pending)
    return list(job.skipped)


# ---------------------------------------------------------------- one dask worker's part (see sa.extract.distributed)

_BACKBONES: dict[tuple, Any] = {}  # per worker process: loaded backbones by their load arguments


def _worker_backbone(name: str, load: dict, device: str) -> Backbone:
    args = (name, device, *sorted((k, str(v)) for k, v in load.items()))
    if args not in _BACKBONES:
        _BACKBONES[args] = load_backbone(name, device=device, **load)
    return _BACKBONES[args]


def run_shard(cache_url: str, key: str, blocks: list[int], name: str, load: dict, expect_spec: dict, imageset: Any,
              pools: tuple, batch_size: int, skip_bad: bool) -> list[str]:
    """On a worker: compute and write `blocks` of group `key`; returns the skipped ids. Refuses a backbone whose key spec differs."""
    from sa.cache import open_root

    device = resolve_device("auto")
    bb = _worker_backbone(name, load, str(device))
    spec = key_spec(bb, pools, load["dtype"], batch_size)
    if spec != expect_spec:
        raise SAError(f"worker built {name} differently from the client (libraries or weights differ: {spec} vs {expect_spec}); give workers the same environment.")
    torch.set_num_threads(1)
    writer = open_root(cache_url).open_writer(key)
    try:
        job = BlockJob(imageset, pools, batch_size, device, skip_bad, num_workers=0, dtype=load["dtype"])
        return run_blocks(bb, writer, blocks, job)
    finally:
        writer.close()


# ---------------------------------------------------------------- keys, manifest, writer


# Bumped whenever what a layer label or `final` means changes for some family (v2: stem and every stage for timm
# CNNs, torchvision ConvNeXt/VGG stages, penultimate `final` for MobileNetV3/VGG/ConvNeXt), so old groups are not reused.
CONVENTION = 2


def key_spec(bb: Backbone, pools: Sequence[str], dtype: str, batch_size: int) -> dict:
    """Everything that changes the stored numbers (hashed into the backbone key), batch size included."""
    return {
        "source": bb.spec.generic,
        "weights": bb.weights_digest,
        "transform": bb.transform_text,
        "image_size": bb.image_size,
        "dtype": dtype,
        "batch_size": int(batch_size),
        "pools": list(pools),
        "libraries": bb.libraries,
        "convention": CONVENTION,
    }


def build_manifest(bb: Backbone, spec: dict, imageset: ImageSet, pools: Sequence[str], dtype: str, device: torch.device,
                   widths: dict, seed: int, batch_size: int) -> dict:
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
        "transform_source": bb.transform_source,
        "image_size": bb.image_size,
        "compute_dtype": dtype,
        "precision": precision_text(device, dtype),
        "batch_size": int(batch_size),
        "device": str(device),
        "layers": [layer.manifest() for layer in bb.plan.layers],
        "pools": list(pools),
        "image_root": str(imageset.root),
        "image_layout": imageset.layout,
        "libraries": dict(bb.libraries),
    }


def _complete_group(root: Any, isid: str, bb: Backbone, pools: Optional[Sequence[str]], dtype: str, batch_size: int, name: str) -> Any:
    """The complete cache group this backbone would write, or None."""
    spec = key_spec(bb, choose_pools(pools, bb.plan.pools, name), dtype, batch_size)
    key = f"{isid}/{backbone_key(bb.spec.key_name, spec)}"
    return root.open(key) if root.status(key) == "complete" else None


def open_group_writer(root: Any, isid: str, bkey: str, ids: Sequence[str], widths: dict, manifest: dict, block_rows: int,
                      wait: bool, say: Callable[[str], None], wide: Optional[dict] = None) -> Any:
    """root.create with the writer lock, or None once another writer completed the group while we waited (`wait`).

    If the other writer dies while we wait, its partial group is resumed here. `wide`: arrays to store as float32.
    """
    from sa.cache import GroupLocked
    from sa.cache.wait import WriterGone, wait_for_complete

    while True:
        try:
            return root.create(isid, bkey, list(ids), widths, manifest, block_rows=block_rows, lock=True, wide=wide)
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


def _per_backbone(value: Any, n: int, option: str) -> list:
    """One value per backbone: None or a single str/Path for one backbone, else a list of length n."""
    if value is None or isinstance(value, (str, Path)):
        if value is not None and n > 1:
            raise SAError(f"{option} was given once for several --backbone; give one {option} per backbone, in the same order.")
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise SAError(f"{len(value)} {option} for {n} --backbone; give one per backbone, in the same order.")
    return value


AUTO = "auto"
AUTO_BATCHES = (256, 128, 64, 32, 16, 8, 4, 2, 1)
CPU_AUTO_BATCH = 32  # off CUDA there is no memory to fill: the default, so `auto` keys equal explicit ones


def fit_batch_size(fits: Callable[[int], bool], candidates: Sequence[int] = AUTO_BATCHES) -> int:
    """The largest candidate batch for which `fits(n)` holds."""
    for n in candidates:
        if fits(n):
            return n
    raise SAError("not even one image fits in the device's memory with every layer tapped; use --dtype bf16, "
                  "a smaller --image-size, or a device with more memory.")


def cuda_forward_fits(bb: Backbone, pools: Sequence[str], device: torch.device) -> Callable[[int], bool]:
    """Whether a forward of n blank images with every layer tapped fits on this CUDA device, keeping 10 % spare."""

    def fits(n: int) -> bool:
        torch.cuda.empty_cache()
        x = torch.zeros(n, 3, *bb.input_size, device=device, dtype=next(bb.model.parameters()).dtype)
        try:
            torch.cuda.reset_peak_memory_stats(device)
            with torch.inference_mode(), LayerTaps(bb.model, bb.plan, bb.embed, tuple(pools)) as taps:
                taps.run(x)
            peak, total = torch.cuda.max_memory_allocated(device), torch.cuda.get_device_properties(device).total_memory
            return peak <= 0.9 * total
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            del x
            torch.cuda.empty_cache()

    return fits


def check_options(batch_size: Union[int, str], num_workers: Optional[int], image_size: Optional[int], block_rows: Optional[int],
                  n_workers: Optional[int]) -> None:
    """Every numeric option checked before anything is read, built or created."""
    from sa.extract.backbones import check_image_size

    if batch_size != AUTO and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise SAError(f"--batch-size {batch_size} must be a whole number of at least 1, or auto.")
    if num_workers is not None and num_workers < 0:
        raise SAError(f"--num-workers {num_workers} must be 0 (decode in this process) or more; leave it out for one per spare core.")
    if n_workers is not None and n_workers < 1:
        raise SAError(f"--workers {n_workers} must be at least 1.")
    check_image_size(image_size)
    if block_rows is not None and batch_size != AUTO and (block_rows < 1 or block_rows % batch_size):
        raise SAError(f"block_rows {block_rows} must be a positive multiple of the batch size {batch_size}.")


def _size_error(exc: BaseException, image_size: Optional[int], name: str) -> SAError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return SAError(f"--image-size {image_size} does not fit {name} ({first}); choose a size the model accepts "
                   f"(a multiple of its patch size for ViTs), or leave it out.")


def extract(
    images: Union[str, Path, ImageSet],
    backbones: Union[str, Sequence[str]],
    cache: Union[str, Path, None] = None,
    *,
    weights: Union[None, str, Path, Sequence] = None,
    transform: Union[None, str, Sequence] = None,
    random_init: bool = False,
    seed: int = 0,
    pools: Optional[Sequence[str]] = None,
    image_size: Optional[int] = None,
    batch_size: Union[int, str] = 32,
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
    trust_remote_code: bool = False,
) -> list:
    """Extract every layer of each backbone over `images` into the cache; returns one FeatureGroup per backbone.

    `transform` names the torchvision preprocessing preset (a weights entry such as IMAGENET1K_V1, or
    "imagenet") for a `weights` file torchvision's own entries do not match. `trust_remote_code` lets an
    hf: backbone run the code in its repo (InternViT-6B). `batch_size="auto"` takes the largest power of two
    up to 256 whose forward fits on a CUDA device (32 elsewhere).
    """
    from sa.cache import open_root

    say = log or (lambda msg: None)
    check_options(batch_size, num_workers, image_size, block_rows, n_workers)
    names = _as_list(backbones)
    if not names:
        raise SAError("no --backbone given; name at least one (see `sa backbones`).")
    per_weights = _per_backbone(weights, len(names), "--weights")
    per_transform = _per_backbone(transform, len(names), "--transform")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if batch_size == AUTO and dev.type != "cuda":
        batch_size = CPU_AUTO_BATCH
    imageset = images if isinstance(images, ImageSet) else ImageSet.from_path(images)
    root = open_root(cache)
    isid = imageset.digest()
    groups = []
    for name, w, tf in zip(names, per_weights, per_transform):
        load = dict(weights=w, random_init=random_init, seed=seed, image_size=image_size, dtype=dt, transform=tf,
                    trust_remote_code=trust_remote_code)
        done = None if batch_size == AUTO else _complete_group(root, isid, load_backbone(name, device="meta", **load),
                                                               pools, dt, batch_size, name)
        if done is not None:  # known from a weightless build: no giant model loaded just to skip it
            say(f"{name}: already complete in {root.url} as {done.key}; nothing to do.")
            groups.append(done)
            continue
        groups.append(_extract_one(root, isid, imageset, name, load, pools, batch_size, dev, dt, skip_bad, num_workers,
                                   scheduler, n_workers, wait, progress, block_rows, seed, say))
    return groups


def _extract_one(root: Any, isid: str, imageset: ImageSet, name: str, load: dict, pools: Optional[Sequence[str]],
                 batch_size: int, dev: torch.device, dt: str, skip_bad: bool, num_workers: Optional[int],
                 scheduler: Optional[str], n_workers: Optional[int], wait: bool, progress: bool,
                 block_rows: Optional[int], seed: int, say: Callable[[str], None]) -> Any:
    """Load one backbone, create (or resume) its group and write every block; widen arrays float16 cannot hold."""
    from sa.cache.manifest import Float16Overflow

    bb = load_backbone(name, device=str(dev), **load)
    chosen = choose_pools(pools, bb.plan.pools, name)
    if batch_size == AUTO:
        batch_size = fit_batch_size(cuda_forward_fits(bb, chosen, dev))
        say(f"{name}: --batch-size auto chose {batch_size} on {dev} (part of the key: pass it as a number to share "
            f"keys with other GPUs).")
    spec = key_spec(bb, chosen, dt, batch_size)
    bkey = backbone_key(bb.spec.key_name, spec)
    key = f"{isid}/{bkey}"
    try:
        widths = probe_widths(bb, chosen, dev)
    except (RuntimeError, ValueError, AssertionError) as exc:
        if load["image_size"] is None:
            raise
        raise _size_error(exc, load["image_size"], bb.spec.generic) from None
    manifest = build_manifest(bb, spec, imageset, chosen, dt, dev, widths, seed, batch_size)
    rows = block_rows or aligned_block_rows(batch_size)
    job = BlockJob(imageset, chosen, batch_size, dev, skip_bad, default_num_workers() if num_workers is None else num_workers, dt)
    wide: dict[str, str] = {}
    first = True
    while True:
        writer = open_group_writer(root, isid, bkey, imageset.ids, widths, manifest, rows, wait, say, wide)
        if writer is None:
            say(f"{name}: {key} was completed by the other writer; reusing it.")
            return root.open(key)
        try:
            pending = writer.pending_blocks()
            if first:  # blocks an earlier run finished: recover which of their images were unreadable
                first = False
                done_rows = [r for b in sorted(writer.done_blocks()) for r in range(*writer.block_rows_slice(b).indices(writer.n_rows))]
                job.skipped.extend(find_bad_images(imageset, done_rows) if (skip_bad and done_rows) else [])
                if done_rows:
                    say(f"{name}: resuming {key} at {len(pending)} of {writer.n_blocks} blocks left.")
            with writer.writing():
                if scheduler or n_workers:
                    from sa.extract.distributed import run_distributed

                    skipped = run_distributed(writer, root.url, name, pending, job, spec, load, scheduler, n_workers,
                                              progress, run_shard)
                else:
                    skipped = _run_local(bb, writer, pending, job, name, progress)
                group = writer.finalize({"skipped": sorted(set(job.skipped) | set(skipped))})
        except Float16Overflow as exc:
            if set(exc.wide) <= set(wide):  # cannot happen unless the store ignored `wide`: never loop on it
                raise SAError(f"{exc} (it was already stored as float32; remove the group with `sa cache rm {key}` "
                              f"and extract again).") from None
            wide.update(exc.wide)
            say(f"{name}: {', '.join(sorted(exc.wide))} hold values beyond float16's range; storing "
                f"{'it' if len(exc.wide) == 1 else 'them'} as float32 (the manifest says why) and going on.")
            continue
        finally:
            writer.close()
        say(f"{name}: wrote {key} ({len(imageset)} images, {len(widths)} arrays"
            + (f", {len(wide)} stored as float32" if wide else "") + ").")
        return group


def _run_local(bb: Backbone, writer: Any, pending: Sequence[int], job: BlockJob, name: str, progress: bool) -> list[str]:
    """The block loop in this process, under a progress bar with images/s and ETA."""
    from sa.progress import make_progress

    total = sum(len(range(*writer.block_rows_slice(b).indices(writer.n_rows))) for b in pending)
    with make_progress("img", disable=not progress) as bar:
        task = bar.add_task(f"extract {name}", total=total)
        return run_blocks(bb, writer, pending, job, on_batch=lambda k: bar.advance(task, k))
