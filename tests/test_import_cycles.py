"""No import cycle among loadtest/ and exporters/ modules, module-level or inside functions.

Why also function-level imports: a cycle hidden behind an import inside a function still means two
modules that cannot be understood (or moved) one without the other. Imports under
``if TYPE_CHECKING:`` never run and are left out. Walks the source with the standard library's ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("loadtest", "exporters")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool):
    """Every (imported name, line) of a module, skipping ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield [alias.name], child.lineno
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                for alias in child.names:  # ``from pkg import sub``: the submodule, else the package
                    yield [f"{source}.{alias.name}", source], child.lineno
            stack.append(child)


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line} over the two packages."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for candidates, line in _imports(tree, name, path.name == "__init__.py"):
            target = next((c for c in candidates if c in modules), None)
            if target is None:
                prefix = candidates[-1].split(".")
                while prefix and ".".join(prefix) not in modules:
                    prefix.pop()
                target = ".".join(prefix) if prefix else None
            if target and target != name:
                graph[name].setdefault(target, line)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_walker_sees_a_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 3}, "d": {"a": 1}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\ndef f():\n    import y\n")
    assert [names for names, _ in _imports(tree, "m", False)] == [["typing.TYPE_CHECKING", "typing"], ["y"]]
    tree = ast.parse("from . import a, b\n")
    assert [names for names, _ in _imports(tree, "p.m", False)] == [["p.a", "p"], ["p.b", "p"]]


def test_the_graph_is_real():
    graph = import_graph()
    assert "loadtest.rundir" in graph["loadtest.load.records"]
    assert "loadtest.load.process" in graph["loadtest.load.lifecycle"]


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    lines = []
    for cycle in cycles:
        members = set(cycle)
        edges = [f"{a} -> {b} (line {graph[a][b]})" for a in cycle for b in graph[a] if b in members]
        lines.append("cycle: " + "; ".join(edges))
    assert not cycles, "\n".join(lines)
