"""The package's layout: no import circles, nothing of the dev tools or torch inside it.

Imports are read with `ast` (nothing is imported): an edge a -> b for each `import`/`from ... import` in
module a that names module b of the package (`from . import x` names the submodule x when there is one,
else the package itself). Two graphs: the module-level imports (what runs at import time; `if
TYPE_CHECKING:` blocks left out) and every import, also those deferred into functions, where the
circles of issue #12 ran (coreml/__init__ -> coreml/cli -> coreml/export -> encoders -> coreml).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dora_primespeech_mlx"
NAME = PACKAGE.name

# Circles through deferred imports that other parts of issue #12 remove (each pair, either direction).
# Remove an entry once its circle is gone; anything else found fails the test.
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(tree: ast.Module, deferred: bool):
    """Import statements of a module: those run at import time, or (deferred) all of them."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if not deferred and (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                             or _is_type_checking(node)):
            continue
        todo.extend(ast.iter_child_nodes(node))


def _known(name: str) -> str | None:
    """The package module `name` refers to (itself, or the module holding the attribute), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(module: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else prefix for a in node.names]
    return [target for target in map(_known, names) if target]


def import_graph(deferred: bool) -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text("utf-8"), str(path))
        targets = {t for node in _import_nodes(tree, deferred)
                   for t in _targets(module, node, path.name == "__init__.py")}
        graph[module] = targets - {module}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), names without the package."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w.removeprefix(NAME + "."))
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_package():
    graph = import_graph(deferred=True)
    assert f"{NAME}.coreml.export" in graph[f"{NAME}.coreml.cli"]  # deferred: inside a function
    assert f"{NAME}.coreml.export" not in import_graph(deferred=False)[f"{NAME}.coreml.cli"]
    assert f"{NAME}.errors" in graph[f"{NAME}.coreml"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles_at_import_time():
    assert circles(import_graph(deferred=False)) == []


def test_no_import_circles_through_deferred_imports():
    assert circles(import_graph(deferred=True)) == []


def test_the_coreml_package_imports_no_submodule_of_its_own():
    """coreml/__init__ is the bottom of the Core ML package: its submodules import it, never the reverse."""
    graph = import_graph(deferred=True)
    assert not {t for t in graph[f"{NAME}.coreml"] if t.startswith(f"{NAME}.coreml.")}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_dev_tool_or_torch_import(module):
    tree = ast.parse(MODULES[module].read_text("utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and not node.level}
    assert not imported & {"torch", "primespeech_devtools", "GPT_SoVITS", "coreml_reference"}
