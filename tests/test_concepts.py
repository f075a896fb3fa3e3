"""Concept accuracy (concept_top5): a hand-computed example, the category CSV, and the sweep column and its errors."""

from __future__ import annotations

import numpy as np
import pytest
from support_sweep import synth_dataset
from typer.testing import CliRunner

from sa.train.concepts import concept_top5, read_categories
from sa.train.results import ResultsDir
from sa.train.sweep import sweep


def test_hand_made_example(tmp_path):
    csv = tmp_path / "cats.csv"
    csv.write_text("concept,category\ncat,animal\ndog,animal\nhammer,tool\nsaw,tool\napple,food\nbanana,food\n"
                   "banana,plant\nrose,plant\n")
    cats = read_categories(csv)
    assert cats["banana"] == {"food", "plant"}
    gallery = ["cat", "dog", "hammer", "saw", "apple", "banana", "rose"]
    sims = np.asarray([
        [0.9, 0.8, 0.7, 0.1, 0.6, 0.0, 0.5],   # target cat: top-5 cat dog hammer apple rose -> animal 2 of 5
        [0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.6],   # target saw: top-5 saw apple banana rose hammer -> tool 2 of 5
        [0.0, 0.1, 0.2, 0.3, 0.9, 0.8, 0.7],   # target banana: apple banana rose saw hammer -> food/plant 3 of 5
    ])
    # hand computation: (2 + 2 + 3) / 15
    assert concept_top5(sims, [0, 3, 5], gallery, cats) == pytest.approx(100 * 7 / 15)
    assert concept_top5(sims, [0, 3, 5], [g.upper() for g in gallery], cats) == pytest.approx(100 * 7 / 15)


def test_tsv_without_header_and_bad_files(tmp_path):
    tsv = tmp_path / "cats.tsv"
    tsv.write_text("Hot Dog\tfood\nkite\ttoy\n")
    assert read_categories(tsv) == {"hot_dog": {"food"}, "kite": {"toy"}}
    from sa.errors import SAError

    bad = tmp_path / "bad.csv"
    bad.write_text("concept,category\njust-one-cell\n")
    with pytest.raises(SAError, match="line 2 is not a concept,category pair"):
        read_categories(bad)
    with pytest.raises(SAError, match="is not a file"):
        read_categories(tmp_path / "none.csv")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synth_dataset(tmp_path_factory)


def _categories(info_path, tmp_path, drop: int = 0):
    """Synthetic concepts are named shape_texture_k: their shape is a natural coarse category."""
    from sa.brain.data import open_dataset
    from sa.brain.things import concepts_of_ids

    ds = open_dataset(info_path)
    raw = ds.raw("sub-01")
    concepts = sorted(set(concepts_of_ids(raw.test.image_ids)) | set(concepts_of_ids(raw.train.image_ids)))
    path = tmp_path / "cats.csv"
    path.write_text("concept,category\n" + "".join(f"{c},{c.split('_')[0]}\n" for c in concepts[drop:]))
    return path, concepts


def test_sweep_writes_concept_top5(synth, tmp_path):
    path, info = synth
    cats, _ = _categories(path, tmp_path)
    out = tmp_path / "res"
    sweep(path, "torchvision-mobilenet_v2", out=out, cache=info["planted"]["cache"], layers="9", encoders="ridge",
          subjects="sub-01", seeds=1, val_fraction=0.25, progress=False, categories=cats)
    rows = {r["layer"]: r for r in ResultsDir(out).runs()}
    for row in rows.values():
        assert 0 <= row["concept_top5"] <= 100
    # at least the trial's own image (top-5 hit) counts, so concept accuracy >= top5 / 5
    assert rows["09"]["concept_top5"] >= rows["09"]["top5"] / 5


def test_missing_concepts_is_one_sentence(synth, tmp_path):
    from sa.cli import app

    path, info = synth
    cats, concepts = _categories(path, tmp_path, drop=45)
    out = tmp_path / "res"
    res = CliRunner().invoke(app, ["sweep", "--data", str(path), "-b", "torchvision-mobilenet_v2", "--cache",
                                   info["planted"]["cache"], "--layers", "9", "--encoders", "ridge", "--subjects",
                                   "sub-01", "--seeds", "1", "--categories", str(cats), "--out", str(out), "--quiet"])
    assert res.exit_code == 2, res.output
    assert "has no category for" in res.output and "test concept(s)" in res.output
    assert "Traceback" not in res.output and not (out / "runs.csv").exists()
