"""The markdown CLI reference, generated from the typer app so README.md cannot drift from `sa --help`.

Walks the click command tree behind `sa.cli.app` and writes, per command, its
usage line, help text and a table of its arguments and options. It reads the
click-style objects typer builds (typer's own vendored click: contexts,
commands, parameters) directly, with no rich rendering, so the text is the
same at any terminal width. `python -m sa.clidoc` prints it; `python -m sa.clidoc --write
README.md` replaces the block between the two markers below.
"""

from __future__ import annotations

import argparse
import enum
import os
import re
import sys
from pathlib import Path, PurePath
from typing import Any, Iterator, Sequence

from sa.errors import SAError

START = "<!-- cli-reference:start -->"
END = "<!-- cli-reference:end -->"
HEADING = "## CLI reference"
REGENERATE = "python -m sa.clidoc --write README.md"


Command = Any  # typer.core.TyperGroup / TyperCommand (typer vendors click, so no isinstance on `click`)
Context = Any
Param = Any


def root_command() -> Command:
    """The click command behind `sa` (typer builds it on demand)."""
    import typer

    from sa.cli import app

    return typer.main.get_command(app)


def is_group(cmd: Command) -> bool:
    """Whether the command has sub-commands."""
    return hasattr(cmd, "list_commands")


def walk(cmd: Command, name: str = "sa", parent: Context | None = None) -> Iterator[tuple[Context, Command]]:
    """Each visible command with its context, parents before children, sub-commands in the group's order."""
    ctx = cmd.context_class(cmd, info_name=name, parent=parent, terminal_width=80, max_content_width=80)
    yield ctx, cmd
    if is_group(cmd):
        for sub in cmd.list_commands(ctx):
            child = cmd.get_command(ctx, sub)
            if child is not None and not child.hidden:
                yield from walk(child, sub, ctx)


def clean_help(text: str | None) -> str:
    """A help text as markdown paragraphs: click's `\\b` no-rewrap markers and trailing spaces dropped."""
    if not text:
        return ""
    text = text.split("\f", 1)[0]
    lines = [ln.rstrip() for ln in text.strip().splitlines() if ln.strip() != "\b"]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def cell(text: Any) -> str:
    """Text safe inside a markdown table cell (one line, pipes escaped)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def usage(ctx: Context, cmd: Command) -> str:
    """The usage line, e.g. `sa cache ls [OPTIONS] [ROOT]`."""
    return " ".join([ctx.command_path, *cmd.collect_usage_pieces(ctx)])


def is_argument(param: Param) -> bool:
    """Positional argument (not an option)."""
    return getattr(param, "param_type_name", "") == "argument"


def is_flag(param: Param) -> bool:
    """An option that takes no value (`--quiet`, `--scan/--no-scan`)."""
    return not is_argument(param) and bool(getattr(param, "is_flag", False))


def param_names(param: Param) -> str:
    """`--out`, `-o` for options (with the `--no-x` form of on/off flags); the metavar for arguments."""
    if is_argument(param):
        return f"`{param.metavar or param.name.upper()}`"
    names = [*param.opts, *(getattr(param, "secondary_opts", None) or [])]
    return ", ".join(f"`{n}`" for n in names)


def param_type(ctx: Context, param: Param) -> str:
    """A short type as typer shows it (int, float, str, path, file, choices a|b), or flag."""
    if is_flag(param):
        return "flag"
    shown = param.display_type(ctx) if hasattr(param, "display_type") else type(param).__name__
    return str(shown).strip("<>")


def param_default(param: Param) -> str:
    """The declared default as written on the command line; 'required' or '' when there is none."""
    if param.required:
        return "required"
    default = param.default
    secondary = getattr(param, "secondary_opts", None)
    if callable(default) or default is None or (is_flag(param) and not secondary and default is False):
        return ""
    if is_flag(param) and secondary:
        return param.opts[0] if default else param.secondary_opts[0]
    if isinstance(default, (list, tuple)):
        return ", ".join(str(v) for v in default) if default else ""
    if isinstance(default, enum.Enum):
        default = default.value
    if isinstance(default, PurePath):
        default = os.fspath(default)
    return str(default)


def params_table(ctx: Context, cmd: Command) -> list[str]:
    """Markdown table rows for the command's arguments and options (not --help, not hidden ones)."""
    rows = []
    for p in cmd.get_params(ctx):
        if getattr(p, "hidden", False) or "--help" in (getattr(p, "opts", None) or []):
            continue
        default = param_default(p)
        rows.append(f"| {cell(param_names(p))} | {cell(param_type(ctx, p))} | {cell(f'`{default}`' if default and default != 'required' else default)} "
                    f"| {cell(clean_help(getattr(p, 'help', None)))} |")
    if not rows:
        return []
    return ["| Argument / option | Type | Default | Description |", "| --- | --- | --- | --- |", *rows]


def command_section(ctx: Context, cmd: Command) -> list[str]:
    """One command's heading, usage, help text, options and (for groups) sub-command list."""
    out = [f"### `{ctx.command_path}`", "", "```text", usage(ctx, cmd), "```", ""]
    text = clean_help(cmd.help)
    if text:
        out += [text, ""]
    table = params_table(ctx, cmd)
    if table:
        out += [*table, ""]
    if is_group(cmd):
        subs = [(n, cmd.get_command(ctx, n)) for n in cmd.list_commands(ctx)]
        lines = [f"- `{ctx.command_path} {n}`: {cell(c.get_short_help_str(limit=300))}" for n, c in subs if c is not None and not c.hidden]
        if lines:
            out += ["Commands:", "", *lines, ""]
    return out


def generate(cmd: Command | None = None, name: str = "sa") -> str:
    """The whole reference as markdown (ends with one newline); the same output on every run and terminal."""
    cmd = cmd or root_command()
    out = [f"<!-- generated by `{REGENERATE}` from the typer app; do not edit by hand -->", "",
           f"Every command also takes `--help`. Regenerate this section with `{REGENERATE}`.", ""]
    for ctx, c in walk(cmd, name):
        out += command_section(ctx, c)
    return "\n".join(out).rstrip() + "\n"


def marked_block(text: str) -> str | None:
    """The text between the markers (None when either marker is missing)."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start + len(START):end].strip("\n") + "\n"


def replace_block(text: str, reference: str) -> str:
    """`text` with the marked block replaced; without markers, a `## CLI reference` section is appended."""
    body = f"{START}\n{reference.rstrip()}\n{END}"
    start, end = text.find(START), text.find(END)
    if start < 0 and end < 0:
        return f"{text.rstrip()}\n\n{HEADING}\n\n{body}\n"
    if start < 0 or end < start:
        raise SAError(f"the markers {START} and {END} are not both present in order; fix them and rerun `{REGENERATE}`.")
    return text[:start] + body + text[end + len(END):]


def write(path: str | os.PathLike[str], reference: str | None = None) -> bool:
    """Replace the marked block of a markdown file with the reference; True when the file changed."""
    f = Path(path)
    if not f.is_file():
        raise SAError(f"{f} does not exist; pass the README to update, e.g. `{REGENERATE}`.")
    old = f.read_text(encoding="utf-8")
    new = replace_block(old, reference if reference is not None else generate())
    if new != old:
        f.write_text(new, encoding="utf-8")
    return new != old


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sa.clidoc [--write FILE]`: print the reference or update FILE's marked block."""
    parser = argparse.ArgumentParser(prog="python -m sa.clidoc", description="Generate the markdown CLI reference of `sa`.")
    parser.add_argument("--write", metavar="FILE", help="Replace the block between the cli-reference markers in FILE (e.g. README.md).")
    args = parser.parse_args(argv)
    try:
        if args.write:
            changed = write(args.write)
            print(f"{'updated' if changed else 'unchanged'}: {args.write}", file=sys.stderr)
        else:
            sys.stdout.write(generate())
    except SAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
