"""Joining brain-data splits with a feature cache group: the backbone group, layer lists, feature matrices, the gallery.

The sweep, `sa train` and `sa decode` all go through here, so a split's rows are
paired with cache rows by image id the same way everywhere. Features are read
once per (group, array) for the union of the rows a subject needs, then indexed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from sa.errors import SAError

POOLS = ("mean", "cls", "gap")


def array_name(pool: str, layer: str) -> str:
    """The cache array of a (pool, layer): 'final' or 'pool/label'."""
    return "final" if layer == "final" else f"{pool}/{layer}"


# ---------------------------------------------------------------- the group


def resolve_group(root: Any, backbone: str, image_ids: Sequence[str] | None = None) -> Any:
    """The complete cache group for a key / unique prefix / backbone name or alias, preferring one that holds `image_ids`.

    A name that fits several groups (the same backbone over several image sets)
    is settled by the image ids the brain data needs.
    """
    try:
        key = root.resolve(backbone)
    except SAError as exc:
        candidates = _candidates(root, backbone)
        if not candidates:
            raise exc
        covering = [k for k in candidates if image_ids is None or _covers(root, k, image_ids)]
        if len(covering) != 1:
            held = "" if image_ids is None else f", {len(covering)} of them complete and holding the dataset's images"
            raise SAError(f"backbone {backbone!r} matches {len(candidates)} cache groups under {root.url}{held} "
                          f"({', '.join(candidates[:4])}); give the full '<image-set id>/<backbone key>'.") from None
        key = covering[0]
    status = root.status(key)
    if status != "complete":
        raise SAError(f"cache group {key} under {root.url} is {status}; finish it with `sa extract` (it resumes) "
                      "before training on it.")
    group = root.open(key)
    if image_ids is not None:
        group.rows_for_ids(list(dict.fromkeys(str(i) for i in image_ids)))  # SAError naming missing ids
    return group


def _candidates(root: Any, backbone: str) -> list[str]:
    """Full keys whose backbone key starts with `backbone`, or whose backbone was named `backbone` (alias or library:arch)."""
    wanted = backbone.strip().strip("/").lower()
    flat = re.sub(r"[^a-z0-9_.-]+", "-", wanted)
    out = []
    for info in root.list():
        bkey = info.backbone_key.lower()
        if info.key.lower().startswith(wanted) or bkey.startswith(wanted) or bkey.startswith(flat + "-") \
                or str(info.backbone).lower() == wanted:
            out.append(info.key)
    return out


def _covers(root: Any, key: str, image_ids: Sequence[str]) -> bool:
    """True when group `key` is complete and has a row for every id."""
    if root.status(key) != "complete":
        return False
    try:
        root.open(key).rows_for_ids(list(dict.fromkeys(str(i) for i in image_ids)))
    except SAError:
        return False
    return True


def resolve_pool(group: Any, pool: str) -> str:
    """'auto' -> mean (token models) or gap (CNNs) or cls; otherwise check the group has that pool."""
    have = [p for p in POOLS if group.layers(p)]
    if pool == "auto":
        if not have:
            raise SAError(f"cache group {group.key} has no pooled layers (only {', '.join(group.arrays)}); "
                          "use --layers final.")
        return have[0]
    if pool not in have:
        raise SAError(f"cache group {group.key} has no {pool!r} pooling; it has {', '.join(have) or 'none'} "
                      "(pass --pool with one of those, or extract with that pool).")
    return pool


def expand_layers(spec: str | Sequence[str], group: Any, pool: str, *, with_final: bool = True) -> list[str]:
    """Layer labels for 'all' | 'final' | '1,4,8' | 'every:4' (plus 'final' when the group has it and with_final)."""
    labels = group.layers(pool)
    by_int = {int(lbl): lbl for lbl in labels}
    has_final = "final" in group.arrays
    text = spec if isinstance(spec, str) else ",".join(str(s) for s in spec)
    text = text.strip().lower()
    out: list[str]
    if text == "all":
        out = list(labels)
    elif text == "final":
        out = []
        with_final = True
    elif m := re.fullmatch(r"every:(\d+)", text):
        step = int(m.group(1))
        if step < 1:
            raise SAError("--layers every:N needs N >= 1, e.g. every:4.")
        out = [by_int[i] for i in range(step, max(by_int) + 1, step) if i in by_int]
    else:
        out = []
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if part == "final":
                with_final = True
                continue
            if not part.isdigit() or int(part) not in by_int:
                raise SAError(f"--layers names {part!r}, but cache group {group.key} has {pool} layers "
                              f"{labels[0]}..{labels[-1]}; use all, final, a list like 1,4,8 or every:N.")
            out.append(by_int[int(part)])
        out = list(dict.fromkeys(out))
    if with_final:
        if not has_final and text == "final":
            raise SAError(f"cache group {group.key} has no 'final' array; pick intermediate layers with --layers.")
        if has_final:
            out.append("final")
    if not out:
        raise SAError(f"--layers {text!r} selects no layer of cache group {group.key}; it has {pool} layers "
                      f"{', '.join(labels)}.")
    return out


def layer_depth(group: Any, layer: str) -> float | None:
    """The manifest's relative depth of a layer label (None for 'final' or when unknown)."""
    if layer == "final":
        return None
    for entry in group.manifest.get("layers") or []:
        if str(entry.get("label")) == layer:
            d = entry.get("depth")
            return None if d is None else float(d)
    return None


# ---------------------------------------------------------------- features per split


class FeatureTable:
    """A cache group's rows for a fixed set of image ids, each array read once and kept as float16."""

    def __init__(self, group: Any, ids: Sequence[str]) -> None:
        self.group = group
        self.ids = list(dict.fromkeys(str(i) for i in ids))
        self._pos = {i: k for k, i in enumerate(self.ids)}
        rows = group.rows_for_ids(self.ids)
        order = np.argsort(rows, kind="stable")
        self._sorted_rows, self._order = rows[order], order
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str) -> np.ndarray:
        """(len(ids), D) float16 rows of array `name` in `ids` order (read on first use)."""
        if name not in self._arrays:
            data = self.group.read(name, self._sorted_rows)
            out = np.empty_like(data)
            out[self._order] = data
            self._arrays[name] = out  # NaN/Inf are kept: feature_health flags the layer, which is then not trained
        return self._arrays[name]

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Positions of ids within this table."""
        try:
            return np.fromiter((self._pos[str(i)] for i in ids), dtype=np.int64, count=len(ids))
        except KeyError as exc:
            raise SAError(f"image {exc.args[0]!r} was not loaded for cache group {self.group.key}; "
                          "build the FeatureTable with every split's ids.") from None

    def features(self, ids: Sequence[str], name: str) -> np.ndarray:
        """float32 features of `name` for each id, in order."""
        return self.array(name)[self.rows(ids)].astype(np.float32)


# A layer is near-constant when its images differ by less than this share of the features' size ...
NEAR_CONSTANT_SPREAD = 1e-3
# ... or when fewer than this share of its images have distinct features (values quantised to a few levels).
MIN_DISTINCT_SHARE = 0.5


def feature_health(a: np.ndarray) -> str:
    """'ok', or the flag of a layer that must never be chosen: non-finite, constant or near-constant features.

    `a` is (n images, D) as stored. Near-constant: the spread between images is
    below NEAR_CONSTANT_SPREAD of the features' RMS, fewer than half of the
    images are distinct, or (float16 storage) the spread lies below float16's
    smallest normal number, where the differences are mostly rounding. A
    random-init backbone, an fp16 underflow or a dead ReLU stage look like this.
    """
    from sa.train.results import FEATURE_FLAGS, STATUS_OK

    non_finite, constant, near_constant = FEATURE_FLAGS[2], FEATURE_FLAGS[0], FEATURE_FLAGS[1]
    x = np.asarray(a)
    if not np.isfinite(x).all():
        return non_finite
    if len(x) < 2:
        return STATUS_OK
    wide = x.astype(np.float64)
    spread = float(np.sqrt(np.mean((wide - wide.mean(axis=0)) ** 2)))
    size = float(np.sqrt(np.mean(wide**2)))
    if spread == 0.0:
        return constant
    if spread < NEAR_CONSTANT_SPREAD * size:
        return near_constant
    if x.dtype == np.float16 and spread < float(np.finfo(np.float16).tiny):
        return near_constant
    if len(x) >= 4 and len(np.unique(x, axis=0)) < MIN_DISTINCT_SHARE * len(x):
        return near_constant
    return STATUS_OK


def layer_health(table: "FeatureTable", pool: str, layers: Sequence[str]) -> dict[str, str]:
    """feature_health of every layer over all the images a subject needs (train, val and test)."""
    return {layer: feature_health(table.array(array_name(pool, layer))) for layer in layers}


def split_features(table: FeatureTable, split: Any, pool: str, layers: Sequence[str]) -> dict[str, np.ndarray]:
    """{layer: (n, D) float32} for every row of a Split."""
    return {layer: table.features(split.image_ids, array_name(pool, layer)) for layer in layers}


# ---------------------------------------------------------------- the gallery


@dataclass
class Gallery:
    """Test gallery: per layer (m, D) features, the gallery's labels, and each test trial's gallery row."""

    feats: dict[str, np.ndarray]
    labels: np.ndarray
    targets: np.ndarray


def concept_of(image_id: str) -> str:
    """An image id's concept: its parent folder without a THINGS number prefix."""
    from sa.brain.things import concepts_of_ids

    return str(concepts_of_ids([image_id])[0])


def stimulus_gallery(table: FeatureTable, split: Any, pool: str, layers: Sequence[str]) -> Gallery:
    """The test stimuli's own features: one gallery row per distinct test image, in first-seen order."""
    labels = np.asarray(list(dict.fromkeys(str(i) for i in split.image_ids)))
    pos = {i: k for k, i in enumerate(labels.tolist())}
    targets = np.asarray([pos[str(i)] for i in split.image_ids], dtype=np.int64)
    feats = {layer: table.features(labels, array_name(pool, layer)) for layer in layers}
    return Gallery(feats, labels, targets)


def concept_gallery(group: Any, split: Any, pool: str, layers: Sequence[str]) -> Gallery:
    """Concept-centre features: per test concept the mean feature of group's images of that concept."""
    test_concepts = np.asarray([str(c) for c in split.concepts])
    labels = np.asarray(list(dict.fromkeys(test_concepts.tolist())))
    gallery_concepts = np.asarray([concept_of(i) for i in group.ids.tolist()])
    skipped = set(group.manifest.get("skipped") or [])
    usable = np.asarray([i not in skipped for i in group.ids.tolist()])
    members = [np.flatnonzero((gallery_concepts == c) & usable) for c in labels]
    missing = [c for c, m in zip(labels, members) if not len(m)]
    if missing:
        raise SAError(f"gallery cache group {group.key} has no image of {len(missing)} test concept(s) "
                      f"(first: {', '.join(missing[:3])}); extract images of every test concept for --gallery-cache.")
    pos = {c: k for k, c in enumerate(labels.tolist())}
    targets = np.asarray([pos[c] for c in test_concepts], dtype=np.int64)
    feats = {}
    for layer in layers:
        data = group.read(array_name(pool, layer)).astype(np.float32)
        feats[layer] = np.stack([data[m].mean(axis=0) for m in members])
    return Gallery(feats, labels, targets)


def check_widths(table_group: Any, other: Any, pool: str, layers: Sequence[str]) -> None:
    """SAError when a gallery group's arrays differ in width from the training group's (another backbone)."""
    if table_group.backbone_key != other.backbone_key:
        raise SAError(f"gallery cache group {other.key} was extracted with backbone {other.backbone_key}, not "
                      f"{table_group.backbone_key}; extract the gallery images with the same backbone.")
    for layer in layers:
        if array_name(pool, layer) not in other.arrays:
            raise SAError(f"gallery cache group {other.key} has no array {array_name(pool, layer)!r}; "
                          "extract it with the same pools.")


def feature_widths(group: Any, pool: str, layers: Sequence[str]) -> Mapping[str, int]:
    """Width of every layer's array, from the manifest (no read)."""
    arrays = group.manifest.get("arrays") or {}
    return {layer: int(arrays[array_name(pool, layer)]["shape"][1]) for layer in layers}
