"""The import graph of `ttt_core`: no cycles, and the model side never reaches the training loop.

The graph is read from the source (AST), not by importing: every `import` and `from ... import`
statement of every module counts, at module level and inside functions or classes alike (an import
inside a function is a dependency that is merely paid later). Imports under `if TYPE_CHECKING:` are
ignored: they never run. `from PACKAGE import NAME` is an edge to the submodule `PACKAGE.NAME` when
that is a module of the package, else to `PACKAGE`. A package's `__init__` is a node like any other
module; importing `a.b.c` is an edge to `a.b.c` only (its parents' `__init__` run too, but an
`__init__` that imports nothing adds no dependency).

The test walks whatever files the package has, so modules added, split or moved are covered.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "ttt_core"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
# these modules hold the model and its objective: they must never need the training loop
MODEL_SIDE = ("ttt_core.model", "ttt_core.inner", "ttt_core.objective")
TRAIN = "ttt_core.train"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    """Every import statement, skipping the bodies of `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The `ttt_core` modules that module `name` imports."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            while target and target not in known:  # `import ttt_core.a.b as x` where only ttt_core.a exists
                target = target.rpartition(".")[0]
            if target and target != name and (target == PACKAGE or target.startswith(PACKAGE + ".")):
                found.add(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    found = modules(root)
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """The strongly connected components with more than one module (Tarjan): (members, one cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # the graph is small: recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [(component, _cycle_path(graph, set(component))) for component in components]


def _cycle_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One concrete cycle through a strongly connected component, for the failure message."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        nxt = sorted(graph[path[-1]] & component)
        back = [n for n in nxt if n in seen]
        if start in nxt or back:
            closing = start if start in nxt else back[0]
            return [*path[path.index(closing):], closing]
        step = next(n for n in nxt if n not in seen)
        path.append(step)
        seen.add(step)


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module reachable from `start`, mapped to the module that imports it on one path."""
    parent = {start: ""}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    return parent


def chain(parent: dict[str, str], end: str) -> str:
    links = [end]
    while parent[links[-1]]:
        links.append(parent[links[-1]])
    return " -> ".join(reversed(links))


def test_the_graph_sees_imports_inside_functions_and_skips_type_checking(tmp_path):
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from ttt_core.sub import b\n")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ttt_core import c\nfrom .. import a\n"
    )
    (package / "c.py").write_text("import ttt_core.a as x\n")
    graph = import_graph(package)
    assert graph == {
        "ttt_core": set(), "ttt_core.a": {"ttt_core.sub.b"}, "ttt_core.c": {"ttt_core.a"},
        "ttt_core.sub": set(), "ttt_core.sub.b": {"ttt_core.a"},
    }
    assert cycles(graph) == [(["ttt_core.a", "ttt_core.sub.b"], ["ttt_core.a", "ttt_core.sub.b", "ttt_core.a"])]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles in ttt_core:\n" + "\n".join(
        f"{' -> '.join(path)} (all of {', '.join(members)} reach each other)" for members, path in found
    )


@pytest.mark.parametrize("module", MODEL_SIDE)
def test_the_model_side_does_not_import_training(module):
    graph = import_graph()
    if module not in graph:
        pytest.skip(f"{module} does not exist")
    parent = reachable(graph, module)
    into_train = [m for m in parent if m == TRAIN or m.startswith(TRAIN + ".")]
    assert not into_train, f"{module} imports {TRAIN}: " + chain(parent, into_train[0])


def test_training_in_one_process_does_not_import_deepspeed_ranks():
    """`ttt_core.distributed` builds on `ttt_core.train` (its engine is a step backend), never the
    reverse; only the `[deepspeed]` table's checks (`distributed.config`, which recipe validation uses)
    are shared."""
    graph = import_graph()
    shared = {"ttt_core.distributed", "ttt_core.distributed.config"}
    for module in sorted(m for m in graph if m == TRAIN or m.startswith(TRAIN + ".")):
        parent = reachable(graph, module)
        found = [m for m in parent if m.startswith("ttt_core.distributed") and m not in shared]
        assert not found, f"{module} imports ttt_core.distributed: " + chain(parent, found[0])
