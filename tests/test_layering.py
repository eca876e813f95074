"""The package is layered: library ← zoo ← bench ← demo ← cli; a module imports only its own layer or lower ones.

* **library** (everything not named below: ``adapt/``, ``merge/``, ``compress/``, ``analyze/``, ``decompose/``,
  ``io/``, ``report/``, ``align/``, ``backends/``, ``units.py``, ``collection.py``, ``errors.py``, ``_*.py`` …)
  never imports the zoos, the harnesses, the CLI or the demo, nor the top-level ``weightspace`` package (a cycle
  through the public facade, which re-exports from every layer);
* **zoo** (built-in model collections) is a leaf used only by ``bench/``, ``demo/`` and ``cli/`` (and tests);
  like the library, it does not import the top-level package;
* **bench** (experiment harnesses) reads zoos and calls the library;
* **demo** runs the harnesses; **cli** sits on top of everything.

Every ``import``/``from … import`` in every module is checked, including the lazy ones inside functions and the
ones under ``TYPE_CHECKING``, as well as ``importlib.import_module("…")`` with a literal name. The top-level
``weightspace/__init__.py`` (the facade, which lazily re-exports names from any layer) and ``__main__.py`` (which
runs the CLI) are the two exceptions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import weightspace

ROOT = Path(weightspace.__file__).resolve().parent
PACKAGE = "weightspace"

#: Layer of each top-level subpackage above the library; any other module is part of the library (layer 0).
LAYERS = {"zoo": 1, "bench": 2, "demo": 3, "cli": 4}
LAYER_NAMES = ["library", "zoo", "bench", "demo", "cli"]

#: Modules outside the layering: the public facade and ``python -m weightspace``.
EXEMPT = {"weightspace/__init__.py", "weightspace/__main__.py"}

#: (module, imported name) pairs allowed to break the rules (none today; the stale-entry test below keeps it honest).
_KNOWN_PENDING: set[tuple[str, str]] = set()


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT.parent).as_posix()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            if module == PACKAGE:  # `from weightspace import zoo` also imports the subpackage `weightspace.zoo`
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names if alias.name != "*"]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def _layer_of_module(name: str) -> int:
    parts = name.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def _layer_of_path(path: Path) -> int:
    parts = path.relative_to(ROOT).parts
    return LAYERS.get(parts[0], 0) if len(parts) > 1 else 0


def _violations(path: Path) -> list[tuple[str, int, str, str]]:
    """``(module, line, imported name, reason)`` for every import that breaks the layering."""
    rel = _rel(path)
    if rel in EXEMPT:
        return []
    own = _layer_of_path(path)
    out = []
    for line, name in _imports(path):
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            continue  # third-party or standard library
        if name == PACKAGE:
            if own <= LAYERS["zoo"]:
                out.append((rel, line, name, "imports the top-level package (import its submodule instead)"))
            continue
        target = _layer_of_module(name)
        if target > own:
            out.append((rel, line, name, f"{LAYER_NAMES[own]} module imports the {LAYER_NAMES[target]} layer"))
    return out


def test_the_scan_sees_the_package() -> None:
    rels = {_rel(p) for p in _modules()}
    for expected in ("weightspace/merge/_apply.py", "weightspace/bench/merge.py", "weightspace/zoo/_base.py"):
        assert expected in rels
    # The scanner resolves absolute, relative and `from pkg import sub` imports, lazy ones included.
    names = {n for _, n in _imports(ROOT / "cli" / "_merge_cmd.py")}
    assert {"weightspace.bench", "weightspace.merge", "weightspace.collection"} <= names


@pytest.mark.parametrize("path", _modules(), ids=_rel)
def test_module_respects_the_layering(path: Path) -> None:
    bad = [v for v in _violations(path) if (v[0], v[2]) not in _KNOWN_PENDING]
    assert not bad, "\n".join(f"{m}:{line}: {name}: {why}" for m, line, name, why in bad)


def test_zoo_is_imported_only_by_bench_demo_and_cli() -> None:
    allowed = {"zoo", "bench", "demo", "cli"}
    importers = set()
    for path in _modules():
        if any(n == "weightspace.zoo" or n.startswith("weightspace.zoo.") for _, n in _imports(path)):
            importers.add(_rel(path))
    outside = {p for p in importers - EXEMPT if p.split("/")[1] not in allowed}
    assert not outside, f"weightspace.zoo imported from {sorted(outside)}"
    assert any(p.startswith("weightspace/bench/") for p in importers)


def test_known_pending_entries_are_still_needed() -> None:
    """An entry whose module no longer breaks the rule must go, so the allow-list only ever shrinks."""
    current = {(m, name) for path in _modules() for m, _, name, _ in _violations(path)}
    stale = sorted(_KNOWN_PENDING - current)
    assert not stale, f"remove these fixed entries from _KNOWN_PENDING: {stale}"


def test_no_private_module_of_another_subpackage_is_imported() -> None:
    """``weightspace.<sub>._x`` is imported only inside ``<sub>``; shared top-level ``weightspace._x`` are fine."""
    bad = []
    for path in _modules():
        parts = path.relative_to(ROOT).parts
        own = parts[0] if len(parts) > 1 else None
        for line, name in _imports(path):
            pieces = name.split(".")
            if pieces[0] != PACKAGE or len(pieces) < 3 or pieces[1] == own:
                continue
            if any(piece.startswith("_") for piece in pieces[2:]):
                bad.append(f"{_rel(path)}:{line}: {name}")
    assert not bad, "\n".join(bad)
