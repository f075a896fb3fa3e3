"""Every supported brain-data layout, written in its real on-disk format, reads back to the same arrays."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from sa.errors import SAError
from sa.brain.channels import OCCIPITAL_PARIETAL
from sa.brain.data import open_dataset

N_TRAIN_CONCEPTS, PER_CONCEPT, N_TEST = 6, 2, 3
CH = list(OCCIPITAL_PARIETAL) + ["Fz", "Cz"]
TIMES = np.round(np.arange(-0.2, 0.8, 0.05), 3)  # 20 points at 20 Hz


def write_images(root):
    """A tiny THINGS image folder: sorted concept folders, sorted files (bytes need not be real images)."""
    for c in range(N_TRAIN_CONCEPTS):
        d = root / "training_images" / f"{c + 1:05d}_train{c}"
        d.mkdir(parents=True)
        for k in range(PER_CONCEPT):
            (d / f"train{c}_{k + 1:02d}b.jpg").write_bytes(b"x")
    for c in range(N_TEST):
        d = root / "test_images" / f"{c + 1:05d}_test{c}"
        d.mkdir(parents=True)
        (d / f"test{c}_01s.jpg").write_bytes(b"x")
    return root


def arrays(seed=0, reps=(2, 4)):
    rng = np.random.default_rng(seed)
    tr = rng.normal(size=(N_TRAIN_CONCEPTS * PER_CONCEPT, reps[0], len(CH), len(TIMES))).astype(np.float32)
    te = rng.normal(size=(N_TEST, reps[1], len(CH), len(TIMES))).astype(np.float32)
    return tr, te


def expected_ids(split):
    if split == "train":
        return [f"training_images/{c + 1:05d}_train{c}/train{c}_{k + 1:02d}b.jpg" for c in range(N_TRAIN_CONCEPTS) for k in range(PER_CONCEPT)]
    return [f"test_images/{c + 1:05d}_test{c}/test{c}_01s.jpg" for c in range(N_TEST)]


def raw_equal(ds, subject, tr, te, atol=0.0):
    raw = ds.raw(subject)
    for split, ref in (("train", tr), ("test", te)):
        s = getattr(raw, split)
        got = s.read_block(0, s.n_images, list(range(s.n_channels)), slice(None))
        np.testing.assert_allclose(got, ref, atol=atol)
    return raw


@pytest.fixture()
def images(tmp_path):
    return write_images(tmp_path / "images")


def test_official_npy_dicts(tmp_path, images):
    tr, te = arrays()
    for s in (1, 2):
        d = tmp_path / "eeg" / f"sub-{s:02d}"
        d.mkdir(parents=True)
        np.save(d / "preprocessed_eeg_training.npy", {"preprocessed_eeg_data": tr, "ch_names": CH, "times": TIMES})
        np.save(d / "preprocessed_eeg_test.npy", {"preprocessed_eeg_data": te, "ch_names": CH, "times": TIMES})
    ds = open_dataset(tmp_path)
    assert ds.layout == "things-eeg2" and ds.subjects == ["sub-01", "sub-02"] and ds.image_root == images
    raw = raw_equal(ds, "2", tr, te)
    assert raw.ch_names == CH and raw.sfreq == 20.0
    assert raw.train.image_ids.tolist() == expected_ids("train") and raw.test.image_ids.tolist() == expected_ids("test")
    assert raw.train.concepts[0] == "train0"
    report = ds.check()
    assert report.ok, report.problems


def test_nice_atm_pickle_5d_meg_key(tmp_path, images):
    tr, te = arrays()
    d = tmp_path / "sub-01"
    d.mkdir()
    tr5 = tr.reshape(N_TRAIN_CONCEPTS, PER_CONCEPT, *tr.shape[1:])
    with open(d / "preprocessed_meg_training.pkl", "wb") as fh:
        pickle.dump({"meg_data": tr5, "ch_names": CH, "times": TIMES}, fh)
    with open(d / "preprocessed_meg_test.pkl", "wb") as fh:
        pickle.dump({"meg_data": te[:, None], "ch_names": CH, "times": TIMES}, fh, protocol=3)
    ds = open_dataset(tmp_path, image_root=images)
    assert ds.layout == "things-pickle"
    raw_equal(ds, "sub-01", tr, te)


def test_ubp_torch_float16_with_img(tmp_path):
    torch = pytest.importorskip("torch")
    tr, te = arrays()
    d = tmp_path / "sub-03"
    d.mkdir()
    for name, x, split in (("train.pt", tr, "train"), ("test.pt", te, "test")):
        ids = ["/data/things/" + i.replace("training_images", "train_images") for i in expected_ids(split)]
        torch.save({"eeg": torch.from_numpy(x).half(), "img": ids, "label": torch.arange(len(x)), "text": ["t"] * len(x),
                    "session": torch.zeros(len(x)), "ch_names": CH, "times": torch.from_numpy(TIMES)}, d / name)
    ds = open_dataset(tmp_path)  # no image folder: ids come from `img`
    assert ds.layout == "ubp" and ds.image_root is None
    raw = raw_equal(ds, 3, tr.astype(np.float16), te.astype(np.float16))
    assert raw.train.image_ids.tolist()[0] == "train_images/00001_train0/train0_01b.jpg"
    assert raw.test.image_ids.tolist() == expected_ids("test")


def test_neurobridge_npy_info(tmp_path, images):
    tr, te = arrays()
    d = tmp_path / "sub-01"
    d.mkdir()
    np.save(d / "train.npy", tr.reshape(N_TRAIN_CONCEPTS, PER_CONCEPT, *tr.shape[1:]).astype(np.float16))
    np.save(d / "test.npy", te[:, None].astype(np.float16))
    (tmp_path / "info.json").write_text(json.dumps({"ch_names": CH, "sfreq": 20.0, "tmin": -0.2}))
    ds = open_dataset(tmp_path)
    assert ds.layout == "neurobridge"
    raw = raw_equal(ds, "sub-01", tr.astype(np.float16), te.astype(np.float16))
    np.testing.assert_allclose(raw.times, TIMES, atol=1e-9)


def test_things_meg_fif_drops_catch_trials(tmp_path):
    mne = pytest.importorskip("mne")
    rng = np.random.default_rng(1)
    # THINGS image numbers 1..12: concepts 1..6 with 2 images each; image 11 (concept 6) is the test image.
    (tmp_path / "image_concept_index.csv").write_text("\n".join(str(c) for c in np.repeat(np.arange(1, 7), 2)) + "\n")
    (tmp_path / "image_paths.csv").write_text("\n".join(f"images/c{c}/c{c}_{k}.jpg" for c in range(1, 7) for k in (1, 2)) + "\n")
    codes = [1, 2, 999999, 3, 4, 5, 11, 6, 7, 8, 11, 999999, 9, 10, 11, 12]
    info = mne.create_info(["MLO11", "MLO12", "MRO11"], 100.0, "mag")
    data = rng.normal(size=(len(codes), 3, 30)) * 1e-12
    events = np.column_stack([np.arange(len(codes)) * 200, np.zeros(len(codes), int), codes])
    epochs = mne.EpochsArray(data, info, events=events, tmin=-0.1, event_id={str(c): c for c in sorted(set(codes))}, verbose="error")
    out = tmp_path / "derivatives" / "preprocessed"
    out.mkdir(parents=True)
    epochs.save(out / "preprocessed_P1-epo.fif", verbose="error")
    ds = open_dataset(tmp_path)
    assert ds.layout == "things-meg-fif" and ds.subjects == ["P1"]
    raw = ds.raw("1")
    assert raw.train.shape == (10, 1, 3, 30)  # catch trials dropped; image 12 shares the test concept 6: removed
    assert raw.test.shape == (1, 3, 3, 30)
    assert raw.test.image_ids.tolist() == ["c6/c6_1.jpg"]  # relative to the folder holding the concept folders
    got = raw.test.read_block(0, 1, [0, 1, 2], slice(None))
    np.testing.assert_allclose(got[0], data[[6, 10, 14]].astype(np.float32), rtol=1e-6)
    first = raw.train.read_block(0, 2, [1], slice(0, 5))
    np.testing.assert_allclose(first[:, 0], data[[0, 1]][:, [1], :5].astype(np.float32), rtol=1e-6)


def test_own_data_npy_csv_split_column(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 4, 8)).astype(np.float32)
    ids = [f"stim/a{i % 3}/img{i % 3}.png" for i in range(6)] + [f"stim/b{i % 2}/img{i % 2}.png" for i in range(4)]
    split = ["train"] * 6 + ["test"] * 4
    np.save(tmp_path / "sub-01.npy", x)
    (tmp_path / "sub-01.csv").write_text("image,split\n" + "\n".join(f"{i},{s}" for i, s in zip(ids, split)) + "\n")
    (tmp_path / "info.json").write_text(json.dumps({"ch_names": list("ABCD"), "sfreq": 8, "tmin": 0}))
    ds = open_dataset(tmp_path)
    assert ds.layout == "array" and ds.subjects == ["sub-01"]
    raw = ds.raw("sub-01")
    assert raw.train.shape == (3, 2, 4, 8) and raw.test.shape == (2, 2, 4, 8)
    assert raw.train.image_ids.tolist() == ["stim/a0/img0.png", "stim/a1/img1.png", "stim/a2/img2.png"]
    got = raw.train.read_block(0, 3, [0, 1, 2, 3], slice(None))
    np.testing.assert_array_equal(got[1], x[[1, 4]])
    assert raw.test.concepts.tolist() == ["b0", "b1"]


def test_own_data_h5_train_test_tsv(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(3)
    d = tmp_path / "sub-07"
    d.mkdir()
    for split, n in (("train", 5), ("test", 2)):
        x = rng.normal(size=(n, 3, 2, 6)).astype(np.float32)
        with h5py.File(d / f"{split}.h5", "w") as h:
            h["data"] = x
            h["ch_names"] = np.array([b"O1", b"O2"])
            h["times"] = np.linspace(0, 0.5, 6)
        (d / f"{split}.tsv").write_text("image\tconcept\n" + "\n".join(f"{split}/{k}.jpg\tc{split}{k}" for k in range(n)) + "\n")
    ds = open_dataset(tmp_path)
    assert ds.layout == "array"
    raw = ds.raw("7")
    assert raw.ch_names == ["O1", "O2"] and raw.train.shape == (5, 3, 2, 6)
    with h5py.File(d / "test.h5") as h:
        np.testing.assert_array_equal(raw.test.read_block(0, 2, [1], slice(1, 3)), h["data"][:, :, [1], 1:3])


def test_mne_epochs_object(tmp_path):
    mne = pytest.importorskip("mne")
    pd = pytest.importorskip("pandas")  # mne keeps epoch metadata as a DataFrame

    rng = np.random.default_rng(4)
    data = rng.normal(size=(6, 2, 10))
    md = pd.DataFrame({"image": ["a/1.jpg", "a/1.jpg", "b/2.jpg", "c/3.jpg", "c/3.jpg", "d/4.jpg"],
                       "split": ["test", "test", "train", "test", "test", "train"]})
    epochs = mne.EpochsArray(data, mne.create_info(["O1", "O2"], 10.0, "eeg"), metadata=md, verbose="error")
    ds = open_dataset(epochs)
    assert ds.layout == "mne-epochs"
    raw = ds.raw("sub-01")
    assert raw.test.image_ids.tolist() == ["a/1.jpg", "c/3.jpg"] and raw.test.n_reps == 2
    np.testing.assert_allclose(raw.test.read_block(0, 2, [0, 1], slice(None)), data[[0, 1, 3, 4]].reshape(2, 2, 2, 10), rtol=1e-6)


def test_unknown_folder_and_missing_test_file(tmp_path):
    with pytest.raises(SAError, match="no known brain-data layout"):
        open_dataset(tmp_path)
    d = tmp_path / "sub-01"
    d.mkdir()
    np.save(d / "preprocessed_eeg_training.npy", {"preprocessed_eeg_data": arrays()[0], "ch_names": CH, "times": TIMES})
    ds = open_dataset(tmp_path)
    assert any("no test file" in p for p in ds.check().problems)
    with pytest.raises(SAError, match="no test file"):
        ds.load("sub-01")
    with pytest.raises(SAError, match="it has: sub-01"):
        ds.load("sub-05")
