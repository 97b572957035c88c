"""The package's modules import one another in one direction only: no cycles, counting imports inside functions,
imports for type hints only (`if TYPE_CHECKING:`) and the packages a module's import runs (`a.b.c` runs `a/b/__init__`).

Data moves plan -> store -> generate -> score -> analyze; a cycle means two modules reach into each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import styleprobe

ROOT = Path(styleprobe.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["styleprobe", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the styleprobe modules it imports anywhere in its body (a package's submodule counts as itself)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:  # importing a.b.c runs a.b's __init__ too
                parts = t.split(".")
                edges.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
        edges = {t for t in edges if t in modules and t != name and not name.startswith(t + ".")}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 20 and graph["styleprobe.run.sweep"]  # the walk found the package and its imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_analysis_does_not_import_generation():
    """Analysis reads what the store wrote; it never imports the engine, the methods or the CLI."""
    graph = import_graph()
    reach: set[str] = set()
    todo = [m for m in graph if m.startswith("styleprobe.analysis")]
    while todo:
        for nxt in graph[todo.pop()] - reach:
            reach.add(nxt)
            todo.append(nxt)
    generation = ("styleprobe.cli", "styleprobe.run.engine", "styleprobe.run.sweep", "styleprobe.models.loading", "styleprobe.methods")
    assert not {m for m in reach if m.startswith(generation)}, sorted(reach)
