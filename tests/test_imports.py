"""The `humandiff` package has no import cycles, counting function-level imports too (they only hide a cycle).

The graph is read from the source (no module is imported): every `import humandiff...` / `from humandiff... import`
statement anywhere in a module, at top level or inside a function, is an edge to the most specific humandiff module
it names (`from humandiff.weights import io` -> `humandiff.weights.io`; `from humandiff.weights import load_unet`
-> the package `humandiff.weights`).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "humandiff"
# Removed by splitting train.py (evals.main imports train for use_cpu_devices; train imports evals).


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _targets(node: ast.AST, current: str, is_package: bool, modules: dict) -> list[tuple[str, str]]:
    """`(module, how)` for each humandiff module an import statement names."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolve against the importing module's package
            base = current.split(".") if is_package else current.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        names = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
    else:
        return []
    out = []
    for name in names:
        while name and name not in modules:  # `import humandiff.a.b` of a name inside a module: that module
            name = name.rpartition(".")[0]
        if name.split(".")[0] == PACKAGE and name:
            out.append((name, f"line {node.lineno}"))
    return out


def import_graph() -> dict[str, dict[str, str]]:
    """`{module: {imported module: "line N"}}` over every module of the package (N: its first import there)."""
    modules = _modules()
    graph: dict[str, dict[str, str]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in sorted((n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))),
                           key=lambda n: n.lineno):
            for target, how in _targets(node, name, path.name == "__init__.py", modules):
                if target != name:
                    edges.setdefault(target, how)
    return graph


def cyclic_components(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, each sorted (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def find_cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """One cycle (`[a, b, ..., a]`) per cyclic component."""
    return [_cycle_in(graph, set(c)) for c in cyclic_components(graph)]


def _cycle_in(graph: dict[str, dict[str, str]], comp: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first inside the component)."""
    start = min(comp)
    parent: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                path = [v]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return path[::-1] + [start]
            if w in comp and w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle through {start} in {sorted(comp)}")


def describe(graph: dict[str, dict[str, str]], cycle: list[str]) -> str:
    """`a (line 3) -> b (line 107) -> a`: each arrow names the line of the import in the module before it."""
    steps = [f"{a} ({graph[a][b]}) -> " for a, b in zip(cycle, cycle[1:])]
    return "".join(steps) + cycle[-1]


def test_graph_sees_top_level_and_function_level_imports():
    graph = import_graph()
    assert "humandiff.weights.io" in graph["humandiff.weights.diffusers"]  # from humandiff.weights import io
    assert "humandiff.config_lib" in graph["humandiff.training.evals"]  # imported inside main()
    assert "humandiff.weights.diffusers" in graph["humandiff.weights"]  # a package's __init__ counts too


def test_cycle_finder_names_the_cycle():
    graph = {"a": {"b": "line 1"}, "b": {"c": "line 2"}, "c": {"a": "line 9"}, "d": {"a": "line 4"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert describe(graph, ["a", "b", "c", "a"]) == "a (line 1) -> b (line 2) -> c (line 9) -> a"
    assert find_cycles({"a": {"b": "line 1"}, "b": {}}) == []


def test_media_is_a_leaf():
    """It reads and writes files for every layer, so it imports none of them."""
    assert not import_graph()["humandiff.media"]


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe(graph, c) for c in cycles)
