"""The package layering of DESIGN.md, checked on the source: imports flow search_spaces <-
workers <- nas, db reads only the pure spec, and nothing imports nas.

Every import counts, also those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import re
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


# -- inside `nas` ------------------------------------------------------------------------------
# Modules that import other nas modules inside functions on purpose: the CLI keeps
# `nas --help` fast by importing a command's machinery (torch, Ray) only when it runs, and
# the package's exports (`from nas import run_search`) load on first use for the same reason.
LAZY_NAS_IMPORTS_ALLOWED = ("nas/cli", "nas/__init__.py")
# Private symbols of our dependencies (DESIGN.md: public APIs only; Ray's in one module).
PRIVATE = re.compile(r"optuna[a-z_.]*\._|_CachedStorage|\._storage\b|\._study_id|ray\._private|ray\._common")
PRIVATE_RAY_HOME = "nas/cluster.py"


def nas_imports(path: str, source: str) -> tuple[set[str], set[str]]:
    """(nas modules imported at module level, nas modules imported inside functions);
    `from nas import pool` counts as `nas.pool`."""

    def named(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Import):
            return {a.name for a in node.names if a.name.startswith("nas.")}
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "nas":
                return {f"nas.{a.name}" for a in node.names}
            if node.module.startswith("nas."):
                return {node.module}
        return set()

    tree = ast.parse(source)
    top = set().union(*(named(n) for n in tree.body))
    every = set().union(*(named(n) for n in ast.walk(tree)))
    return top, every - top


def module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle of `graph` (module -> modules it imports), each once."""
    found, seen = [], set()

    def walk(node: str, stack: list[str]) -> None:
        if node in stack:
            circle = stack[stack.index(node):]
            key = frozenset(circle)
            if key not in seen:
                seen.add(key)
                found.append([*circle, node])
            return
        for nxt in sorted(graph.get(node, ())):
            walk(nxt, [*stack, node])

    for start in sorted(graph):
        walk(start, [])
    return found


def nas_graph(files: dict[str, str]) -> tuple[dict[str, set[str]], list[str]]:
    """The import graph of the nas modules in `files` (path -> source), every import counted,
    and the function-level nas imports that are not allowed."""
    graph, lazy = {}, []
    for path, source in files.items():
        top, inner = nas_imports(path, source)
        graph[module_name(path)] = top | inner
        if inner and not path.startswith(LAZY_NAS_IMPORTS_ALLOWED):
            lazy += [f"{path} imports {n} inside a function" for n in sorted(inner)]
    return graph, lazy


def test_nas_modules_import_each_other_without_circles():
    files = {f.relative_to(ROOT).as_posix(): f.read_text(encoding="utf-8")
             for f in sorted((ROOT / "nas").rglob("*.py"))}
    graph, lazy = nas_graph(files)
    assert not cycles(graph), "import circles inside nas: " + "; ".join(
        " -> ".join(c) for c in cycles(graph))
    assert not lazy, "function-level nas imports hide the order of the modules:\n" + "\n".join(lazy)


def test_an_import_circle_inside_nas_is_caught():
    files = {"nas/search.py": "from nas.pool import up\n",
             "nas/pool.py": "def f():\n    from nas.search import run_search\n"}
    graph, lazy = nas_graph(files)
    assert cycles(graph) == [["nas.pool", "nas.search", "nas.pool"]]
    assert lazy == ["nas/pool.py imports nas.search inside a function"]


def test_no_private_symbols_of_optuna_anywhere_and_of_ray_only_in_the_cluster_module():
    found = []
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            path = file.relative_to(ROOT).as_posix()
            for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
                match = PRIVATE.search(line)
                if match and not (path == PRIVATE_RAY_HOME and match.group().startswith("ray.")):
                    found.append(f"{path}:{n}: {line.strip()}")
    assert not found, "private symbols:\n" + "\n".join(found)


# -- size --------------------------------------------------------------------------------------
# One job per module: past these a module (or class) is doing several (DESIGN.md, "Inside nas").
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 300


def oversized(path: str, source: str) -> list[str]:
    found = []
    lines = source.count("\n") + 1
    if lines > MAX_MODULE_LINES:
        found.append(f"{path}: {lines} lines (at most {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_CLASS_LINES:
                found.append(f"{path}: class {node.name} has {length} lines (at most {MAX_CLASS_LINES})")
    return found


def test_no_nas_module_or_class_does_several_jobs():
    found = []
    for file in sorted((ROOT / "nas").rglob("*.py")):
        found += oversized(file.relative_to(ROOT).as_posix(), file.read_text(encoding="utf-8"))
    assert not found, "\n".join(found)


def test_an_oversized_class_is_caught():
    body = "class Big:\n" + "    x = 1\n" * MAX_CLASS_LINES
    assert oversized("nas/x.py", body) == [f"nas/x.py: class Big has {MAX_CLASS_LINES + 1} lines (at most {MAX_CLASS_LINES})"]
