"""Damaged and wrong brain-data files: each is one sentence naming the file, what is wrong and the fix.

Interrupted downloads of 4-8 GB files are common, so every container is cut short the way a broken transfer cuts
it (the first bytes kept). `sa data check` must exit 1 with one `error:` line (no traceback, no bare
`Aborted.`), and loading for training must raise the same DamagedError.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

import support_peers as peers
from sa.errors import DamagedError, SAError
from sa.brain.data import open_dataset

runner = CliRunner()


def check(path, *extra, code: int = 1) -> str:
    """Run `sa data check`; assert the exit code and a single-sentence error; return the error text."""
    from sa.cli import app

    res = runner.invoke(app, ["data", "check", str(path), *extra])
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output and "Aborted" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return " ".join(lines[0].split())


def cut(path, keep: float = 0.5) -> tuple[int, int]:
    """Truncate a file to the given share of its bytes, as an interrupted download leaves it."""
    data = path.read_bytes()
    n = int(len(data) * keep)
    path.write_bytes(data[:n])
    return len(data), n


def assert_truncated(text: str, path, found: int, exact_expected: int | None = None) -> None:
    assert str(path) in text and "truncated" in text and f"found {found:,}" in text and "download it again" in text
    m = re.search(r"expected (at least )?([\d,]+) bytes", text)
    assert m, text
    expected = int(m.group(2).replace(",", ""))
    assert expected > found
    if exact_expected is not None:
        assert m.group(1) is None and expected == exact_expected


@pytest.fixture()
def official(tmp_path):
    root = tmp_path / "things-eeg2"
    peers.write_images(root / "image_set")
    peers.write_official(root / "preprocessed_data" / "sub-01", *peers.eeg(1, 4, 100))
    return root


def test_truncated_official_npy(official):
    f = official / "preprocessed_data" / "sub-01" / "preprocessed_eeg_training.npy"
    _, n = cut(f)
    assert_truncated(check(official), f, n)
    with pytest.raises(DamagedError, match="truncated"):
        open_dataset(official).load(1)


def test_empty_npy(official):
    f = official / "preprocessed_data" / "sub-01" / "preprocessed_eeg_test.npy"
    f.write_bytes(b"")
    text = check(official)
    assert f"{f} is empty (0 bytes)" in text and "download it again" in text


def test_npy_cut_inside_its_header(official):
    f = official / "preprocessed_data" / "sub-01" / "preprocessed_eeg_test.npy"
    f.write_bytes(f.read_bytes()[:40])
    text = check(official)
    assert str(f) in text and "truncated" in text and "download it again" in text


def test_truncated_nice_pickle(tmp_path):
    d = tmp_path / "Preprocessed_data_250Hz" / "sub-01"
    peers.write_nice_atm(d, *peers.eeg(2, 6, 250))
    f = d / "preprocessed_eeg_test.npy"
    _, n = cut(f, 0.7)
    assert_truncated(check(tmp_path / "Preprocessed_data_250Hz", "--no-values"), f, n)


def test_truncated_neurobridge_npy_array_exact_size(tmp_path):
    root = tmp_path / "preprocessed_eeg"
    peers.write_neurobridge_new(root, *peers.eeg(3, 6, 250))
    f = root / "sub-01" / "train.npy"
    full, n = cut(f, 0.6)
    assert_truncated(check(root), f, n, exact_expected=full)


def test_truncated_neurobridge_pickled_dict(tmp_path):
    root = tmp_path / "preprocessed_eeg"
    peers.write_neurobridge_old(root, *peers.eeg(4, 6, 250))
    f = root / "sub-01" / "test.npy"
    _, n = cut(f, 0.5)
    assert_truncated(check(root), f, n)


def test_truncated_ubp_pt(tmp_path):
    pytest.importorskip("torch")
    train_ids, test_ids = peers.write_images(tmp_path / "Image_set_Resize", train_dir="train_images")
    d = tmp_path / "Preprocessed_data_250Hz_whiten" / "sub-01"
    peers.write_ubp_eeg(d, *peers.eeg(5, 6, 250), train_ids, test_ids)
    f = d / "train.pt"
    _, n = cut(f, 0.5)
    assert_truncated(check(tmp_path / "Preprocessed_data_250Hz_whiten"), f, n)


def test_missing_and_truncated_fif_split_parts(tmp_path):
    pytest.importorskip("mne")
    m = peers.make_things_meg(2)
    fif = peers.write_things_meg_fif(tmp_path / "derivatives" / "preprocessed", m)
    peers.write_things_meta(tmp_path / "THINGS", m)
    part = fif.parent / "preprocessed_P1-epo-1.fif"
    assert part.exists()
    backup = tmp_path / "part.bak"
    shutil.move(part, backup)
    text = check(tmp_path)
    assert str(fif) in text and "continues in preprocessed_P1-epo-1.fif, which is missing" in text
    assert f"download preprocessed_P1-epo-1.fif into {fif.parent}" in text
    shutil.move(backup, part)
    _, n = cut(part, 0.5)
    assert_truncated(check(tmp_path), part, n)


@pytest.mark.parametrize("content, says", [
    (b"<!DOCTYPE html>\n<html><body>Sign in to OSF</body></html>\n", "is a web page, not the data"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 8299638948\n", "is a Git LFS pointer"),
    (b"sub-01 preprocessed EEG, see the README\n", "is a text file, not data (it starts with 'sub-01 preprocessed EEG"),
])
def test_training_file_that_is_text(official, content, says):
    f = official / "preprocessed_data" / "sub-01" / "preprocessed_eeg_training.npy"
    f.write_bytes(content)
    text = check(official)
    assert f"{f} {says}" in text


def test_eeg_stored_as_strings(tmp_path):
    d = tmp_path / "sub-01"
    d.mkdir()
    tr, te = peers.eeg(6, 4, 100)
    for name, x in (("training", tr), ("test", te)):
        peers.np_save_numpy119(d / f"preprocessed_eeg_{name}.npy", {"preprocessed_eeg_data": x.astype(str),
                                                                      "ch_names": peers.OFFICIAL_CH,
                                                                      "times": peers.official_times()})
    text = check(tmp_path)
    assert "stores its EEG/MEG values as text strings" in text and "not as numbers" in text
    assert "astype('float32')" in text
    with pytest.raises(SAError, match="text strings"):
        open_dataset(tmp_path).raw(1)


def test_unreadable_subject_is_listed_not_counted_as_zero(tmp_path):
    peers.write_images(tmp_path / "image_set")
    for s in (1, 2):
        peers.write_official(tmp_path / "preprocessed_data" / f"sub-{s:02d}", *peers.eeg(s, 4, 100))
    cut(tmp_path / "preprocessed_data" / "sub-02" / "preprocessed_eeg_test.npy")
    from sa.cli import app

    res = runner.invoke(app, ["data", "check", str(tmp_path)])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "subjects (2): sub-01, sub-02" in out
    assert "sub-02: could not be read (see below)" in out and "sub-01: train (12, 4, 4, 100)" in out


def test_empty_subject_folder_is_named(official):
    (official / "preprocessed_data" / "sub-03").mkdir()
    text = check(official)
    assert "sub-03" in text and "holds no preprocessed_eeg_training.npy or preprocessed_eeg_test.npy" in text
    assert "subject sub-03 was left out" in text
    ds = open_dataset(official)
    assert ds.subjects == ["sub-01"]


def test_only_empty_subject_folders(tmp_path):
    for s in ("sub-01", "sub-02"):
        (tmp_path / s).mkdir()
    text = check(tmp_path, code=2)
    assert "sub-01, sub-02" in text and "hold no data file of a known layout" in text


def test_all_zero_training_eeg(tmp_path):
    peers.write_images(tmp_path / "image_set")
    tr, te = peers.eeg(7, 4, 100)
    peers.write_official(tmp_path / "preprocessed_data" / "sub-01", np.zeros_like(tr), te)
    text = check(tmp_path)
    assert "sub-01: the train data are constant on every channel (every value is 0" in text
    with pytest.raises(SAError, match="constant on every channel"):
        open_dataset(tmp_path).load(1)
