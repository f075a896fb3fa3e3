"""Image-set ids and backbone keys are deterministic digests that change exactly when the numbers would."""

from __future__ import annotations

import re

import subprocess
import sys

import pytest

from sa.cache.keys import backbone_key, canonical_json, image_set_id, relative_depth
from sa.errors import SAError

IMAGES = {"a/1.jpg": b"\xff\xd8one", "a/2.jpg": b"\xff\xd8two", "b/3.jpg": b"\xff\xd8three"}
SPEC = {"source": "open_clip:ViT-B-32:openai", "weights_digest": "abc", "transform": "resize224-center-crop",
        "dtype": "float16", "libraries": {"open_clip": "3.3"}}


def test_image_set_id_is_16_hex_and_stable():
    first = image_set_id(list(IMAGES), IMAGES.__getitem__)
    assert first == image_set_id(list(IMAGES), IMAGES.__getitem__)
    assert re.fullmatch(r"[0-9a-f]{16}", first)


def test_image_set_id_changes_with_order_bytes_and_names():
    base = image_set_id(list(IMAGES), IMAGES.__getitem__)
    assert image_set_id(list(IMAGES)[::-1], IMAGES.__getitem__) != base
    changed = dict(IMAGES, **{"a/2.jpg": b"\xff\xd8TWO"})
    assert image_set_id(list(changed), changed.__getitem__) != base
    renamed = {k.replace("b/", "c/"): v for k, v in IMAGES.items()}
    assert image_set_id(list(renamed), renamed.__getitem__) != base


def test_backbone_key_format_and_order_independence():
    key = backbone_key("CLIP ViT-B/32", SPEC)
    name, digest = key.rsplit("-", 1)
    assert name == "clip-vit-b-32" and len(digest) == 10
    assert backbone_key("CLIP ViT-B/32", dict(reversed(list(SPEC.items())))) == key


@pytest.mark.parametrize("field,value", [("weights_digest", "abd"), ("transform", "resize256"), ("dtype", "float32")])
def test_backbone_key_changes_with_weights_transform_dtype(field, value):
    assert backbone_key("clip", dict(SPEC, **{field: value})) != backbone_key("clip", SPEC)


def test_keys_are_the_same_in_another_process():
    code = (
        "from sa.cache.keys import backbone_key, image_set_id\n"
        f"imgs = {IMAGES!r}\n"
        f"print(image_set_id(list(imgs), imgs.__getitem__), backbone_key('clip', {SPEC!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [image_set_id(list(IMAGES), IMAGES.__getitem__), backbone_key("clip", SPEC)]


def test_canonical_json_rejects_unhashable_and_bad_names():
    with pytest.raises(TypeError):
        canonical_json({"x": object()})
    with pytest.raises(SAError):
        backbone_key("///", SPEC)


def test_relative_depth():
    assert relative_depth(1, 12) == 0.0
    assert relative_depth(12, 12) == 1.0
    assert relative_depth(4, 7) == pytest.approx(0.5)
    assert relative_depth(1, 1) == 0.0
