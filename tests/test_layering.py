"""The package layering of DESIGN.md, checked on the source: imports flow search_spaces <-
workers <- nas, db reads only the pure spec, and nothing imports nas.

Every import counts, also those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search_spaces", "workers", "db", "nas")
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}

# (where, what it must not import, why). `where` is a path prefix relative to the repo root.
FORBIDDEN = [
    ("search_spaces/", {"ray", "lightning", "sqlalchemy", "alembic", "workers", "db", "nas"},
     "what a network is needs neither a cluster, a trainer nor a database"),
    ("workers/", {"optuna", "sqlalchemy", "alembic", "db", "nas"},
     "a trial runs on a GPU box that has only torch + lightning"),
    ("db/", {"torch", "ray", "lightning", "optuna", "workers", "nas"},
     "an analyst opens the store without torch"),
]
# Imports allowed only in one module of a package: the edge it is kept to.
ONLY_IN = {"ray": ("workers/", "workers/ray_task.py")}
# The store reads the plain-data spec and nothing else of search_spaces.
DB_MAY_READ = {"search_spaces.spec"}


def imports_of(source: str) -> set[str]:
    """Absolute module names a source imports, at any depth (functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def violations(path: str, source: str) -> list[str]:
    """What the module at `path` (relative, e.g. `db/store.py`) imports against the layering."""
    found = []
    imported = imports_of(source)
    tops = {name.split(".")[0] for name in imported}
    if path == "search_spaces/spec.py":
        found += [f"{path} imports {t} (spec.py is standard library only: the store reads it)"
                  for t in sorted(tops - STDLIB)]
    for prefix, banned, why in FORBIDDEN:
        if path.startswith(prefix):
            found += [f"{path} imports {t}: {why}" for t in sorted(tops & banned)]
    for top, (prefix, home) in ONLY_IN.items():
        if path.startswith(prefix) and path != home and top in tops:
            found.append(f"{path} imports {top}: only {home} may")
    if path.startswith("db/"):
        found += [f"{path} imports {name}: db reads only {', '.join(sorted(DB_MAY_READ))}"
                  for name in sorted(imported)
                  if name.split(".")[0] == "search_spaces" and name not in DB_MAY_READ]
    return found


def test_the_packages_import_only_downward():
    found = []
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            path = file.relative_to(ROOT).as_posix()
            found += violations(path, file.read_text(encoding="utf-8"))
    assert not found, "layering broken:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("path", "source", "named"),
    [
        ("db/store.py", "def f():\n    from nas.search import run_search\n", "nas"),
        ("db/views.py", "import torch\n", "torch"),
        ("db/store.py", "from search_spaces.builder import build_model\n", "search_spaces.builder"),
        ("workers/trial.py", "import optuna\n", "optuna"),
        ("workers/data.py", "import ray\n", "only workers/ray_task.py"),
        ("search_spaces/space.py", "import lightning.pytorch as pl\n", "lightning"),
        ("search_spaces/spec.py", "import torch\n", "standard library only"),
    ],
)
def test_an_upward_import_is_caught(path, source, named):
    found = violations(path, source)
    assert found and named in found[0]


def test_allowed_imports_pass():
    assert violations("workers/ray_task.py", "import ray\nfrom workers import run_trial\n") == []
    assert violations("db/store.py", "from search_spaces.spec import ArchitectureSpec\n") == []
    assert violations("nas/search.py", "import ray, optuna, torch, sqlalchemy\n") == []
