"""The layout rules of DESIGN.md, checked on the source: no import circle between medseg's modules
(imports inside functions count too: a lazy import hides a circle, it does not remove it), no
module over 500 lines, and no task name tested outside the task registry."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("medseg", "kernels", "datasets", "plans")
MAX_LINES = 500


def modules(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph(package: str) -> dict[str, set[str]]:
    """module -> the package's modules it imports. ``from pkg import submodule`` is an edge to the
    submodule, and importing ``a.b.c`` is also an edge to the packages ``a`` and ``a.b``: their
    __init__ runs first (a module's own enclosing packages are already running, so they are no edge)."""
    known = modules(package)
    graph = {}
    for name, path in known.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parents = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(parents + ([base] if base else []))
                submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
                edges.update(submodules)
                if len(submodules) < len(node.names):
                    edges.add(base)
        enclosing = {".".join(here.split(".")[:i]) for i in range(1, len(here.split(".")) + 1)}
        packages = {".".join(edge.split(".")[:i]) for edge in edges for i in range(1, len(edge.split(".")))}
        graph[name] = {edge for edge in edges | (packages - enclosing) if edge in known and edge != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circles(package):
    graph = import_graph(package)
    found = circles(graph)
    shown = ["; ".join(f"{m} -> {', '.join(sorted(graph[m] & set(c)))}" for m in c) for c in found]
    assert not found, "import circles:\n" + "\n".join(shown)


def test_no_task_name_is_tested_outside_the_task_registry():
    """Surfaces ask for capabilities (medseg.tasks.capabilities); a comparison with a task's name
    outside medseg/tasks/ is a side door."""
    from medseg.tasks import list_tasks

    names = "|".join(re.escape(task.name) for task in list_tasks())
    comparison = re.compile(rf"""(==|!=|\bin)\s*\(?\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    offenders = []
    for path in sorted((REPO / "medseg").rglob("*.py")):
        if "tasks" in path.relative_to(REPO / "medseg").parts[:1]:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if comparison.search(line) and "LAYOUT" not in line:
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_over_500_lines(package):
    long = {str(path.relative_to(REPO)): n for path in modules(package).values() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"
