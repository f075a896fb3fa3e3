"""THINGS-EEG2 files written the way each peer's code writes them read back to what that peer's loader gives.

Oracles: the few lines of each peer's own loader, written out below with the file and line they come from.
Compared: the stored arrays (images x reps x channels x times), the image id of every EEG row, channel names,
the time axis, the train/test split, and what `sa data check` prints.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from sa.brain.data import open_dataset
import support_peers as peers

runner = CliRunner()


def stored(raw, split: str) -> np.ndarray:
    """Every stored value of a split, (images, reps, channels, times), as sa reads it."""
    s = getattr(raw, split)
    return s.read_block(0, s.n_images, list(range(s.n_channels)), slice(None))


def check_cli(path, *extra):
    from sa.cli import app

    res = runner.invoke(app, ["data", "check", str(path), *extra])
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "no problems found" in text
    return text


# ---------------------------------------------------------------- official THINGS-EEG2 (gifale95/eeg_encoding)


def eeg_encoding_images(image_set) -> tuple[list[str], list[str]]:
    """eeg_encoding 04_synthesizing_eeg_data/end_to_end_encoding_utils.py:35-41, 53-59: os.walk every .jpg
    under image_set/training_images (test_images), sorted full paths."""
    out = []
    for part in ("training_images", "test_images"):
        found = []
        for root, _dirs, files in os.walk(image_set / part):
            found += [os.path.join(root, f) for f in files if f.endswith(".jpg")]
        found.sort()
        out.append([os.path.relpath(f, image_set).replace(os.sep, "/") for f in found])
    return out[0], out[1]


def eeg_encoding_load(subject_dir, split):
    """eeg_encoding end_to_end_encoding_utils.py:100-106 and 118-124: np.load(allow_pickle=True).item()."""
    name = "preprocessed_eeg_training.npy" if split == "train" else "preprocessed_eeg_test.npy"
    data = np.load(subject_dir / name, allow_pickle=True).item()
    return data["preprocessed_eeg_data"], data["ch_names"], data["times"]


def test_official_osf_download_layout(tmp_path):
    """The OSF download: preprocessed_data/sub-XX/ beside image_set/{training_images,test_images,image_metadata.npy}."""
    root = tmp_path / "things-eeg2"
    image_set = root / "image_set"
    peers.write_images(image_set)
    np.save(image_set / "image_metadata.npy", {"train_img_files": [], "test_img_files": []})
    for s in (1, 2):
        peers.write_official(root / "preprocessed_data" / f"sub-{s:02d}", *peers.eeg(s, len(peers.OFFICIAL_CH), 100))
    raw_bytes = (root / "preprocessed_data" / "sub-01" / "preprocessed_eeg_test.npy").read_bytes()
    assert b"numpy.core.multiarray" in raw_bytes and b"numpy._core" not in raw_bytes  # as numpy 1.19 wrote it

    train_ids, test_ids = eeg_encoding_images(image_set)
    for path in (root, root / "preprocessed_data"):
        ds = open_dataset(path)
        assert ds.layout == "things-eeg2" and ds.subjects == ["sub-01", "sub-02"] and ds.image_root == image_set
    for s in ("sub-01", "sub-02"):
        raw = ds.raw(s)
        for split, ids in (("train", train_ids), ("test", test_ids)):
            x, ch, times = eeg_encoding_load(root / "preprocessed_data" / s, split)
            np.testing.assert_array_equal(stored(raw, split), x)
            assert getattr(raw, split).image_ids.tolist() == ids
            assert raw.ch_names == ch and np.array_equal(raw.times, times)
        assert raw.sfreq == 100.0 and not raw.notes
    subj = ds.load("sub-02", zscore=False, val_fraction=0.0)
    x, _, _ = eeg_encoding_load(root / "preprocessed_data" / "sub-02", "test")
    np.testing.assert_allclose(subj.test.x, x.mean(axis=1), rtol=1e-6, atol=1e-6)  # eeg_encoding averages repetitions
    assert subj.test.image_ids.tolist() == test_ids and subj.train.image_ids.tolist() == train_ids
    text = check_cli(root)
    assert "layout: things-eeg2" in text and f"train ({peers.N_TRAIN}, 4, 4, 100)" in text and "subjects (2)" in text


def test_eeg_encoding_project_layout(tmp_path):
    """eeg_encoding's project folder: eeg_dataset/preprocessed_data/sub-XX beside image_set/ (its README)."""
    project = tmp_path / "project"
    peers.write_images(project / "image_set")
    peers.write_official(project / "eeg_dataset" / "preprocessed_data" / "sub-01", *peers.eeg(3, 4, 100))
    for path in (project, project / "eeg_dataset", project / "eeg_dataset" / "preprocessed_data"):
        ds = open_dataset(path)
        assert ds.layout == "things-eeg2" and ds.subjects == ["sub-01"] and ds.image_root == project / "image_set"
    train_ids, _ = eeg_encoding_images(project / "image_set")
    assert ds.raw(1).train.image_ids.tolist() == train_ids


# ---------------------------------------------------------------- NICE / ATM 63 channels, 250 Hz


def atm_images(directory) -> list[str]:
    """ATM Retrieval/eegdatasets_leaveone.py:112-114, 139-144: sorted folders, then sorted .png/.jpg/.jpeg files."""
    folders = sorted(d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d)))
    images = []
    for folder in folders:
        files = sorted(f for f in os.listdir(os.path.join(directory, folder)) if f.lower().endswith((".png", ".jpg", ".jpeg")))
        images += [f"{os.path.basename(directory)}/{folder}/{f}" for f in files]
    return images


def atm_load(subject_dir, split):
    """ATM eegdatasets_leaveone.py:158-163 (NICE nice_stand.py:194-200 alike): np.load(allow_pickle=True) of the
    plain pickle gives the dict; times[50:]."""
    name = "preprocessed_eeg_training.npy" if split == "train" else "preprocessed_eeg_test.npy"
    data = np.load(subject_dir / name, allow_pickle=True)
    return data["preprocessed_eeg_data"], data["ch_names"], data["times"][50:]


def test_nice_atm_pickles_with_300_times(tmp_path):
    ws = tmp_path / "THINGS"
    peers.write_images(ws / "images_set")  # ATM data_config.json: images_set/ beside Preprocessed_data_250Hz/
    for s in (1, 2):
        peers.write_nice_atm(ws / "Preprocessed_data_250Hz" / f"sub-{s:02d}", *peers.eeg(10 + s, len(peers.EEG_CH), 250))
    head = (ws / "Preprocessed_data_250Hz" / "sub-01" / "preprocessed_eeg_training.npy").read_bytes()[:2]
    assert head == b"\x80\x04"  # a protocol-4 pickle, not an .npy

    ds = open_dataset(ws / "Preprocessed_data_250Hz")
    assert ds.layout == "things-pickle" and ds.image_root == ws / "images_set"
    for s in ds.subjects:
        raw = ds.raw(s)
        for split, folder in (("train", "training_images"), ("test", "test_images")):
            x, ch, times = atm_load(ws / "Preprocessed_data_250Hz" / s, split)
            np.testing.assert_array_equal(stored(raw, split), x)
            assert getattr(raw, split).image_ids.tolist() == atm_images(ws / "images_set" / folder)
            assert raw.ch_names == ch
            np.testing.assert_array_equal(raw.times, times)
        assert raw.times[0] == 0.0 and abs(raw.times[-1] - 0.996) < 1e-9 and raw.sfreq == 250.0
        assert any("last 250 points" in n for n in raw.notes)
    text = check_cli(ws / "Preprocessed_data_250Hz")
    assert "layout: things-pickle" in text and "250 Hz, 0.000..0.996 s" in text
    assert "`times` has 300 points for 250 samples" in text and "uses its last 250 points" in text


# ---------------------------------------------------------------- UBP (torch.save, pickle protocol 5)


def ubp_load(subject_dir, split):
    """UBP base/data_eeg.py:143-154: torch.load(weights_only=False); with averaging, eeg.mean(axis=1), img[:, 0]."""
    import torch

    loaded = torch.load(subject_dir / f"{split}.pt", weights_only=False)
    return loaded["eeg"], loaded["img"][:, 0], loaded["ch_names"], loaded["times"]


def test_ubp_pt_2d_img_no_warning(tmp_path):
    pytest.importorskip("torch")
    data = tmp_path / "data" / "things-eeg"
    train_ids, test_ids = peers.write_images(data / "Image_set_Resize", train_dir="train_images")
    for s in (1, 2):
        peers.write_ubp_eeg(data / "Preprocessed_data_250Hz_whiten" / f"sub-{s:02d}", *peers.eeg(20 + s, 6, 250), train_ids, test_ids)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.load would warn about pickle protocol 5; sa must not
        ds = open_dataset(data / "Preprocessed_data_250Hz_whiten")
        raws = {s: ds.raw(s) for s in ds.subjects}
    assert ds.layout == "ubp" and ds.image_root == data / "Image_set_Resize"
    for s, raw in raws.items():
        for split in ("train", "test"):
            eeg, img0, ch, times = ubp_load(data / "Preprocessed_data_250Hz_whiten" / s, split)
            got = stored(raw, split)
            assert got.dtype == np.float16
            np.testing.assert_array_equal(got, eeg)
            assert getattr(raw, split).image_ids.tolist() == img0.tolist()
            assert raw.ch_names == ch
            np.testing.assert_array_equal(raw.times, times[-250:])  # process_eeg_whiten.py:161 keeps [..., -250:]
    subj = ds.load(2, zscore=False, val_fraction=0.0)
    eeg, img0, _, _ = ubp_load(data / "Preprocessed_data_250Hz_whiten" / "sub-02", "test")
    np.testing.assert_allclose(subj.test.x, eeg.astype(np.float32).mean(axis=1), rtol=1e-3)
    assert subj.test.image_ids.tolist() == img0.tolist()
    text = check_cli(data / "Preprocessed_data_250Hz_whiten")
    assert "layout: ubp" in text and "float16" in text and "uses its last 250 points" in text
    assert "Warning" not in text and "image ids from dataset files" in text


# ---------------------------------------------------------------- NeuroBridge (feroooooo/NeuroBridge)


def neurobridge_images(image_set, split) -> list[str]:
    """NeuroBridge extract_feature.py:45-49: sorted class folders, sorted files (object_idx, image_idx order)."""
    folder = image_set / ("train_images" if split == "train" else "test_images")
    return [f"{folder.name}/{c}/{f}" for c in sorted(os.listdir(folder)) if (folder / c).is_dir()
            for f in sorted(os.listdir(folder / c))]


def test_neurobridge_since_nov_2025_npy_and_info_json(tmp_path):
    """HEAD module/dataset.py:43-63: info.json at the preprocessed root, np.load(train.npy) 5-D."""
    base = tmp_path / "data" / "things_eeg"
    peers.write_images(base / "image_set", train_dir="train_images")
    tr, te = peers.eeg(30, 6, 250)
    peers.write_neurobridge_new(base / "preprocessed_eeg", tr, te)
    ds = open_dataset(base / "preprocessed_eeg")
    assert ds.layout == "neurobridge" and ds.image_root == base / "image_set"
    raw = ds.raw(1)
    info = json.load(open(base / "preprocessed_eeg" / "info.json"))
    for split in ("train", "test"):
        x = np.load(base / "preprocessed_eeg" / "sub-01" / f"{split}.npy")  # dataset.py:63
        np.testing.assert_array_equal(stored(raw, split), x.reshape(-1, *x.shape[2:]))
        assert getattr(raw, split).image_ids.tolist() == neurobridge_images(base / "image_set", split)
    cut = int(info["baseline_duration"] * info["sfreq"])  # preprocess_eeg.py:139 drops these samples
    assert raw.ch_names == info["ch_names"]
    np.testing.assert_array_equal(raw.times, np.asarray(info["times"])[cut:])
    text = check_cli(base / "preprocessed_eeg")
    assert "layout: neurobridge" in text and "uses its last 250 points" in text


def test_neurobridge_before_nov_2025_pickled_dicts(tmp_path):
    """339f7ec module/dataset.py:80-82: np.load(allow_pickle=True)['data'] of a pickled dict; no info.json."""
    base = tmp_path / "data" / "things_eeg"
    peers.write_images(base / "image_set", train_dir="train_images")
    peers.write_neurobridge_old(base / "preprocessed_eeg", *peers.eeg(31, 6, 250))
    assert not (base / "preprocessed_eeg" / "info.json").exists()
    ds = open_dataset(base / "preprocessed_eeg")
    assert ds.layout == "neurobridge"
    raw = ds.raw(1)
    for split in ("train", "test"):
        d = np.load(base / "preprocessed_eeg" / "sub-01" / f"{split}.npy", allow_pickle=True)
        x = d["data"]
        np.testing.assert_array_equal(stored(raw, split), x.reshape(-1, *x.shape[2:]))
        assert getattr(raw, split).image_ids.tolist() == neurobridge_images(base / "image_set", split)
        assert raw.ch_names == d["ch_names"]
        np.testing.assert_array_equal(raw.times, d["times"][50:])
    text = check_cli(base / "preprocessed_eeg")
    assert "layout: neurobridge" in text and "uses its last 250 points" in text


def test_pickle_with_code_is_refused(tmp_path):
    """A pickle that names anything but data (here os.system) is refused before it can run."""
    from sa.errors import SAError

    d = tmp_path / "sub-01"
    d.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    for name in ("training", "test"):
        with open(d / f"preprocessed_eeg_{name}.npy", "wb") as fh:
            pickle.dump({"preprocessed_eeg_data": Evil()}, fh, protocol=4)
    with pytest.raises(SAError, match=r"pickles a (posix|os|nt)\.system object; sa unpickles only data"):
        open_dataset(tmp_path).raw(1)
    assert not (tmp_path / "ran").exists()


# ---------------------------------------------------------------- big arrays stay on disk


class _Nice8GB(pickle._Pickler):
    """pickle.dump(protocol=4) as it writes NICE's 8.3 GB training array: BINBYTES8 outside any frame (Python
    switches to it above 4 GiB; here from 64 KiB so a small array takes the same path)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        if len(obj) >= 1 << 16:
            self._write_large_bytes(pickle.BINBYTES8 + len(obj).to_bytes(8, "little"), obj)
        else:
            super().save_bytes(obj)

    dispatch[bytes] = save_bytes


def on_disk(a) -> bool:
    """True when an array's memory is a mapping of a file (follows .base through views)."""
    import mmap

    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return True
        a = getattr(a, "base", None)
    return False


def test_large_payloads_are_memory_mapped(tmp_path, monkeypatch):
    """Every container (protocol 3 BINBYTES, protocol 4 BINBYTES8, torch's protocol 5 BYTEARRAY8 and tensor
    storages) gives read-only np.memmap views equal to what pickle/torch load."""
    torch = pytest.importorskip("torch")
    from sa.brain import pickled

    monkeypatch.setattr(pickled, "MMAP_MIN_BYTES", 1 << 16)
    tr, te = peers.eeg(40, 6, 250)
    files = {}
    d = tmp_path / "official"
    peers.write_official(d, tr, te)
    files["protocol 3"] = (d / "preprocessed_eeg_training.npy", lambda f: np.load(f, allow_pickle=True).item())
    with open(tmp_path / "nice.npy", "wb") as fh:
        _Nice8GB(fh, protocol=4).dump({"preprocessed_eeg_data": tr, "ch_names": peers.EEG_CH, "times": peers.times_300()})
    assert pickle.BINBYTES8 in (tmp_path / "nice.npy").read_bytes()[:4096]
    files["protocol 4 BINBYTES8"] = (tmp_path / "nice.npy", lambda f: np.load(f, allow_pickle=True))
    torch.save({"eeg": tr.astype(np.float16), "times": peers.times_300()}, tmp_path / "ubp.pt", pickle_protocol=5)
    files["torch protocol 5"] = (tmp_path / "ubp.pt", lambda f: torch.load(f, weights_only=False))
    torch.save({"eeg": torch.from_numpy(tr).float()[:, :, :, 10:]}, tmp_path / "tensor.pt")
    files["torch tensor"] = (tmp_path / "tensor.pt", lambda f: {"eeg": torch.load(f)["eeg"].numpy()})
    for what, (f, reference) in files.items():
        got = pickled.load_torch(f) if f.suffix == ".pt" else pickled.load_mapped(f)
        ref = reference(f)
        key = "eeg" if "eeg" in ref else "preprocessed_eeg_data"
        assert on_disk(got[key]), what
        assert not got[key].flags.writeable, what
        np.testing.assert_array_equal(got[key], ref[key], err_msg=what)
        if "times" in ref:
            np.testing.assert_array_equal(got["times"], ref["times"], err_msg=what)
