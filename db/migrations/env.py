"""Alembic environment for the `nas_*` tables: own version table, never Optuna's tables."""

from __future__ import annotations

import os

from alembic import context

from db.engine import create_store_engine, normalize_url
from db.models import BaseModel

VERSION_TABLE = "nas_alembic_version"

config = context.config


def include_name(name: str | None, type_: str, _parent_names: dict) -> bool:
    """Autogenerate looks at our tables only; Optuna's live in the same database."""
    if type_ == "table":
        return bool(name) and name.startswith("nas_") and name != VERSION_TABLE
    return True


def _configure(connection) -> None:  # noqa: ANN001 - sqlalchemy Connection
    context.configure(
        connection=connection,
        target_metadata=BaseModel.metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        render_as_batch=True,  # SQLite can only change tables by copying them
        compare_type=True,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        # db.migrate hands us a connection already inside its locked transaction.
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    # Developer use through alembic.ini: the URL comes from the environment.
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("RESNAS_STORAGE")
    if not url:
        raise SystemExit("set RESNAS_STORAGE to the storage URL (e.g. sqlite:///dev.db)")
    engine = create_store_engine(normalize_url(url), migration=True)
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
