"""recipe/ is layered: a package imports only the packages below it (its docstring's contract).

Every import statement counts, function-level ones too: a lazy import is still a dependency
(of the code, and of the DVC stages that load it; tests/test_deps.py)."""
from __future__ import annotations

import ast
import importlib

import pytest

from conftest import REPO

# package: the packages it may import (besides itself), bottom to top
ALLOWED = {
    "core": set(),
    "track": {"core"},
    "data": {"core"},
    "report": {"core", "data"},
    "train": {"core", "data", "report"},
    "decide": {"core", "data", "report", "train"},
    "ship": {"core", "track", "data", "report", "train", "decide"},
    "search": {"core", "track"},
    "compare": {"core", "track"},
}


def imports_of(path) -> set[str]:
    """The recipe packages named by any import in ``path`` (``recipe.train.fit`` -> ``train``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + ([f"recipe.{a.name}" for a in node.names] if node.module == "recipe" else [])
        found |= {n.split(".")[1] for n in names if n.startswith("recipe.")}
    return found


def test_every_package_is_in_the_table_and_has_a_contract():
    packages = {p.name for p in (REPO / "recipe").iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED)
    for name in ALLOWED:
        doc = importlib.import_module(f"recipe.{name}").__doc__ or ""
        assert "Imports:" in doc or name == "search", f"recipe/{name}/__init__.py: say what it may import"
    assert imports_of(REPO / "recipe" / "__init__.py") == set()


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_packages_below_it(package):
    bad = {}
    for path in sorted((REPO / "recipe" / package).rglob("*.py")):
        above = imports_of(path) - ALLOWED[package] - {package}
        if above:
            bad[path.relative_to(REPO).as_posix()] = sorted(above)
    assert not bad, f"recipe/{package} may import only {sorted(ALLOWED[package])}: {bad}"


def test_the_table_is_acyclic():
    order = []
    todo = dict(ALLOWED)
    while todo:
        ready = [p for p, deps in todo.items() if deps <= set(order)]
        assert ready, f"a cycle among {sorted(todo)}"
        order += sorted(ready)
        for p in ready:
            del todo[p]
    assert order[0] == "core"
