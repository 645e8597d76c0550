"""The package in layers: every import (at a module's top or inside a function) points down a layer or
stays inside its own subpackage, and no modules import each other in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Bottom to top. A module may import from its own subpackage and from any lower layer.
LAYERS = [
    {"errors", "targets", "console", "groups", "configs", "plugin_configs"},  # what every layer may use
    {"components", "models", "data"},  # (models: the public re-export of components.models)
    {"vectorized"},
    {"engine"},
    {"run"},
    {"lab"},
    {"cli", "completion", "api", "__main__", "__init__", "hydra_plugins"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def modules() -> dict[str, Path]:
    """Dotted name -> file, for the package and its Hydra plugin."""
    found = {}
    for path in [*(REPO / "backprop_lab").rglob("*.py"), *(REPO / "hydra_plugins").rglob("*.py")]:
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def unit(module: str) -> str:
    """The layer unit of a dotted module name: its subpackage, or the top-level module's own name."""
    parts = module.split(".")
    if parts[0] == "hydra_plugins":
        return "hydra_plugins"
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that a file imports anywhere in it (resolved to the longest known name)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if not name.startswith(("backprop_lab", "hydra_plugins.backprop_lab")):
                continue
            while name not in known and "." in name:
                name = name.rpartition(".")[0]
            if name in known:
                found.add(name)
                break
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_no_relative_imports_hide_the_layers():
    relative = [
        f"{name}: line {node.lineno}"
        for name, path in modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert relative == []


def test_every_import_points_down_a_layer():
    upward = []
    for name, targets in graph().items():
        for target in targets:
            here, there = unit(name), unit(target)
            if here == there or there in ("configs", "plugin_configs"):
                continue
            if RANK[there] > RANK[here]:  # (within one layer: allowed, and the cycle test watches it)
                upward.append(f"{name} -> {target}")
    assert upward == [], "imports that point up a layer"


def test_no_import_cycle():
    edges = graph()
    cycles = []

    def visit(node: str, path: list[str], on_path: set[str], done: set[str]) -> None:
        on_path.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt in on_path:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in done:
                visit(nxt, [*path, nxt], on_path, done)
        on_path.discard(node)
        done.add(node)

    done: set[str] = set()
    for start in sorted(edges):
        if start not in done:
            visit(start, [start], set(), done)
    assert cycles == []


def test_the_layer_table_names_every_unit():
    assert {unit(name) for name in modules()} <= set(RANK)
