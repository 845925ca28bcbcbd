"""The package's layers (its docstring) hold: imports point to the same or an earlier layer, and the
import graph, function-level imports included, has no circle."""
import ast
import re
from pathlib import Path

import pytest

import longtail

PACKAGE = Path(longtail.__file__).parent


def declared_layers(doc: str) -> list[list[str]]:
    """The numbered layer list of the package docstring: ``N. name: module, module``."""
    return [[m.strip() for m in mods.split(",")] for mods in re.findall(r"^\d+\. [^:]+: (.+)$", doc, re.M)]


def imports_of(path: Path, modules: set[str]) -> dict[str, int]:
    """{imported package module: line} of every import in ``path``, at module level and in functions."""
    found = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            elif node.module == "longtail":
                names = [a.name for a in node.names]
            elif node.module and node.module.startswith("longtail."):
                names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("longtail.")]
        for name in names:
            if name in modules:
                found.setdefault(name, node.lineno)
    return found


def layer_problems(layers: list[list[str]], edges: dict[str, dict[str, int]]) -> list[str]:
    """Upward imports (to a later layer), modules in no layer or in two, and import circles."""
    layer_of = {}
    problems = []
    for i, layer in enumerate(layers):
        for m in layer:
            if m in layer_of:
                problems.append(f"{m} is in two layers")
            layer_of[m] = i
    problems += [f"{m} is in no layer of the package docstring" for m in sorted(edges) if m not in layer_of]
    for m, targets in sorted(edges.items()):
        for t, line in sorted(targets.items()):
            if m in layer_of and t in layer_of and layer_of[t] > layer_of[m]:
                problems.append(f"{m}.py:{line} imports {t}, a later layer ({layer_of[t] + 1} > {layer_of[m] + 1})")
    state: dict[str, int] = {}  # depth-first search: 1 on the path, 2 done

    def visit(m, path):
        state[m] = 1
        for t in edges.get(m, {}):
            if state.get(t) == 1:
                problems.append("import circle: " + " -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2
    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    return problems


def package_edges() -> dict[str, dict[str, int]]:
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {m: {t: line for t, line in imports_of(PACKAGE / f"{m}.py", modules).items() if t != m}
            for m in sorted(modules)}


def test_the_package_imports_downward_only_and_without_circles():
    layers = declared_layers(longtail.__doc__)
    assert len(layers) == 7 and "run" in layers[4]
    assert layer_problems(layers, package_edges()) == []


def test_function_level_imports_are_read_too():
    edges = package_edges()
    assert "imagecache" in edges["data"] and "models" in edges["data"]  # module level, and inside missing_inputs
    assert "methods" in edges["leaderboard"]  # only inside method_family


@pytest.mark.parametrize("edges, problem", [
    ({"low": {"high": 3}, "high": {}}, "low.py:3 imports high, a later layer (2 > 1)"),
    ({"high": {"other": 5}, "other": {"high": 9}}, "import circle: high -> other -> high"),
    ({"high": {}, "stray": {}}, "stray is in no layer of the package docstring"),
])
def test_the_check_finds_an_upward_import_a_circle_and_a_stray_module(edges, problem):
    layers = declared_layers("1. bottom: low\n2. top: high, other\n")
    assert problem in layer_problems(layers, edges)


def test_upward_edges_of_the_old_package_are_found():
    """The circle this layering removed: partial imported run's helpers while run imported partial."""
    layers = declared_layers(longtail.__doc__)
    edges = package_edges()
    edges["partial"] = {**edges["partial"], "run": 122}
    assert "import circle: partial -> run -> partial" in layer_problems(layers, edges)
