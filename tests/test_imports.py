"""The package structure: no import circle among the modules of train/ or probe/ (imports inside
functions and under ``if TYPE_CHECKING:`` count too), train never imports probe, no module is past
about 500 lines, and no code of the project uses a module name from before the grouping by stage."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def module_name(f: Path) -> str:
    parts = f.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(pkg: str) -> dict[str, set[str]]:
    """Every module of ``pkg`` (sub-packages included) -> the train/probe modules it imports anywhere:
    at the top, inside functions, and under ``if TYPE_CHECKING:`` (a type-only import still ties the
    two modules together); ``from a.b import c`` counts ``a.b.c`` when ``c`` is a module."""
    files = sorted((ROOT / pkg).rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph = {}
    for f in files:
        mod, deps = module_name(f), set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules
                deps |= subs or {node.module}
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


def test_no_module_is_past_500_lines():
    long = {str(f.relative_to(ROOT)): n for pkg in ("train", "probe") for f in (ROOT / pkg).rglob("*.py")
            if (n := len(f.read_text().splitlines())) > 500}
    assert not long


def test_the_project_uses_the_new_module_names_and_the_old_ones_still_import():
    import importlib

    from train.moved import MOVED

    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new)
    users = {module: sorted(d for d in deps if d in MOVED)
             for pkg in ("train", "probe") for module, deps in import_graph(pkg).items()}
    assert not {m: d for m, d in users.items() if d}
