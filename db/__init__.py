"""The SQL store of resnas: `nas_*` tables beside Optuna's, migrations, and analyst views.

Importable without torch or Optuna: `from db import Store`.
"""

from __future__ import annotations

from db.engine import StoreError
from db.migrate import current_revision, head_revision, upgrade
from db.retry import DatabaseUnavailable, is_transient
from db.store import EpochRecord, RunRecord, SearchRecord, Store

__all__ = [
    "DatabaseUnavailable",
    "EpochRecord",
    "RunRecord",
    "SearchRecord",
    "Store",
    "StoreError",
    "current_revision",
    "head_revision",
    "is_transient",
    "upgrade",
]
