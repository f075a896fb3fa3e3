"""Test-set embeddings kept by `sa sweep --save-embeddings` and the UMAP drawn from them."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from support_sweep import synth_dataset, write_categories

from sa.errors import DamagedError
from sa.train.embeddings import path_of, read_embeddings, save_embeddings
from sa.train.sweep import sweep


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synth_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def swept(synth, tmp_path_factory):
    """A ridge sweep of three layers (plus final) with --categories and --save-embeddings."""
    from sa.brain.data import open_dataset

    path, info = synth
    tmp = tmp_path_factory.mktemp("umap")
    raw = open_dataset(path).raw("sub-01")
    cats = write_categories(path, tmp)
    out = tmp / "res"
    sweep(path, "torchvision-mobilenet_v2", out=out, cache=info["planted"]["cache"], layers="3,9,15", encoders="ridge",
          subjects="sub-01", seeds=1, val_fraction=0.25, progress=False, categories=cats, save_embeddings=True)
    return out, raw


def test_saved_embeddings_are_the_scored_ones(swept):
    """Oracle: numpy cosine top-1 over the saved arrays reproduces runs.csv's top1 of every run."""
    out, raw = swept
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert len(rows) == 4
    for row in rows:
        emb = read_embeddings(out, row["run_id"])
        assert emb["brain"].dtype == np.float16 and emb["brain"].shape[0] == len(raw.test.image_ids)
        assert emb["labels"].tolist() == list(dict.fromkeys(raw.test.image_ids.tolist()))
        assert set(emb["category"].tolist()) <= {"circle", "cross", "diamond", "ring", "square", "triangle"}
        b = emb["brain"].astype(np.float64)
        g = emb["image"].astype(np.float64)
        sims = (b / np.linalg.norm(b, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
        top1 = 100 * np.mean(sims.argmax(1) == emb["targets"])
        assert top1 == pytest.approx(float(row["top1"]), abs=100 / len(b) + 1e-9)  # float16 may flip one near-tie


def test_disk_cost_is_small(swept):
    out, _ = swept
    sizes = [p.stat().st_size for p in (out / "embeddings").glob("*.npz")]
    assert len(sizes) == 4 and max(sizes) < 200_000  # 20 test images: a few kB per run (THINGS: ~0.8 MB at d=1024)
    assert not list((out / "embeddings").glob("*.tmp*"))


def test_damaged_npz_is_named(tmp_path):
    save_embeddings(tmp_path, "r1", {"brain": np.zeros((3, 2), np.float16), "image": np.zeros((3, 2), np.float16),
                                     "labels": np.array(["a", "b", "c"]), "targets": np.arange(3)})
    assert read_embeddings(tmp_path, "r1")["brain"].shape == (3, 2)
    assert read_embeddings(tmp_path, "missing") is None
    path_of(tmp_path, "r1").write_bytes(path_of(tmp_path, "r1").read_bytes()[:40])
    with pytest.raises(DamagedError, match="r1.npz is damaged"):
        read_embeddings(tmp_path, "r1")


@pytest.mark.slow  # ~50 s: umap-learn's numba compilation
def test_umap_keeps_neighbours(tmp_path):
    """Oracle: sklearn's trustworthiness of the joint 2-D map; planted pairs land next to each other."""
    from sklearn.manifold import trustworthiness

    from sa.report.umap import joint_umap, unit

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 4
    image = np.repeat(centres, 10, axis=0) + rng.normal(size=(40, 16))
    brain = image + 0.1 * rng.normal(size=(40, 16))
    b_xy, i_xy = joint_umap(brain, image)
    both = np.vstack([unit(brain), unit(image)])
    assert trustworthiness(both, np.vstack([b_xy, i_xy]), n_neighbors=5, metric="cosine") > 0.9
    # each brain point's nearest image point in the map belongs to its own cluster
    nearest = np.argmin(((b_xy[:, None] - i_xy[None]) ** 2).sum(-1), axis=1)
    assert np.mean(nearest // 10 == np.arange(40) // 10) > 0.95
