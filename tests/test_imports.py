"""The package structure: no import circle among the modules of train/ or probe/ (imports inside
functions count too; those under ``if TYPE_CHECKING:`` do not run and do not count), and train never
imports probe."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def import_graph(pkg: str) -> dict[str, set[str]]:
    graph = {}
    for f in sorted((ROOT / pkg).glob("*.py")):
        mod, deps = f"{pkg}.{f.stem}", set()
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):  # drop the type-checking-only imports
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                node.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[mod] = {d for d in deps if d.split(".")[0] in ("train", "probe")} - {mod}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for d in sorted(graph.get(node, ())):
            if state.get(d) == 1:
                return path[path.index(d):] + [d] if d in path else path + [d]
            if d in graph and state.get(d) is None and (found := visit(d, path + [d])):
                return found
        state[node] = 2
        return None

    for start in graph:
        if state.get(start) is None and (found := visit(start, [start])):
            return found
    return None


def test_find_cycle_detects_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("pkg", ["train", "probe"])
def test_no_import_circle(pkg):
    graph = import_graph(pkg)
    graph = {m: {d for d in deps if d.startswith(pkg + ".")} for m, deps in graph.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_train_never_imports_probe():
    bad = {m: sorted(d for d in deps if d.split(".")[0] == "probe") for m, deps in import_graph("train").items()}
    assert not {m: d for m, d in bad.items() if d}
