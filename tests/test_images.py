"""Image sets: ids, order, THINGS split folders, list files and the image-set id."""

from __future__ import annotations

import pytest
from PIL import Image

from sa.errors import SAError
from sa.extract.images import ImageSet


def _img(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, 0, 0)).save(path)


def test_folder_is_recursive_sorted_and_skips_hidden_and_non_images(tmp_path):
    for rel in ["b/2.jpg", "a/10.png", "a/9.JPG", ".hidden/x.jpg", "a/.x.jpg"]:
        _img(tmp_path / rel)
    (tmp_path / "notes.txt").write_text("x")
    s = ImageSet.from_path(tmp_path)
    assert s.ids == ("a/10.png", "a/9.JPG", "b/2.jpg")
    assert s.paths[0] == tmp_path.resolve() / "a/10.png" and s.layout == "folder"


def test_things_split_folder_keeps_its_prefix(tmp_path):
    _img(tmp_path / "training_images/00001_aardvark/aardvark_01b.jpg")
    _img(tmp_path / "training_images/00001_aardvark/aardvark_02s.jpg")
    _img(tmp_path / "test_images/00001_aircraft_carrier/aircraft_carrier_06s.jpg")
    whole = ImageSet.from_path(tmp_path)
    assert whole.layout == "things" and whole.ids[0].startswith("test_images/")
    train = ImageSet.from_path(tmp_path / "training_images")
    assert train.root == tmp_path.resolve()
    assert train.ids == ("training_images/00001_aardvark/aardvark_01b.jpg", "training_images/00001_aardvark/aardvark_02s.jpg")


def test_list_file_resolves_relative_paths_and_sorts(tmp_path):
    _img(tmp_path / "x/b.jpg")
    _img(tmp_path / "x/a.jpg")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my images\nx/b.jpg\n{tmp_path / 'x/a.jpg'}\n\n")
    s = ImageSet.from_path(listing)
    assert s.root == tmp_path.resolve() and s.ids == ("x/a.jpg", "x/b.jpg")
    (tmp_path / "bad.txt").write_text("x/missing.jpg\n")
    with pytest.raises(SAError, match="missing.jpg"):
        ImageSet.from_path(tmp_path / "bad.txt")


def test_digest_follows_bytes_and_order(tmp_path):
    _img(tmp_path / "a.png", 1)
    _img(tmp_path / "b.png", 2)
    d1 = ImageSet.from_path(tmp_path).digest()
    assert d1 == ImageSet.from_path(tmp_path).digest() and len(d1) == 16
    _img(tmp_path / "b.png", 3)
    assert ImageSet.from_path(tmp_path).digest() != d1


def test_errors_name_the_path(tmp_path):
    with pytest.raises(SAError, match="does not exist"):
        ImageSet.from_path(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAError, match="no image files"):
        ImageSet.from_path(tmp_path / "empty")


# ---------------------------------------------------------------- pixel depth: 16-bit images are scaled, not clipped


def _png16(path, arr) -> None:
    """A 16-bit PNG written byte by byte from the PNG spec (grey: colour type 0, RGB: 2; big-endian samples)."""
    import struct
    import zlib

    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2 if arr.ndim == 3 else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_greyscale_and_rgb_pngs_decode_to_their_8_bit_values(tmp_path):
    import numpy as np
    from skimage import data

    from sa.extract.runner import decode_image

    camera, astronaut = data.camera(), data.astronaut()
    _png16(tmp_path / "grey16.png", camera.astype(np.uint16) * 257)  # 8-bit v is 16-bit 257 * v
    _png16(tmp_path / "rgb16.png", astronaut.astype(np.uint16) * 257)
    with Image.open(tmp_path / "grey16.png") as im:
        assert im.mode == "I;16"  # Pillow's plain convert("RGB") of this clips 99.99 % of the pixels to 255
    grey = np.asarray(decode_image(tmp_path / "grey16.png"))
    np.testing.assert_array_equal(grey, np.repeat(camera[..., None], 3, axis=2))
    np.testing.assert_array_equal(np.asarray(decode_image(tmp_path / "rgb16.png")), astronaut)


def test_16_bit_png_gives_the_features_of_its_8_bit_twin_and_float_pixels_are_refused(tmp_path):
    import numpy as np
    from skimage import data

    from sa.extract import extract

    small = data.camera()[::8, ::8]
    for folder, save in (("eight", lambda p: Image.fromarray(small).save(p)),
                         ("sixteen", lambda p: _png16(p, small.astype(np.uint16) * 257))):
        (tmp_path / folder).mkdir()
        save(tmp_path / folder / "camera.png")
    kw = dict(random_init=True, image_size=32, dtype="fp32", num_workers=0, progress=False)
    (a,) = extract(tmp_path / "eight", "timm:vit_tiny_patch16_224", tmp_path / "c", **kw)
    (b,) = extract(tmp_path / "sixteen", "timm:vit_tiny_patch16_224", tmp_path / "c", **kw)
    assert a.image_set_id != b.image_set_id
    assert all(np.array_equal(a.read(n), b.read(n)) for n in a.arrays)
    (tmp_path / "float").mkdir()
    Image.fromarray(small.astype(np.float32) / 255).save(tmp_path / "float" / "camera.tif")
    with pytest.raises(SAError, match=r"Cannot read image .*camera\.tif.*floating-point pixels.*--skip-bad"):
        extract(tmp_path / "float", "timm:vit_tiny_patch16_224", tmp_path / "c", **kw)
