"""The package's layers, read from its source: imports point down and form no cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hookloop"
BOTTOM = {"events", "_util", "_check", "data", "hyper", "schedules", "metrics"}
CORE = {"callback", "learner", "results"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _runtime_nodes(tree: ast.AST):
    # Every node but those under `if TYPE_CHECKING:`, which exist for type checkers only.
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every hookloop module `name` imports when it runs, at module level or in a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from .callbacks import keras` imports the package and its module keras.
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _layer(module: str) -> str:
    short = module.removeprefix("hookloop.")
    if short in BOTTOM:
        return "bottom"
    if short in CORE:
        return "core"
    return "feature"


def test_the_import_reader_sees_function_level_and_relative_imports(tmp_path):
    # The reader must see a late import, or the tests below could pass on a blind graph.
    path = tmp_path / "mod.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "from ..learner import Learner\n"
        "if TYPE_CHECKING:\n"
        "    from .recorder import Recorder\n"
        "def f():\n"
        "    from .progress import ProgressBar\n"
        "    from .. import _util\n"
    )
    known = {
        "hookloop.learner",
        "hookloop.callbacks.progress",
        "hookloop.callbacks.recorder",
        "hookloop._util",
        "hookloop",
    }
    found = _imports("hookloop.callbacks.mod", path, known)
    assert found == {
        "hookloop.learner",
        "hookloop.callbacks.progress",
        "hookloop._util",
        "hookloop",
    }


@pytest.mark.parametrize("module", sorted(m for m in _graph() if _layer(m) != "feature"))
def test_core_and_bottom_modules_import_no_feature(module):
    deps = _graph()[module]
    features = sorted(d for d in deps if _layer(d) == "feature")
    assert features == [], f"{module} imports features {features}"


@pytest.mark.parametrize("module", sorted(m for m in _graph() if _layer(m) == "bottom"))
def test_bottom_modules_import_only_bottom_modules(module):
    deps = _graph()[module]
    assert sorted(d for d in deps if _layer(d) != "bottom") == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    # Tarjan's strongly connected components; a component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_of_three():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_one_that_imports_it_back():
    assert _cycles(_graph()) == []


def test_callbacks_use_no_private_learner_state():
    pattern = re.compile(r"\blearn(er)?\._")
    hits = [
        f"{p.relative_to(SRC)}:{i}: {line.strip()}"
        for p in sorted((SRC / "callbacks").glob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []
