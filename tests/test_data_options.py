"""Loading options, splits, LOSO folds, bad input and alignment with a cache group."""

from __future__ import annotations

import numpy as np
import pytest

from sa.errors import SAError
from sa.brain.channels import OCCIPITAL_PARIETAL
from sa.brain.data import align, align_features, open_dataset

CH = ["Fz", "Cz"] + list(OCCIPITAL_PARIETAL)
TIMES = np.round(np.arange(-0.2, 0.8, 0.01), 3)  # 100 points at 100 Hz
N_CONCEPTS, PER, N_TEST, REPS, TEST_REPS = 20, 2, 4, 3, 5


def write(root, n_subjects=3, seed=0, test_names=None, bad=None):
    """Official-format subjects with known values, plus their image folder."""
    for c in range(N_CONCEPTS):
        d = root / "images" / "training_images" / f"{c + 1:05d}_con{c}"
        d.mkdir(parents=True)
        for k in range(PER):
            (d / f"con{c}_{k + 1:02d}b.jpg").write_bytes(b"x")
    for c, name in enumerate(test_names or [f"test{c}" for c in range(N_TEST)]):
        d = root / "images" / "test_images" / f"{c + 1:05d}_{name}"
        d.mkdir(parents=True)
        (d / f"{name}_01s.jpg").write_bytes(b"x")
    rng = np.random.default_rng(seed)
    data = {}
    for s in range(1, n_subjects + 1):
        tr = (rng.normal(size=(N_CONCEPTS * PER, REPS, len(CH), len(TIMES))) * 5 + s).astype(np.float32)
        te = rng.normal(size=(N_TEST, TEST_REPS, len(CH), len(TIMES))).astype(np.float32)
        if bad is not None and s == bad[0]:
            tr[bad[1], bad[2], 3, 7] = np.nan
        d = root / "eeg" / f"sub-{s:02d}"
        d.mkdir(parents=True)
        np.save(d / "preprocessed_eeg_training.npy", {"preprocessed_eeg_data": tr, "ch_names": CH, "times": TIMES})
        np.save(d / "preprocessed_eeg_test.npy", {"preprocessed_eeg_data": te, "ch_names": CH, "times": TIMES})
        data[s] = (tr, te)
    return data


@pytest.fixture()
def dataset(tmp_path):
    data = write(tmp_path)
    return open_dataset(tmp_path / "eeg"), data


def test_channels_window_average(dataset):
    ds, data = dataset
    subj = ds.load(1, channels="occipital-parietal", window=(0.0, 0.5), zscore=False, val_fraction=0.0)
    tr, te = data[1]
    assert subj.ch_names == list(OCCIPITAL_PARIETAL) and subj.sfreq == 100.0
    assert subj.times[0] == 0.0 and subj.times[-1] == 0.5 and subj.train.x.shape == (N_CONCEPTS * PER, 17, 51)
    np.testing.assert_allclose(subj.train.x, tr[:, :, 2:, 20:71].mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(subj.test.x, te[:, :, 2:, 20:71].mean(axis=1), rtol=1e-5)
    named = ds.load(1, channels=["oz", "Fz"], zscore=False, val_fraction=0.0)
    np.testing.assert_allclose(named.train.x[:, 1], tr[:, :, 0].mean(axis=1), rtol=1e-5)
    assert named.ch_names == ["Oz", "Fz"]


def test_single_trials_and_float16_zscore(dataset):
    ds, data = dataset
    single = ds.load(2, average_reps=False, zscore=False, val_fraction=0.0)
    tr = data[2][0]
    assert single.train.x.shape == (N_CONCEPTS * PER * REPS, len(CH), len(TIMES))
    np.testing.assert_array_equal(single.train.x[:REPS], tr[0])
    assert (single.train.image_ids[:REPS] == single.train.image_ids[0]).all() and single.test.x.shape[0] == N_TEST
    z32 = ds.load(2, val_fraction=0.25, seed=1)
    z16 = ds.load(2, val_fraction=0.25, seed=1, dtype="float16")
    assert z16.train.x.dtype == np.float16 and z32.train.x.dtype == np.float32
    np.testing.assert_allclose(z32.train.x.mean(axis=(0, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(z32.train.x.std(axis=(0, 2)), 1, atol=1e-3)
    np.testing.assert_allclose(z16.test.x.astype(np.float32), z32.test.x, atol=5e-3)
    # statistics come from the training rows only: val and test are scaled with them, not with their own
    manual = (tr[np.isin(np.arange(len(tr)), np.flatnonzero(np.isin(ds.raw(2).train.concepts, z32.val.concepts)), invert=True)].mean(axis=1))
    np.testing.assert_allclose(z32.zscore_mean, manual.mean(axis=(0, 2)), rtol=1e-4, atol=1e-4)


def test_validation_split_disjoint_concepts_and_seeded(dataset):
    ds, _ = dataset
    a, b, c = ds.load(1, val_fraction=0.2, seed=0), ds.load(1, val_fraction=0.2, seed=0), ds.load(1, val_fraction=0.2, seed=5)
    assert len(set(a.val.concepts)) == 4 and not set(a.val.concepts) & set(a.train.concepts)
    assert not set(a.val.image_ids) & set(a.train.image_ids)
    assert len(a.train) + len(a.val) == N_CONCEPTS * PER
    np.testing.assert_array_equal(a.val.image_ids, b.val.image_ids)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    assert set(a.val.concepts) != set(c.val.concepts)
    assert a.test.image_ids.tolist()[0] == "test_images/00001_test0/test0_01s.jpg"


def test_loso_folds(dataset):
    ds, data = dataset
    folds = [ds.load_loso(s, zscore=False, val_fraction=0.1, seed=0) for s in ds.loso_folds()]
    assert [f.subject for f in folds] == ["sub-01", "sub-02", "sub-03"] and folds[0].fold == "loso"
    f1 = folds[0]
    n_train_per_subject = (N_CONCEPTS - 2) * PER
    assert f1.train.x.shape[0] == 2 * n_train_per_subject and f1.val.x.shape[0] == 2 * 2 * PER
    # train rows are subjects 2 and 3 (their means are 2 and 3), test rows subject 1's test set
    assert abs(f1.train.x[:n_train_per_subject].mean() - 2) < 0.05 and abs(f1.train.x[n_train_per_subject:].mean() - 3) < 0.05
    np.testing.assert_allclose(f1.test.x, data[1][1].mean(axis=1), rtol=1e-5)
    assert not set(f1.val.concepts) & set(f1.train.concepts)
    assert len({f.subject for f in folds}) == 3  # each subject is the test subject exactly once


def test_bad_input_errors(tmp_path, dataset):
    ds, _ = dataset
    with pytest.raises(SAError, match="not found in subject sub-01; it has: Fz, Cz, P7"):
        ds.load(1, channels="Fz,XYZ")
    with pytest.raises(SAError, match="outside the epoch"):
        ds.load(1, window=(0.5, 1.5))
    with pytest.raises(SAError, match="must be in"):
        ds.load(1, val_fraction=1.5)
    bad_root = tmp_path / "bad"
    write(bad_root, n_subjects=2, bad=(2, 11, 1))
    bad = open_dataset(bad_root / "eeg")
    with pytest.raises(SAError, match=r"subject sub-02: train image row 11 \(repetition 2\) holds NaN"):
        bad.load(2)
    assert any("sub-02: train image row 11" in p for p in bad.check().problems)
    overlap_root = tmp_path / "overlap"
    write(overlap_root, n_subjects=1, test_names=["con3", "x1", "x2", "x3"])
    with pytest.raises(SAError, match="test concept.*also appear in training.*con3"):
        open_dataset(overlap_root / "eeg").load(1)
    noimg = tmp_path / "noimg"
    write(noimg, n_subjects=1)
    import shutil

    shutil.rmtree(noimg / "images")
    with pytest.raises(SAError, match="no image ids.*image_root"):
        open_dataset(noimg / "eeg").load(1)


def test_bad_shape(tmp_path):
    d = tmp_path / "sub-01"
    d.mkdir()
    for name in ("training", "test"):
        np.save(d / f"preprocessed_eeg_{name}.npy", {"preprocessed_eeg_data": np.zeros((4, 5)), "ch_names": ["a"], "times": [0.0]})
    with pytest.raises(SAError, match="has shape \\(4, 5\\)"):
        open_dataset(tmp_path).raw(1)


class FakeGroup:
    """What align() needs of a cache FeatureGroup: ids, manifest, key, read."""

    key = "set/backbone"

    def __init__(self, ids, feats):
        self.ids, self.manifest, self.feats = np.asarray(ids), {"skipped": []}, feats

    def read(self, name, rows=None):
        return self.feats[rows].astype(np.float16)


def test_align(dataset):
    ds, _ = dataset
    subj = ds.load(1, average_reps=False, val_fraction=0.0, zscore=False)
    ids = sorted(set(subj.train.image_ids.tolist()) | set(subj.test.image_ids.tolist()))[::-1]
    feats = np.arange(len(ids) * 2, dtype=np.float32).reshape(-1, 2)
    group = FakeGroup(ids, feats)
    rows = align(subj.train, group)
    assert [ids[r] for r in rows] == subj.train.image_ids.tolist()
    np.testing.assert_array_equal(align_features(subj.test, group, "mean/01"), feats[align(subj.test, group)])
    partial = FakeGroup(ids[3:], feats[3:])
    with pytest.raises(SAError, match=f"3 image\\(s\\) .* not in set/backbone .*{ids[0]}"):
        align(subj.test if ids[0].startswith("test") else subj.train, partial)
