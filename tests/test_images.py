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
