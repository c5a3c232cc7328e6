"""The package's layout follows the message: layers as folders, each importing only from below.

Every import counts, also inside functions and under ``TYPE_CHECKING``. The root package
(``celery_reliable/__init__.py``, the public API) and ``_moved`` (old paths) stand above all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "celery_reliable"
#: Layers in the order a message meets them; a module may import from its own layer and those before.
LAYERS = ("ground", "store", "message", "broker", "send", "worker", "app", "ops", "contrib")
GROUND = {"config", "settings_rules", "exceptions", "events", "text"}
#: A module longer than this does more than one job.
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports (the deepest module each import statement names)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            subs = [f"{base}.{alias.name}" for alias in node.names]
            targets = subs if all(sub in MODULES for sub in subs) else [base, *subs]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1 or parts[1] in ("_moved",):
        return "top"
    if parts[1] in GROUND:
        return "ground"
    return parts[1]


def test_every_module_is_in_a_layer() -> None:
    assert {layer(name) for name in MODULES} <= {"top", *LAYERS}


def test_no_import_circles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in GRAPH:
        if name not in index:
            visit(name)
    assert circles == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) != "top"))
def test_a_module_imports_only_its_own_layer_and_those_below(name: str) -> None:
    own = LAYERS.index(layer(name))
    above = sorted(dep for dep in GRAPH[name] if layer(dep) == "top" or LAYERS.index(layer(dep)) > own)
    assert above == [], f"{name} ({layer(name)}) imports from a higher layer: {above}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_longer_than_it_should_be(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines"
