"""The import rules of docs/architecture.md, read from every module's imports (ast, no importing):
arrows point down (jobs -> beacon_cli -> pipelines -> beacon_actors -> snapshots -> beacon), the
engine imports neither Ray nor Lance, and only the store's table modules touch Lance."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# top to bottom: a package may import the ones after it, never those before it
LAYERS = ("jobs", "beacon_cli", "pipelines", "beacon_actors", "snapshots", "beacon")
LANCE = {"lance", "lancedb"}
# third-party packages a layer may not import (the engine runs where only torch/transformers/pyarrow are)
FORBIDDEN = {
    "beacon": {"ray", *LANCE, "pandas", "click"},
    "snapshots": {"ray", "click"},
    "beacon_actors": {"click"},
    "pipelines": {"click"},
}
LANCE_MODULES = {"snapshots/tables.py", "snapshots/search.py"}  # the only modules that import Lance


def imports_of(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, anywhere in it (functions included);
    relative imports count as the file's own package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = path.relative_to(ROOT).parts[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(own if node.level else (node.module or "").split(".")[0])
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", LAYERS)
def test_arrows_point_down(package):
    above = set(LAYERS[: LAYERS.index(package)]) | {"bench", "tests"}
    wrong = {
        f"{p.relative_to(ROOT)} imports {name}" for p in modules(package) for name in imports_of(p) if name in above
    }
    assert sorted(wrong) == [], f"{package} may import only {LAYERS[LAYERS.index(package) + 1 :]}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_forbidden_third_party_imports(package):
    wrong = {
        f"{p.relative_to(ROOT)} imports {name}"
        for p in modules(package)
        for name in imports_of(p)
        if name in FORBIDDEN[package]
    }
    assert sorted(wrong) == []


def test_only_the_table_modules_import_lance():
    wrong = {
        p.relative_to(ROOT).as_posix()
        for package in LAYERS
        for p in modules(package)
        if imports_of(p) & LANCE and p.relative_to(ROOT).as_posix() not in LANCE_MODULES
    }
    assert sorted(wrong) == []


def test_the_rules_see_real_imports():
    """The checker itself: it finds imports in functions and relative ones, so a rule can fail."""
    assert "ray" in imports_of(ROOT / "pipelines" / "cluster.py")
    assert "lance" in imports_of(ROOT / "snapshots" / "tables.py")
    assert "beacon" in imports_of(ROOT / "beacon" / "engine.py")  # `from .forward import ...`
    assert all(modules(p) for p in LAYERS)
