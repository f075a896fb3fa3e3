"""The results table: run ids, typed round trips, interruption safety, reruns that skip finished runs."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

from sa.errors import SAError
from sa.train.results import CURVE_COLUMNS, RUN_COLUMNS, ResultsDir, require_runs, run_id

BASE = dict(dataset="things-eeg2", subject="sub-01", fold="intra", cache_key="clip-rn50-0123456789", pool="mean",
            layer="03", encoder="eegproject", seed=0)  # fmt: skip


def _row(**over):
    cfg = {**BASE, **over}
    rid = run_id(**cfg, lr=1e-4)
    return dict(cfg, run_id=rid, backbone="clip-rn50", backbone_params=38_000_000, n_blocks=4, depth=2 / 3,
                lr=1e-4, learn_temperature=True, top1=61.5, top5=90.0, val_top1=58.25, best_epoch=7)  # fmt: skip


def test_run_id_is_stable_and_sensitive():
    a = run_id(**BASE, hyperparameters={"lr": 1e-4, "epochs": 50})
    reordered = dict(reversed(list(BASE.items())))
    reordered["seed"] = np.int64(0)  # numpy scalars hash like Python ones
    assert run_id(**reordered, hyperparameters={"epochs": 50, "lr": 1e-4}) == a
    assert len(a) == 16 and int(a, 16) >= 0
    assert run_id(**BASE, hyperparameters={"lr": 1e-4, "epochs": 50}, new_option=None) == a  # None keys left out
    changed = [run_id(**{**BASE, k: v}, hyperparameters={"lr": 1e-4, "epochs": 50})
               for k, v in [("seed", 1), ("layer", "04"), ("fold", "loso"), ("pool", "cls"), ("cache_key", "x")]]  # fmt: skip
    changed.append(run_id(**BASE, hyperparameters={"lr": 3e-4, "epochs": 50}))
    assert len({a, *changed}) == len(changed) + 1
    with pytest.raises(TypeError, match="seed"):
        run_id(**{k: v for k, v in BASE.items() if k != "seed"})


def test_round_trip_converts_types(tmp_path):
    rd = ResultsDir(tmp_path / "results")
    rd.append_run(_row())
    rd.append_run({**_row(layer="final"), "depth": None, "run_id": run_id(**{**BASE, "layer": "final"})})
    header = (tmp_path / "results" / "runs.csv").read_text().splitlines()[0]
    assert header == ",".join(RUN_COLUMNS)
    first, final = rd.runs()
    assert first["seed"] == 0 and isinstance(first["backbone_params"], int) and first["backbone_params"] == 38_000_000
    assert first["top1"] == 61.5 and first["depth"] == pytest.approx(2 / 3, abs=0) and first["lr"] == 1e-4
    assert first["learn_temperature"] is True and first["layer"] == "03" and first["k100"] is None
    assert first["created"]  # filled in when absent
    assert final["depth"] is None and final["layer"] == "final"
    assert rd.existing_run_ids() == {first["run_id"], final["run_id"]}


def test_refuses_unknown_columns_and_foreign_files(tmp_path):
    rd = ResultsDir(tmp_path)
    with pytest.raises(ValueError, match="top_1"):
        rd.append_run({**_row(), "top_1": 3.0})
    with pytest.raises(ValueError, match="run_id"):
        rd.append_run({k: v for k, v in _row().items() if k != "run_id"})
    (tmp_path / "runs.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(SAError, match="runs.csv"):
        rd.append_run(_row())
    with pytest.raises(SAError, match="runs.csv"):
        rd.runs()
    with pytest.raises(SAError, match="is a file"):
        ResultsDir(tmp_path / "runs.csv")


def test_bad_cell_names_line_and_column(tmp_path):
    rd = ResultsDir(tmp_path)
    rd.append_run(_row())
    text = (tmp_path / "runs.csv").read_text().replace(",61.5,", ",sixty,")
    (tmp_path / "runs.csv").write_text(text)
    with pytest.raises(SAError, match=r"line 2: column 'top1' holds 'sixty'"):
        rd.runs()


def test_torn_last_line_is_skipped_then_cut_off(tmp_path):
    rd = ResultsDir(tmp_path)
    rd.append_run(_row(seed=0))
    rd.append_run(_row(seed=1))
    with open(tmp_path / "runs.csv", "ab") as fh:  # a write killed half-way: no newline
        fh.write(b"deadbeefdeadbeef,things-eeg2,sub-01,in")
    assert [r["seed"] for r in rd.runs()] == [0, 1]
    rd.append_run(_row(seed=2))
    lines = (tmp_path / "runs.csv").read_text().splitlines()
    assert len(lines) == 4 and not any("deadbeef" in ln for ln in lines)
    assert [r["seed"] for r in rd.runs()] == [0, 1, 2]


def test_curves_keep_the_last_attempt_of_a_run(tmp_path):
    rd = ResultsDir(tmp_path)
    a, b = _row(seed=0)["run_id"], _row(seed=1)["run_id"]
    rd.append_curves(a, [{"epoch": e, "train_loss": 9.0, "val_loss": 9.0, "val_top1": 0.0} for e in (1, 2)])  # interrupted
    rd.append_curves(b, [{"epoch": 1, "train_loss": 4.0, "val_loss": 4.5, "val_top1": 2.0}])
    rd.append_curves(a, [{"epoch": e, "train_loss": 5.0 - e, "val_loss": 5.5 - e, "val_top1": 10.0 * e} for e in (2, 1, 3)])
    got = rd.curves(a)
    assert [c["epoch"] for c in got] == [1, 2, 3]
    assert [c["train_loss"] for c in got] == [4.0, 3.0, 2.0] and got[2]["val_top1"] == 30.0
    assert {c["run_id"] for c in rd.curves()} == {a, b} and len(rd.curves()) == 4
    assert (tmp_path / "curves.csv").read_text().splitlines()[0] == ",".join(CURVE_COLUMNS)
    with pytest.raises(ValueError, match="loss"):
        rd.append_curves(a, [{"epoch": 1, "loss": 1.0}])


def test_rerun_skips_finished_runs(tmp_path):
    rd = ResultsDir(tmp_path)
    configs = [{**BASE, "seed": s, "layer": f"{l:02d}"} for s in range(3) for l in range(1, 5)]

    def sweep(stop_after=None):
        done = rd.existing_run_ids()
        trained = 0
        for cfg in configs:
            if run_id(**cfg) in done:
                continue
            if stop_after is not None and trained == stop_after:
                raise KeyboardInterrupt
            rd.append_run({**cfg, "run_id": run_id(**cfg), "top1": float(cfg["seed"])})
            trained += 1
        return trained

    with pytest.raises(KeyboardInterrupt):
        sweep(stop_after=5)
    assert sweep() == len(configs) - 5
    assert sweep() == 0
    ids = [r["run_id"] for r in rd.runs()]
    assert len(ids) == len(set(ids)) == len(configs)


def _append_many(path: str, worker: int) -> None:
    rd = ResultsDir(path)
    for i in range(40):
        rd.append_run({**_row(seed=worker * 1000 + i), "subject": "sub-" + "x" * 200})  # long rows: more bytes per write


def test_concurrent_appenders_do_not_interleave(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    rows = ResultsDir(tmp_path).runs()
    assert sorted(r["seed"] for r in rows) == sorted(w * 1000 + i for w in range(2) for i in range(40))


def test_require_runs_says_to_sweep(tmp_path):
    with pytest.raises(SAError, match=r"runs\.csv does not exist; run `sa sweep` first"):
        require_runs(tmp_path)
    (tmp_path / "runs.csv").write_text(",".join(RUN_COLUMNS) + "\n")
    with pytest.raises(SAError, match=r"runs\.csv is empty; run `sa sweep` first"):
        require_runs(tmp_path)


def test_summary_keeps_different_settings_apart(tmp_path):
    from sa.train.summary import summarize

    rd = ResultsDir(tmp_path)
    for layer, lr in (("02", 1e-4), ("03", 1e-4), ("03", 1e-3)):
        row = _row(layer=layer)
        row.update(lr=lr, run_id=run_id(**{**BASE, "layer": layer}, lr=lr))
        rd.append_run(row)
    a, b = summarize(rd.runs())
    assert (a.variant, b.variant) == ((("lr", "0.0001"),), (("lr", "0.001"),))
    assert [ls.layer for ls in a.layers] == ["02", "03"] and [ls.layer for ls in b.layers] == ["03"]
    assert a.variant_label == "lr=0.0001"
    (one,) = summarize([r for r in rd.runs() if r["lr"] == 1e-4])  # one setting: summarised as usual, no label
    assert one.backbone == "clip-rn50" and one.variant == ()


def test_old_runs_csv_without_setting_columns_is_read_and_upgraded(tmp_path):
    """A runs.csv from before the setting columns: new cells read as None, the next append rewrites the header."""
    import csv

    from sa.train.results import LEGACY_RUN_COLUMNS

    old = [_row(seed=0), _row(seed=1)]
    with open(tmp_path / "runs.csv", "w", newline="") as fh:  # as the old sa wrote it
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(LEGACY_RUN_COLUMNS)
        for r in old:
            w.writerow(["true" if r.get(c) is True else "" if r.get(c) is None else r.get(c) for c in LEGACY_RUN_COLUMNS])
    rd = ResultsDir(tmp_path)
    rows = rd.runs()
    assert [r["seed"] for r in rows] == [0, 1] and rows[0]["top1"] == 61.5
    assert all(r["channels"] is None and r["status"] is None and r["embed_dim"] is None for r in rows)
    assert "channels" in rd.missing_columns() and "run_id" not in rd.missing_columns()
    rd.append_run({**_row(seed=2), "channels": "all", "status": "ok"})
    assert (tmp_path / "runs.csv").read_text().splitlines()[0] == ",".join(RUN_COLUMNS)
    after = rd.runs()
    assert [r["seed"] for r in after] == [0, 1, 2] and after[0]["top1"] == 61.5 and after[0]["channels"] is None
    assert after[2]["channels"] == "all" and rd.missing_columns() == []
    assert not list(tmp_path.glob("*.tmp"))


def test_binary_results_are_damaged_not_a_traceback(tmp_path):
    from sa.errors import DamagedError

    rd = ResultsDir(tmp_path)
    rd.append_run(_row())
    good = (tmp_path / "runs.csv").read_bytes()
    (tmp_path / "runs.csv").write_bytes(good[:40] + b"\x00\xff" + good[40:])
    with pytest.raises(DamagedError, match=r"runs\.csv holds binary data .*move it aside"):
        rd.runs()
    with pytest.raises(DamagedError, match=r"runs\.csv"):
        rd.append_run(_row(seed=1))
    (tmp_path / "curves.csv").write_bytes(b"run_id,epoch\xe9\xff\n")
    with pytest.raises(DamagedError, match=r"curves\.csv holds bytes that are not text"):
        rd.curves()


def test_one_writer_per_results_folder(tmp_path):
    rd = ResultsDir(tmp_path / "res")
    with rd.writing("sa sweep A"):
        assert "sa sweep A (pid" in rd.lock_path.read_text()
        with pytest.raises(SAError, match=r"is being written by sa sweep A \(pid \d+ on .*another --out"):
            with ResultsDir(tmp_path / "res").writing("sa sweep B"):
                pass
    with rd.writing("sa sweep B"):  # released when the first writer is done
        pass
    assert rd.lock_path.read_text() == ""
