"""Checkpoints and decoding: round trip, the right image for trained trials, channel and shape checks, the gallery check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support_sweep import fast_config, synth_dataset

from sa.cache import open_root
from sa.errors import SAError
from sa.train.checkpoint import load_checkpoint
from sa.brain.data import open_dataset
from sa.decode.offline import decode, decode_dataset
from sa.train.sweep import train_one


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path, info = synth_dataset(tmp_path_factory)
    out = tmp_path_factory.mktemp("ckpt") / "sub01.safetensors"
    row, ckpt = train_one(path, "torchvision-mobilenet_v2", out=out, cache=info["planted"]["cache"], layer="9",
                          encoder="linear", subject="sub-01", config=fast_config(epochs=20), val_fraction=0.25)
    return path, info, row, ckpt


def test_checkpoint_round_trip(trained):
    path, info, row, file = trained
    ck = load_checkpoint(file)
    assert (ck.layer, ck.pool, ck.array, ck.encoder) == ("09", "gap", "gap/09", "linear")
    assert ck.cache_key == info["planted"]["cache_key"] and ck.ch_names == info["ch_names"]
    assert (ck.n_channels, ck.n_times) == (17, 40) and ck.zscore_mean.shape == (17,)
    assert ck.meta["run_id"] == row["run_id"] and ck.meta["metrics"]["top1"] == row["top1"]
    # the rebuilt model reproduces the trained run's test score
    ds = open_dataset(path)
    subj = ds.load("sub-01", val_fraction=0.25)
    from sa.train.evaluate import retrieval_metrics

    group = open_root(ck.cache_root).open(ck.cache_key)
    feats = group.read("gap/09", group.rows_for_ids(subj.test.image_ids)).astype(np.float32)
    with torch.no_grad():
        m = retrieval_metrics(ck.model.encode_brain(torch.from_numpy(subj.test.x)), ck.model.encode_image(torch.from_numpy(feats)))
    assert m["top1"] == pytest.approx(row["top1"])


def test_decode_returns_the_seen_image(trained):
    path, info, row, file = trained
    train = decode_dataset(file, path, "torchvision-mobilenet_v2", split="train", top_k=5)
    assert train.ids.shape == (180, 5) and np.all(np.diff(train.scores, axis=1) <= 1e-6)
    assert train.accuracy(1) > 60  # 260 candidates: chance is 0.4 %
    test = decode_dataset(file, path, "torchvision-mobilenet_v2", split="test", top_k=5)
    assert test.accuracy(5) > 20 and test.in_gallery.all()


def test_decode_picks_channels_by_name_and_names_mismatches(trained):
    path, info, row, file = trained
    ds = open_dataset(path)
    raw = ds.load("sub-01", zscore=False, val_fraction=0.25).test
    group = open_root(info["planted"]["cache"]).open(info["planted"]["cache_key"])
    ids, scores = decode(file, raw.x, group, top_k=3)
    names = list(info["ch_names"])
    perm = np.random.default_rng(0).permutation(len(names))
    ids_p, scores_p = decode(file, raw.x[:, perm], group, top_k=3, ch_names=[names[i] for i in perm])
    np.testing.assert_array_equal(ids, ids_p)
    np.testing.assert_allclose(scores, scores_p, atol=1e-5)
    one_id, _ = decode(file, raw.x[0], group, top_k=1)  # a single (C, T) trial
    assert one_id.shape == (1, 1) and one_id[0, 0] == ids[0, 0]
    with pytest.raises(SAError, match=f"channel\\(s\\) {names[3]} of the checkpoint are missing"):
        decode(file, np.delete(raw.x, 3, axis=1), group, ch_names=names[:3] + names[4:])
    with pytest.raises(SAError, match="16 channels but the checkpoint was trained on 17"):
        decode(file, raw.x[:, :16], group)
    with pytest.raises(SAError, match="39 time points but the checkpoint expects 40"):
        decode(file, raw.x[:, :, :39], group)


def test_gallery_of_another_backbone_is_refused(trained, tmp_path):
    path, info, row, file = trained
    root = open_root(tmp_path / "other")
    w = root.create("0123456789abcdef", "other-net-0000000000", ["a.png", "b.png"], {"gap/09": 8}, {"backbone": {"name": "x"}})
    w.write_block(0, {"gap/09": np.zeros((2, 8), np.float16)})
    group = w.finalize()
    with pytest.raises(SAError, match="extracted with other-net-0000000000"):
        decode(file, np.zeros((1, 17, 40)), group)
    with pytest.raises(SAError, match="not a readable sa checkpoint"):
        (tmp_path / "bad.safetensors").write_bytes(b"nope")
        load_checkpoint(tmp_path / "bad.safetensors")
