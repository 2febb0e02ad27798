"""The crisp package's import graph: no module imports one that imports it back.

Read from the sources with ast, so imports inside functions count too (they run, only later).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "crisp"


def module_names() -> set[str]:
    return {"crisp" if path.name == "__init__.py" else f"crisp.{path.stem}" for path in PACKAGE.glob("*.py")}


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The crisp modules one file imports (anywhere in it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
            # `from crisp import settings` imports the module crisp.settings
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found |= submodules or {node.module}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    graph = {}
    for path in PACKAGE.glob("*.py"):
        name = "crisp" if path.name == "__init__.py" else f"crisp.{path.stem}"
        graph[name] = imported_modules(path, modules) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports (a -> b -> ... -> a), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_crisp_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_configuration_loading_sits_above_task_resolution():
    graph = import_graph()
    assert "crisp.tasks" in graph["crisp.config"]
    assert "crisp.config" not in graph["crisp.tasks"]


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_the_cycle_finder_finds_circles_and_only_circles(graph, expected):
    assert find_cycle(graph) == expected
