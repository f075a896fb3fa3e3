"""Brain-data fixtures written the way each peer's own saving code writes them (small shapes, real containers).

Each writer follows the peer's saving lines, cited by repository, file and line (read at the commits fetched
for issue 10): the container (np.save / pickle.dump / torch.save / mne), the pickle protocol, dtype, keys, the
2-D id arrays, the 300-point `times` of the 250-sample variants and mne's split .fif parts. Only the sizes are
small. The peers' *loaders* (the oracles) are written out in the tests that use them.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# real THINGS-EEG2 channel names (a subset of the 63 that NICE/ATM/UBP/NeuroBridge keep, in their order)
EEG_CH = ["Fp1", "Cz", "P7", "PO3", "O1", "Oz"]
OFFICIAL_CH = ["P7", "PO3", "O1", "Oz"]  # official files keep the 17 O/P channels; 4 of them here
TRAIN_CONCEPTS = ["aardvark", "abacus", "accordion", "acorn"]
TEST_CONCEPTS = ["aircraft_carrier", "alligator", "anchor"]
PER_CONCEPT = 3
N_TRAIN, N_TEST = len(TRAIN_CONCEPTS) * PER_CONCEPT, len(TEST_CONCEPTS)
REPS_TRAIN, REPS_TEST = 4, 6  # the real files hold 4 and 80


def official_times() -> np.ndarray:
    """epochs.times of eeg_encoding's epochs: tmin=-.2, tmax=.8 at 1000 Hz resampled to 100 Hz (100 points)."""
    return -0.2 + np.arange(100) / 100.0


def times_300() -> np.ndarray:
    """epochs.times of the 250 Hz variants: tmin=-.2, tmax=1.0 resampled to 250 Hz (300 points, -0.2..0.996 s)."""
    return -0.2 + np.arange(300) / 250.0


def write_images(root: Path, train_dir: str = "training_images", suffix_train: str = "b") -> tuple[list[str], list[str]]:
    """A THINGS-EEG2 image folder: numbered concept folders, sorted files; ids in the EEG row order."""
    train, test = [], []
    for k, c in enumerate(TRAIN_CONCEPTS):
        d = root / train_dir / f"{k + 1:05d}_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(PER_CONCEPT):
            (d / f"{c}_{j + 1:02d}{suffix_train}.jpg").write_bytes(b"jpg")
            train.append(f"{train_dir}/{d.name}/{c}_{j + 1:02d}{suffix_train}.jpg")
    for k, c in enumerate(TEST_CONCEPTS):
        d = root / "test_images" / f"{k + 1:05d}_{c}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{c}_01s.jpg").write_bytes(b"jpg")
        test.append(f"test_images/{d.name}/{c}_01s.jpg")
    (root / "test_images" / ".DS_Store").write_bytes(b"\0")  # a macOS stray no peer counts as an image folder
    return train, test


def eeg(seed: int, n_ch: int, n_t: int, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """(train (N, 4, C, T), test (M, 6, C, T)) values like whitened EEG."""
    rng = np.random.default_rng(seed)
    tr = rng.normal(size=(N_TRAIN, REPS_TRAIN, n_ch, n_t)).astype(dtype)
    te = rng.normal(size=(N_TEST, REPS_TEST, n_ch, n_t)).astype(dtype)
    return tr, te


# ---------------------------------------------------------------- THINGS-EEG2 official (gifale95/eeg_encoding)


def np_save_numpy119(path: Path, obj: dict) -> None:
    """np.save of a dict exactly as numpy 1.19 wrote it: a version 1.0 .npy header for a 0-d object array, then
    pickle.dump(array, protocol=3) (numpy >= 2 writes protocol 4), naming numpy 1's `numpy.core.multiarray`.

    Protocol 3 names globals as newline-ended text (no lengths, no frames), so the module rename is exact.
    """
    arr = np.empty((), dtype=object)
    arr[()] = obj
    buf = io.BytesIO()
    pickle.dump(arr, buf, protocol=3)
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(arr))
        fh.write(buf.getvalue().replace(b"cnumpy._core.", b"cnumpy.core."))


def write_official(subject_dir: Path, train: np.ndarray, test: np.ndarray) -> None:
    """eeg_encoding 02_eeg_preprocessing/preprocessing_utils.py:223-238 and 266-277: np.save of the dicts
    {'preprocessed_eeg_data', 'ch_names', 'times'} (float64), with the numpy of the time (1.19: protocol 3)."""
    subject_dir.mkdir(parents=True, exist_ok=True)
    for name, x in (("test", test), ("training", train)):
        np_save_numpy119(subject_dir / f"preprocessed_eeg_{name}.npy",
                         {"preprocessed_eeg_data": x, "ch_names": list(OFFICIAL_CH), "times": official_times()})


# ---------------------------------------------------------------- NICE / ATM 63-channel 250 Hz EEG


def write_nice_atm(subject_dir: Path, train: np.ndarray, test: np.ndarray) -> None:
    """NICE-EEG preprocessing/preprocessing_utils.py:108 (data cut [..., 50:]) and 256-257, 298-299 (ATM's
    EEG-preprocessing/preprocessing_utils.py is the same): pickle.dump(protocol=4) under the .npy names, all
    300 times kept."""
    subject_dir.mkdir(parents=True, exist_ok=True)
    for name, x in (("test", test), ("training", train)):
        with open(subject_dir / f"preprocessed_eeg_{name}.npy", "wb") as fh:
            pickle.dump({"preprocessed_eeg_data": x, "ch_names": list(EEG_CH), "times": times_300()}, fh, protocol=4)


# ---------------------------------------------------------------- UBP (HaitaoWuTJU/Uncertainty-aware-Blur-Prior)


def write_ubp_eeg(subject_dir: Path, train: np.ndarray, test: np.ndarray, train_ids: list[str], test_ids: list[str]) -> None:
    """UBP preprocess/process_eeg_whiten.py:161 ([..., -250:]), 196-222 and 270-306: torch.save(pickle_protocol=5)
    of {'eeg': float16, 'label', 'img', 'text' tiled to (N, reps), 'session' (N, reps) float, 'ch_names', 'times'
    (300 points)}; `img` is the path below Image_set_Resize/ (train_images/...)."""
    import torch

    subject_dir.mkdir(parents=True, exist_ok=True)
    for name, x, ids in (("test", test, test_ids), ("train", train, train_ids)):
        reps = x.shape[1]
        ids = np.asarray(ids)
        labels = np.asarray([k // (1 if name == "test" else PER_CONCEPT) for k in range(len(ids))])
        texts = np.asarray([i.rsplit("/", 1)[-1].rsplit("_", 1)[0] for i in ids])
        d = {
            "eeg": x.astype(np.float16),
            "label": np.tile(labels[:, None], (1, reps)),
            "img": np.tile(ids[:, None], (1, reps)),
            "text": np.tile(texts[:, None], (1, reps)),
            "session": np.zeros((len(ids), reps)),
            "ch_names": list(EEG_CH),
            "times": times_300(),
        }
        torch.save(d, subject_dir / f"{name}.pt", pickle_protocol=5)


# ---------------------------------------------------------------- NeuroBridge (feroooooo/NeuroBridge)


def nb_shapes(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NeuroBridge preprocess_eeg.py:162 and 197: (concepts, images, reps, C, T) and (200, 1, 80, C, T)."""
    n_c = len(TRAIN_CONCEPTS)
    return train.reshape(n_c, PER_CONCEPT, *train.shape[1:]), test.reshape(len(test), 1, *test.shape[1:])


def write_neurobridge_new(root: Path, train: np.ndarray, test: np.ndarray, subject: str = "sub-01") -> None:
    """NeuroBridge (since f3f8e7f, Nov 2025) preprocess_eeg.py:146-200 and 288-302: np.save of the 5-D arrays
    (precision fp32 by default) and info.json at the preprocessed root (ch_names, 300 times, sfreq, ...)."""
    tr, te = nb_shapes(train.astype(np.float32), test.astype(np.float32))
    d = root / subject
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "test.npy", te)
    np.save(d / "train.npy", tr)
    info = {"ch_names": list(EEG_CH), "times": times_300().tolist(), "baseline_duration": 0.2, "after_duration": 1.0,
            "normalization": "mvnn", "sfreq": 250.0, "precision": "fp32", "seed": 20200220,
            "train_data_shape": list(train.shape), "test_data_shape": list(test.shape)}
    (root / "info.json").write_text(json.dumps(info, indent=4))


def write_neurobridge_old(root: Path, train: np.ndarray, test: np.ndarray, subject: str = "sub-01",
                          ch_names: list[str] | None = None, times: np.ndarray | None = None) -> None:
    """NeuroBridge before Nov 2025 (339f7ec) preprocess_eeg.py:143-226 (and preprocess_meg.py:168-192, where
    ch_names is []): pickle.dump(protocol=4) of {'data', 'ch_names', 'times'} as train.npy / test.npy."""
    tr, te = nb_shapes(train, test)
    d = root / subject
    d.mkdir(parents=True, exist_ok=True)
    ch = list(EEG_CH) if ch_names is None else ch_names
    t = times_300() if times is None else times
    for name, x in (("test", te), ("train", tr)):
        with open(d / f"{name}.npy", "wb") as fh:
            pickle.dump({"data": x, "ch_names": ch, "times": t}, fh, protocol=4)


# ---------------------------------------------------------------- THINGS-MEG (ViCCo-Group/THINGS-data) and its peers

MEG_CH = ["MLC11-4408", "MLO11-4408", "MRO22-4408", "MZO01-4408"]


@dataclass
class ThingsMeg:
    """A tiny THINGS catalogue and one participant's epochs: which image numbers are test images, etc."""

    concepts: list[str]  # THINGS concepts, 1-based concept number = position + 1
    per_concept: int
    test_nrs: list[int]  # 1-based image numbers shown `test_reps` times
    test_reps: int
    codes: np.ndarray  # event code of every epoch, in presentation order
    data: np.ndarray  # (epochs, channels, times) as saved

    def image_path(self, nr: int) -> str:
        """image_paths.csv row of a 1-based THINGS image number."""
        c = self.concepts[(nr - 1) // self.per_concept]
        return f"images/{c}/{c}_{(nr - 1) % self.per_concept + 1:02d}{'bns'[(nr - 1) % 3]}.jpg"

    def concept_nr(self, nr: int) -> int:
        return (nr - 1) // self.per_concept + 1

    @property
    def n_images(self) -> int:
        return len(self.concepts) * self.per_concept


def make_things_meg(seed: int = 0) -> ThingsMeg:
    """7 concepts x 3 images; the first image of concepts 3 and 6 are test images (4 repetitions); every other
    image is shown once, in a shuffled order with catch trials (999999) mixed in."""
    concepts = ["aardvark", "abacus", "accordion", "acorn", "airplane", "alligator", "anchor"]
    per, reps = 3, 4
    test_nrs = [(3 - 1) * per + 1, (6 - 1) * per + 1]
    train_nrs = [n for n in range(1, len(concepts) * per + 1) if n not in test_nrs]
    codes = np.asarray(train_nrs + test_nrs * reps + [999999] * 3)
    rng = np.random.default_rng(seed)
    codes = codes[rng.permutation(len(codes))]
    data = rng.normal(size=(len(codes), len(MEG_CH), 281))  # step1_preprocessing.py:95-98 stores z-scores
    return ThingsMeg(concepts, per, test_nrs, reps, codes, data)


def write_things_meta(folder: Path, m: ThingsMeg) -> Path:
    """The THINGS download's metadata CSVs (no header): Metadata/Concept-specific/image_concept_index.csv and
    Metadata/Image-specific/image_paths.csv, one row per THINGS image."""
    (folder / "Metadata" / "Concept-specific").mkdir(parents=True, exist_ok=True)
    (folder / "Metadata" / "Image-specific").mkdir(parents=True, exist_ok=True)
    nrs = range(1, m.n_images + 1)
    (folder / "Metadata" / "Concept-specific" / "image_concept_index.csv").write_text(
        "".join(f"{m.concept_nr(n)}\n" for n in nrs))
    (folder / "Metadata" / "Image-specific" / "image_paths.csv").write_text("".join(f"{m.image_path(n)}\n" for n in nrs))
    return folder / "Metadata"


def write_things_meg_fif(folder: Path, m: ThingsMeg, participant: int = 1, split_size: str = "1.1MB") -> Path:
    """THINGS-data MEG/step1_preprocessing.py:40-43, 88-106: magnetometer epochs -0.1..1.3 s at 200 Hz, event
    code = THINGS image number (999999 = catch), saved by mne as preprocessed_P{n}-epo.fif; mne writes large
    files as split parts (-epo-1.fif, ...), which the small split_size reproduces."""
    import mne

    folder.mkdir(parents=True, exist_ok=True)
    info = mne.create_info(MEG_CH, 200.0, "mag")
    events = np.column_stack([np.arange(len(m.codes)) * 300, np.zeros(len(m.codes), int), m.codes])
    epochs = mne.EpochsArray(m.data, info, events=events, tmin=-0.1, baseline=None, verbose="error")
    out = folder / f"preprocessed_P{participant}-epo.fif"
    epochs.save(out, split_size=split_size, overwrite=True, verbose="error")
    return out


def peer_meg_split(fif: Path, m: ThingsMeg):
    """The epochs the peers keep, as ATM's MEG-preprocessing/pre_possess.ipynb (cells 2, 5, 6, 8, 14-22) and
    UBP's preprocess/process_meg.py:42-125 select them: crop 0..1.0 s, sort by event code, drop catch trials,
    test = codes shown test_reps times, train = the rest minus every image of a test concept."""
    import mne

    epochs = mne.read_epochs(fif, preload=True, verbose="error").crop(tmin=0, tmax=1.0)
    epochs = epochs[np.argsort(epochs.events[:, 2])]
    valid = epochs[epochs.events[:, 2] != 999999]
    ids, counts = np.unique(valid.events[:, 2], return_counts=True)
    zs = ids[counts == m.test_reps]
    training = valid[~np.isin(valid.events[:, 2], zs)]
    test = valid[np.isin(valid.events[:, 2], zs)]
    test_categories = [m.concept_nr(int(e)) for e in zs]
    keep = [m.concept_nr(int(e)) not in test_categories for e in training.events[:, 2]]
    return training[keep], test


def meg_image_dir(m: ThingsMeg, nr: int) -> str:
    """The folder the MEG peers copy an image into: '<THINGS concept number:05d>_<concept>' (ATM cell 36,
    UBP process_meg.py:155-163, NeuroBridge preprocess_meg.py:216-236)."""
    return f"{m.concept_nr(nr):05d}_{m.concepts[m.concept_nr(nr) - 1]}"


def write_meg_images(root: Path, m: ThingsMeg, train_nrs, test_nrs, train_dir: str = "training_images",
                     wrapper: str = "") -> tuple[list[str], list[str]]:
    """Copy (placeholder) images as the MEG peers do; ATM keeps the leading `images/` folder (wrapper)."""
    out = []
    for split_dir, nrs in ((train_dir, train_nrs), ("test_images", test_nrs)):
        ids = []
        for nr in nrs:
            rel = "/".join(p for p in (split_dir, wrapper, meg_image_dir(m, nr), Path(m.image_path(nr)).name) if p)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"jpg")
            ids.append(rel)
        out.append(ids)
    return out[0], out[1]


def write_atm_meg(subject_dir: Path, training, test, m: ThingsMeg) -> None:
    """ATM MEG-preprocessing/pre_possess.ipynb cells 1, 24-27: pickle.dump(protocol=4) of {'meg_data': 5-D,
    'ch_names', 'times'} as preprocessed_meg_training.pkl and preprocessed_meg_zs_test.pkl."""
    subject_dir.mkdir(parents=True, exist_ok=True)
    n_train_concepts = len(training) // m.per_concept
    tr = training.get_data().reshape(n_train_concepts, m.per_concept, 1, *training.get_data().shape[1:])
    te = test.get_data().reshape(len(m.test_nrs), 1, m.test_reps, *test.get_data().shape[1:])
    for name, x, ep in (("training", tr, training), ("zs_test", te, test)):
        with open(subject_dir / f"preprocessed_meg_{name}.pkl", "wb") as fh:
            pickle.dump({"meg_data": x, "ch_names": ep.ch_names, "times": ep.times}, fh, protocol=4)


def write_ubp_meg(subject_dir: Path, training, test, m: ThingsMeg, train_ids: list[str], test_ids: list[str]) -> None:
    """UBP preprocess/process_meg.py:127-207: torch.save(pickle_protocol=5) of {'eeg': float16 (N, reps, C, 201),
    'img': [paths below Image_set/]} (no times, no channel names)."""
    import torch

    subject_dir.mkdir(parents=True, exist_ok=True)
    tr = training.get_data().reshape(len(training), 1, *training.get_data().shape[1:])
    te = test.get_data().reshape(len(m.test_nrs), m.test_reps, *test.get_data().shape[1:])
    torch.save({"eeg": te.astype(np.float16), "img": list(test_ids)}, subject_dir / "test.pt", pickle_protocol=5)
    torch.save({"eeg": tr.astype(np.float16), "img": list(train_ids)}, subject_dir / "train.pt", pickle_protocol=5)


def write_neurobridge_meg(root: Path, training, test, m: ThingsMeg, old: bool, subject: str = "sub-01") -> None:
    """NeuroBridge preprocess_meg.py: drop the last sample ([:, :, :-1], 200 samples), 5-D reshape, times =
    linspace(0, 0.995, 200); since Nov 2025 np.save + preprocessed_meg/info.json (HEAD:136-187), before as
    pickled dicts with ch_names [] (339f7ec:137-192)."""
    n_c = len(training) // m.per_concept
    tr = training.get_data()[:, :, :-1].reshape(n_c, m.per_concept, len(MEG_CH), 200)[:, :, np.newaxis]
    te = test.get_data()[:, :, :-1].reshape(len(m.test_nrs), m.test_reps, len(MEG_CH), 200)[:, np.newaxis]
    tr, te = tr.astype(np.float32), te.astype(np.float32)
    times = np.linspace(0, 0.995, 200)
    d = root / subject
    d.mkdir(parents=True, exist_ok=True)
    if old:
        for name, x in (("train", tr), ("test", te)):
            with open(d / f"{name}.npy", "wb") as fh:
                pickle.dump({"data": x, "ch_names": [], "times": times}, fh, protocol=4)
        return
    np.save(d / "train.npy", tr)
    np.save(d / "test.npy", te)
    info = {"ch_names": list(training.ch_names), "times": times.tolist(), "baseline_duration": 0.2,
            "after_duration": 1.0, "normalization": "none", "sfreq": 200, "precision": "fp32",
            "train_data_shape": list(tr.shape), "test_data_shape": list(te.shape)}
    (root / "info.json").write_text(json.dumps(info, indent=4))
