"""THINGS-MEG as the field writes it: the OpenNeuro .fif epochs (split parts, THINGS metadata where the THINGS
download puts it) and the ATM, UBP and NeuroBridge files made from them, each read back to what that peer's
code gives. The oracle for the .fif itself is the peers' own selection of train and test epochs from it."""

from __future__ import annotations

import os
import pickle
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

import support_peers as peers
from sa.errors import SAError
from sa.brain.data import open_dataset

mne = pytest.importorskip("mne")
runner = CliRunner()


def stored(raw, split: str) -> np.ndarray:
    s = getattr(raw, split)
    return s.read_block(0, s.n_images, list(range(s.n_channels)), slice(None))


@pytest.fixture(scope="module")
def meg(tmp_path_factory):
    """UBP's folders (preprocess/process_meg.py:21-39): data/things-meg/ds004212-download/derivatives/preprocessed
    beside data/things/THINGS/Metadata; the participant's epochs saved in split parts."""
    base = tmp_path_factory.mktemp("meg") / "data"
    m = peers.make_things_meg()
    fif = peers.write_things_meg_fif(base / "things-meg" / "ds004212-download" / "derivatives" / "preprocessed", m)
    peers.write_things_meta(base / "things" / "THINGS", m)
    training, test = peers.peer_meg_split(fif, m)
    return base, m, fif, training, test


def test_fif_split_parts_and_things_metadata(meg):
    base, m, fif, training, test = meg
    parts = sorted(p.name for p in fif.parent.glob("preprocessed_P1-epo-*.fif"))
    assert parts, "the fixture must hold split parts"
    ds = open_dataset(base / "things-meg" / "ds004212-download")
    assert ds.layout == "things-meg-fif" and ds.subjects == ["P1"] and ds.image_root is None
    raw = ds.raw("P1")
    assert raw.ch_names == training.ch_names and raw.sfreq == 200.0 and len(raw.times) == 281
    # train: the peers' epochs in image-number order, one repetition each
    train_nrs = training.events[:, 2]
    assert raw.train.shape == (len(train_nrs), 1, len(peers.MEG_CH), 281)
    assert raw.train.image_ids.tolist() == [m.image_path(n)[len("images/"):] for n in train_nrs]
    subj = ds.load("P1", window=(0.0, 1.0), zscore=False, val_fraction=0.0)
    np.testing.assert_array_equal(subj.times, training.times)
    np.testing.assert_allclose(subj.train.x, training.get_data().astype(np.float32), rtol=1e-6)
    # test: each test image's repetitions averaged, compared with the peers' test epochs grouped by code
    codes = test.events[:, 2]
    want = np.stack([test.get_data()[codes == n].mean(axis=0) for n in m.test_nrs])
    np.testing.assert_allclose(subj.test.x, want.astype(np.float32), rtol=1e-5, atol=1e-6)
    assert subj.test.image_ids.tolist() == [m.image_path(n)[len("images/"):] for n in m.test_nrs]
    assert not set(subj.train.concepts) & set(subj.test.concepts)

    from sa.cli import app

    res = runner.invoke(app, ["data", "check", str(base / "things-meg" / "ds004212-download")])
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "layout: things-meg-fif" in text and "200 Hz, -0.100..1.300 s" in text and "dropped 3 catch trials" in text


def test_fif_ids_from_the_peers_image_folder(meg):
    """With UBP's Image_set/ beside the data (process_meg.py:38-39), each row's id is the path UBP stores."""
    base, m, fif, training, test = meg
    root = base / "things-meg" / "Image_set"
    train_ids, test_ids = peers.write_meg_images(root, m, training.events[:, 2], m.test_nrs)
    try:
        ds = open_dataset(base / "things-meg" / "ds004212-download")
        assert ds.image_root == root
        raw = ds.raw("P1")
        assert raw.train.image_ids.tolist() == train_ids and raw.test.image_ids.tolist() == test_ids
        assert ds.check(scan=False).ok
    finally:
        import shutil

        shutil.rmtree(root)


def test_fif_metadata_elsewhere_needs_meta(tmp_path):
    # The search looks 4 folders up: nest the data so that every folder it reaches is this test's own (other
    # tests' THINGS metadata under pytest's shared temp root would otherwise be found).
    lab = tmp_path / "lab" / "projects" / "things" / "raw"
    m = peers.make_things_meg(1)
    fif = peers.write_things_meg_fif(lab / "meg", m, split_size="2GB")
    meta = peers.write_things_meta(tmp_path / "downloads" / "2023" / "things" / "THINGS-metadata", m)
    from sa.cli import app

    res = runner.invoke(app, ["data", "check", str(lab / "meg")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    text = " ".join(res.output.split())
    assert "no image_concept_index.csv found" in text and "pass --meta" in text
    res = runner.invoke(app, ["data", "check", str(lab / "meg"), "--meta", str(meta)])
    assert res.exit_code == 0, res.output
    ds = open_dataset(fif, meta=meta)
    assert ds.raw(1).test.image_ids.tolist() == [m.image_path(n)[len("images/"):] for n in m.test_nrs]
    with pytest.raises(SAError, match="--meta .* is not a folder"):
        open_dataset(fif, meta=tmp_path / "nowhere").raw(1)


# ---------------------------------------------------------------- ATM: pickles, images one folder deeper


def test_atm_meg_pickles(meg, tmp_path):
    """ATM pre_possess.ipynb cells 27 and 36 (write) and 39-40 (read back with pickle.load)."""
    base, m, fif, training, test = meg
    ws = tmp_path / "Workspace"
    subject = ws / "THINGS_MEG" / "ds004212" / "derivatives" / "preprocessed_npy" / "sub-01"
    peers.write_atm_meg(subject, training, test, m)
    images = ws / "THINGS" / "osfstorage" / "THINGS" / "images_set"
    train_ids, test_ids = peers.write_meg_images(images, m, training.events[:, 2], m.test_nrs, wrapper="images")
    assert train_ids[0].startswith("training_images/images/00001_aardvark/")

    ds = open_dataset(subject.parent, image_root=images)
    assert ds.layout == "things-pickle" and ds.subjects == ["sub-01"]
    raw = ds.raw(1)
    for split, name in (("train", "training"), ("test", "zs_test")):
        with open(subject / f"preprocessed_meg_{name}.pkl", "rb") as fh:
            data = pickle.load(fh)  # cell 39
        x = data["meg_data"]
        np.testing.assert_array_equal(stored(raw, split), x.reshape(-1, *x.shape[2:]))
        assert raw.ch_names == data["ch_names"]
        np.testing.assert_array_equal(raw.times, data["times"])
    # rows follow the image numbers the notebook sorted by: the copied image of each epoch
    assert raw.train.image_ids.tolist() == train_ids and raw.test.image_ids.tolist() == test_ids
    assert raw.sfreq == 200.0 and raw.times[0] == 0.0 and raw.times[-1] == 1.0


# ---------------------------------------------------------------- UBP: torch.save, 201 samples at 200 Hz, no times


def test_ubp_meg_pt(meg, tmp_path):
    """UBP preprocess/process_meg.py:127-207 (write), base/data_meg.py:136-146 (torch.load, eeg.mean(1), img)."""
    torch = pytest.importorskip("torch")
    base, m, fif, training, test = meg
    root = tmp_path / "data" / "things-meg"
    train_ids, test_ids = peers.write_meg_images(root / "Image_set", m, training.events[:, 2], m.test_nrs)
    peers.write_ubp_meg(root / "Preprocessed_data" / "sub-01", training, test, m, train_ids, test_ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = open_dataset(root / "Preprocessed_data")
        raw = ds.raw(1)
    assert ds.layout == "ubp" and ds.image_root == root / "Image_set"
    for split in ("train", "test"):
        loaded = torch.load(root / "Preprocessed_data" / "sub-01" / f"{split}.pt", weights_only=False)
        np.testing.assert_array_equal(stored(raw, split), loaded["eeg"])
        assert getattr(raw, split).image_ids.tolist() == np.array(loaded["img"]).tolist()
    np.testing.assert_allclose(raw.times, np.arange(201) / 200.0)  # crop(tmin=0, tmax=1.0) at 200 Hz
    assert raw.sfreq == 200.0 and any("200 Hz" in n for n in raw.notes)
    subj = ds.load(1, zscore=False, val_fraction=0.0)
    loaded = torch.load(root / "Preprocessed_data" / "sub-01" / "test.pt", weights_only=False)
    np.testing.assert_allclose(subj.test.x, loaded["eeg"].astype(np.float32).mean(axis=1), rtol=1e-3, atol=1e-3)
    assert np.abs(subj.test.x).max() > 0.5 and ds.check().ok  # z-scored MEG survives float16


# ---------------------------------------------------------------- NeuroBridge: 200 samples, old and new containers


@pytest.mark.parametrize("old", [False, True], ids=["since-nov-2025", "before-nov-2025"])
def test_neurobridge_meg(meg, tmp_path, old):
    """NeuroBridge preprocess_meg.py (write) and module/dataset.py (np.load; ids by sorted image folders)."""
    base, m, fif, training, test = meg
    root = tmp_path / "data" / "things_meg"
    peers.write_meg_images(root / "image_set", m, training.events[:, 2], m.test_nrs, train_dir="train_images")
    peers.write_neurobridge_meg(root / "preprocessed_meg", training, test, m, old=old)
    ds = open_dataset(root / "preprocessed_meg")
    assert ds.layout == "neurobridge" and ds.image_root == root / "image_set"
    raw = ds.raw(1)
    for split in ("train", "test"):
        f = root / "preprocessed_meg" / "sub-01" / f"{split}.npy"
        x = np.load(f, allow_pickle=True)["data"] if old else np.load(f)
        np.testing.assert_array_equal(stored(raw, split), x.reshape(-1, *x.shape[2:]))
        folder = root / "image_set" / ("train_images" if split == "train" else "test_images")
        ids = [f"{folder.name}/{c}/{i}" for c in sorted(os.listdir(folder)) for i in sorted(os.listdir(folder / c))]
        assert getattr(raw, split).image_ids.tolist() == ids  # extract_feature.py:45-49
    np.testing.assert_allclose(raw.times, np.linspace(0, 0.995, 200))
    if old:  # 339f7ec preprocess_meg.py:171 stores ch_names = []
        assert raw.ch_names == [f"ch{i + 1:03d}" for i in range(len(peers.MEG_CH))]
        assert any("empty channel list" in n for n in raw.notes)
    else:
        assert raw.ch_names == training.ch_names
