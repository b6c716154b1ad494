"""resnas: neural-architecture search over residual topologies.

The library behind the `nas` command::

    from nas import Store, build_config, export_bundle, run_search

    config = build_config({}, {"study": "py", "trials": 8, "train": {"epochs": 4}}, "python")
    summary = run_search(config)
    export_bundle(Store(config.storage), config.study, "exports/py")

Names load on first use: `import nas` stays cheap (the CLI imports it for `nas --help`),
and torch, Ray and Optuna load only with the functions that need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> (module, its name there). Never a submodule's own name (`nas.export`): once that
# submodule is imported, the package attribute is the module, not the function.
_EXPORTS = {
    "SearchConfig": ("nas.config", "SearchConfig"),
    "build_config": ("nas.config", "build_config"),
    "load_config_file": ("nas.config", "load_config_file"),
    "run_search": ("nas.search", "run_search"),
    "SearchSummary": ("nas.events", "SearchSummary"),
    "TrialEvent": ("nas.events", "TrialEvent"),
    "Progress": ("nas.events", "Progress"),
    "export_bundle": ("nas.export", "export"),
    "write_report": ("nas.analyze", "analyze"),
    "retrain_study": ("nas.retrain", "retrain"),
    "open_table": ("nas.tables", "open_table"),
    "UserError": ("nas.errors", "UserError"),
    "Store": ("db", "Store"),
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from db import Store  # noqa: F401
    from nas.analyze import analyze as write_report  # noqa: F401
    from nas.config import SearchConfig, build_config, load_config_file  # noqa: F401
    from nas.errors import UserError  # noqa: F401
    from nas.events import Progress, SearchSummary, TrialEvent  # noqa: F401
    from nas.export import export as export_bundle  # noqa: F401
    from nas.retrain import retrain as retrain_study  # noqa: F401
    from nas.search import run_search  # noqa: F401
    from nas.tables import open_table  # noqa: F401


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nas' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
