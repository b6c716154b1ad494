"""How ONE candidate is trained and measured: `run_trial(request, reporter) -> TrialResult`.

The plain-data names (`TrainConfig`, `TrialRequest`, `TrialResult`, `Reporter`, `DataError`)
import without torch; the training names load torch and Lightning on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from workers.config import TrainConfig
from workers.errors import DataError
from workers.results import Reporter, TrialRequest, TrialResult

_LAZY = {
    "run_trial": "workers.trial",
    "dataset_info": "workers.data",
    "load_data": "workers.data",
    "DatasetInfo": "workers.data",
    "LoadedData": "workers.data",
}

__all__ = ["TrainConfig", "TrialRequest", "TrialResult", "Reporter", "DataError", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
