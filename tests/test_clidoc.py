"""The CLI reference in README.md matches the typer app, and the generator is deterministic and complete."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer

from sa import clidoc
from sa.errors import SAError

README = Path(clidoc.__file__).resolve().parent / "README.md"


def test_readme_block_matches_the_app():
    block = clidoc.marked_block(README.read_text(encoding="utf-8"))
    assert block is not None, f"README.md has no {clidoc.START} ... {clidoc.END} block; run `{clidoc.REGENERATE}`."
    assert block == clidoc.generate(), f"README.md's CLI reference is out of date; run `{clidoc.REGENERATE}`."


def test_every_command_is_documented_with_usage_and_options():
    text = clidoc.generate()
    for path in ("sa", "sa demo", "sa extract", "sa sweep", "sa report", "sa cache", "sa data", "sa data synth"):
        assert f"### `{path}`" in text
    assert "\nsa data synth [OPTIONS] {out}\n" in text  # the usage line exactly as `sa data synth --help` shows it
    assert "| `--out`, `-o` | path | `sa-demo` |" in text
    assert "| `--values`, `--no-values` | flag | `--values` |" in text
    assert "--help` |" not in text


def _toy_app() -> typer.Typer:
    app = typer.Typer(help="Toy root.", add_completion=False)
    sub = typer.Typer(help="Toy group.")

    @app.command("go")
    def go(path: Path = typer.Argument(..., help="Where | to go."), n: int = typer.Option(3, "--n", "-n", help="How many."),
           fast: bool = typer.Option(False, "--fast", help="Hurry.")) -> None:
        """Go somewhere.

        A second paragraph that is long enough that a terminal would wrap it somewhere in the middle of the line.
        """

    @sub.command("inner")
    def inner(flag: bool = typer.Option(True, "--on/--off", help="Switch.")) -> None:
        """Inner command."""

    app.add_typer(sub, name="grp")
    return app


def test_toy_app_reference_is_exact_and_width_independent(monkeypatch):
    cmd = typer.main.get_command(_toy_app())
    monkeypatch.setenv("COLUMNS", "30")
    narrow = clidoc.generate(cmd, "toy")
    monkeypatch.setenv("COLUMNS", "250")
    assert clidoc.generate(cmd, "toy") == narrow
    assert "### `toy go`\n\n```text\ntoy go [OPTIONS] {path}\n```\n\nGo somewhere.\n\nA second paragraph" in narrow
    assert "| `PATH` | path | required | Where \\| to go. |" in narrow
    assert "| `--n`, `-n` | int | `3` | How many. |" in narrow
    assert "| `--fast` | flag |  | Hurry. |" in narrow
    assert "### `toy grp inner`" in narrow and "| `--on`, `--off` | flag | `--on` | Switch. |" in narrow
    assert "- `toy grp`: Toy group." in narrow


def test_write_replaces_only_the_marked_block(tmp_path):
    f = tmp_path / "README.md"
    f.write_text(f"# Title\n\nintro\n\n## CLI reference\n\n{clidoc.START}\nstale\n{clidoc.END}\n\nafter\n")
    assert clidoc.write(f, "fresh\n") is True
    assert f.read_text() == f"# Title\n\nintro\n\n## CLI reference\n\n{clidoc.START}\nfresh\n{clidoc.END}\n\nafter\n"
    assert clidoc.write(f, "fresh\n") is False
    g = tmp_path / "NEW.md"
    g.write_text("# Only a title\n")
    clidoc.write(g, "ref\n")
    assert g.read_text() == f"# Only a title\n\n{clidoc.HEADING}\n\n{clidoc.START}\nref\n{clidoc.END}\n"
    (tmp_path / "BAD.md").write_text(f"{clidoc.END}\n{clidoc.START}\n")
    with pytest.raises(SAError, match="markers"):
        clidoc.write(tmp_path / "BAD.md", "ref\n")
    with pytest.raises(SAError, match="does not exist"):
        clidoc.write(tmp_path / "missing.md", "ref\n")


def test_module_prints_the_reference():
    out = subprocess.run([sys.executable, "-m", "sa.clidoc"], capture_output=True, text=True, check=True).stdout
    assert out == clidoc.generate()
