"""`sa cache` commands through typer's CliRunner."""

from __future__ import annotations

import pytest
from support_cache import BKEY, ISET, N, write_group
from typer.testing import CliRunner

from sa.cache import open_root
from sa.cli import app

KEY = f"{ISET}/{BKEY}"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache root with one complete group, selected through SA_CACHE."""
    monkeypatch.setenv("SA_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("COLUMNS", "200")
    write_group(open_root(tmp_path / "c"))
    return tmp_path / "c"


def run(*args: str):
    return CliRunner().invoke(app, ["cache", *args])


def test_ls_info_verify(cache):
    res = run("ls")
    assert res.exit_code == 0, res.output
    assert all(s in res.output for s in (ISET, BKEY, "00-01", "cls,mean", f"{N:,}", "complete"))
    res = run("ls", str(cache))
    assert res.exit_code == 0 and BKEY in res.output
    res = run("info", "tiny")
    assert res.exit_code == 0 and "sha256:" in res.output and "mean/01" in res.output
    res = run("info", BKEY, "--json")
    assert res.exit_code == 0 and '"status": "complete"' in res.output
    res = run("verify")
    assert res.exit_code == 0 and "ok" in res.output


def test_verify_failure_exits_1_and_names_array(cache):
    path = cache / ISET / BKEY / "cls/01" / "c" / "0" / "0"
    raw = bytearray(path.read_bytes())
    raw[0] ^= 1
    path.write_bytes(bytes(raw))
    res = run("verify", BKEY)
    assert res.exit_code == 1 and "cls/01" in res.output


def test_unknown_key_and_not_a_cache(cache, tmp_path):
    res = run("info", "tinyy")
    assert res.exit_code == 2 and "did you mean 'tiny-0123456789'" in res.output
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "data.csv").write_text("a,b\n")
    res = run("ls", str(tmp_path / "x"))
    assert res.exit_code == 2 and "is not a feature cache" in res.output


def test_export_import_rm(cache, tmp_path):
    res = run("export", BKEY, str(tmp_path / "f.h5"))
    assert res.exit_code == 0, res.output
    res = run("import", str(tmp_path / "f.h5"), "--cache", str(tmp_path / "other"))
    assert res.exit_code == 0, res.output
    assert open_root(tmp_path / "other").verify(KEY, progress=False) == []
    assert run("rm", BKEY).exit_code == 1  # asks, and no input means no
    assert open_root(cache).status(KEY) == "complete"
    res = run("rm", BKEY, "--yes")
    assert res.exit_code == 0 and open_root(cache).status(KEY) == "missing"
