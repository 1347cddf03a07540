"""The package's floors, checked: every import points down, and only ``codegen`` asks a target's kind.

Floors, bottom up (a module imports from its own floor or below, inside functions too):

    settings, version -> ir -> passes -> codegen -> storage -> cost_model -> autotune -> compiler -> tilefx

- ``settings`` (every ``TILEFX_*`` variable) imports nothing of tilefx, so any floor may read it;
- ``storage`` (the tuning database) sits above ``codegen`` because its records hold a
  ``Schedule``, and below ``cost_model`` because the cost model learns from it; so no pass can
  reach it: a pass that keeps a decision is handed a store;
- ``tilefx/__init__.py`` and ``__main__.py`` are the public face, above everything.

Imports are read from the source (``ast``), so an import placed inside a function to dodge a
circle counts like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tilefx"
FLOORS = ("settings", "ir", "passes", "codegen", "storage", "cost_model", "autotune", "compiler")
GROUND = ("settings", "version")  # modules of the ground floor (floor 0)
TOP = len(FLOORS)  # tilefx/__init__.py, tilefx/__main__.py


def _floor_of_module(parts: tuple[str, ...]) -> int:
    """Floor of ``tilefx.<parts>`` (parts without the leading "tilefx")."""
    if not parts:
        return TOP
    head = parts[0].removesuffix(".py")
    if head in GROUND:
        return 0
    if head in FLOORS:
        return FLOORS.index(head)
    if head in ("__init__", "__main__"):
        return TOP
    raise AssertionError(f"tilefx.{'.'.join(parts)} is on no floor: add it to FLOORS")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every tilefx import in ``path``, wherever it is."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    package = ["tilefx", *rel.parts[:-1]] if rel.name != "__init__" else ["tilefx", *rel.parts[:-1]]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                names = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
                out += [(node.lineno, m) for m in names]
            elif node.module:
                if node.module == "tilefx":  # from tilefx import settings, compile, ...
                    out += [(node.lineno, f"tilefx.{a.name}") for a in node.names]
                else:
                    out.append((node.lineno, node.module))
    return [(line, m) for line, m in out if m == "tilefx" or m.startswith("tilefx.")]


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _target_floor(module: str) -> int:
    parts = tuple(module.split(".")[1:])
    if parts and parts[0] not in FLOORS + GROUND and parts[0] not in ("__init__", "__main__"):
        return TOP  # a name re-exported by tilefx/__init__.py (tilefx.compile)
    return _floor_of_module(parts)


def test_every_import_points_down():
    violations = []
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        floor = _floor_of_module(rel.parts)
        for line, module in _imports(path):
            if _target_floor(module) > floor:
                violations.append(f"tilefx/{rel}:{line} imports {module}")
    assert not violations, "imports that point up a floor:\n" + "\n".join(violations)


def test_no_import_circles_between_folders():
    edges: dict[str, set[str]] = {}
    for path in _modules():
        src = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        src = "settings" if src in GROUND else src
        for _, module in _imports(path):
            dst = module.split(".")[1] if "." in module else "tilefx"
            dst = "settings" if dst in GROUND else dst
            if dst != src:
                edges.setdefault(src, set()).add(dst)
    # a circle is a pair of folders reachable from each other
    def reach(a: str) -> set[str]:
        seen, todo = set(), [a]
        while todo:
            for b in edges.get(todo.pop(), ()):
                if b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen
    circles = sorted({tuple(sorted((a, b))) for a in edges for b in reach(a) if a in reach(b) and a != b})
    assert not circles, f"folders that import each other: {circles}"


_KINDS = {"cpu", "cuda", "llvm"}


def _is_kind(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "kind" or \
        isinstance(node, ast.Name) and "kind" in node.id and "target" in node.id


def _kind_strings(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in _KINDS
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_kind_strings(e) for e in node.elts)
    return False


def test_only_codegen_asks_a_targets_kind():
    """Everything that depends on the code generator asks ``target.backend()``."""
    found = []
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "codegen":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(_is_kind(s) for s in sides) and any(_kind_strings(s) for s in sides):
                    found.append(f"tilefx/{rel}:{node.lineno}")
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr" and \
                    len(node.args) >= 2 and getattr(node.args[1], "value", None) == "kind":
                found.append(f"tilefx/{rel}:{node.lineno} (getattr kind)")
    assert not found, "target kinds compared outside codegen/:\n" + "\n".join(found)


def test_the_floors_are_the_folders():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(FLOORS) - {"settings"}, folders
