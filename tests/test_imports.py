"""The package's imports run one way, down the pipeline, and never in a cycle.

Walks every module's source (imports inside functions and TYPE_CHECKING blocks
count too: hiding an import in a function does not remove the dependency) and
checks two rules: no cycle among modules, and no import of a later room from an
earlier one (extract or cache importing train, say).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("SA_SOURCE_ROOT") or Path(__file__).resolve().parents[1])

# Rooms in pipeline order; a module may import its own room and the ones before it.
RANKS = {
    "sa": 0, "sa._compat": 0, "sa.errors": 0, "sa.progress": 0, "sa.clikit": 0,
    "sa.cache": 1,
    "sa.extract": 2,
    "sa.brain": 3,
    "sa.train": 4,
    "sa.decode": 5,
    "sa.report": 6,
    "sa.demo": 7, "sa.cli": 7, "sa.clidoc": 7,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["sa", *parts])


def _modules() -> dict[str, Path]:
    out = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d.isidentifier() and d not in {"tests", "bench", "docs", "build"}]
        for name in files:
            if name.endswith(".py"):
                path = Path(folder) / name
                out[_module_name(path)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The sa module an import name refers to (a module, or a name inside one)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(mod: str) -> set[str]:
    tree = ast.parse(MODULES[mod].read_text())
    is_pkg = MODULES[mod].name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod if is_pkg else mod.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names = [f"{module}.{a.name}" for a in node.names] + [module]
        for name in names:
            target = _resolve(name)
            if target and target != mod:
                found.add(target)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _rank(mod: str) -> int:
    parts = mod.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in RANKS:
            return RANKS[prefix]
    raise KeyError(mod)


def test_every_module_belongs_to_a_room():
    unplaced = []
    for m in MODULES:
        try:
            _rank(m)
        except KeyError:
            unplaced.append(m)
    assert not unplaced, f"modules in no room of RANKS: {unplaced}"


def test_imports_run_down_the_pipeline():
    upward = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() for t in ts if _rank(t) > _rank(m))
    assert not upward, "imports running up the pipeline:\n" + "\n".join(upward)


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("room", ["sa.brain", "sa.train", "sa.decode", "sa.report"])
def test_rooms_have_a_docstring_and_public_api(room):
    init = MODULES[room]
    tree = ast.parse(init.read_text())
    assert ast.get_docstring(tree), f"{init} has no module docstring"
    assert any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets)
               for n in tree.body), f"{init} defines no __all__"
