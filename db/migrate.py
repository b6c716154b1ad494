"""Schema migrations run from code: Alembic with our own version table, safe under concurrency."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from db import views
from db.engine import (
    WRITE_OPTION,
    StoreError,
    backend_of,
    create_store_engine,
    display_url,
    normalize_url,
    store_error,
)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "nas_alembic_version"  # never Optuna's `alembic_version`
# Transaction-level advisory lock on PostgreSQL: first opens of a fresh database by several
# processes queue here instead of racing to CREATE TABLE. ("resnas_m" as a bigint.)
PG_LOCK_KEY = 0x7265736E61735F6D


def alembic_config() -> Config:
    """The Alembic Config, built in code (no alembic.ini needed at run time)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    return str(ScriptDirectory.from_config(alembic_config()).get_current_head())


def revision_of(conn: Connection) -> str | None:
    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _resolve(script: ScriptDirectory, revision: str, url: URL) -> str:
    try:
        resolved = script.get_revision(revision)
    except CommandError as exc:
        raise StoreError(
            f"`revision` got {revision!r}: {exc}; allowed: 'head' or one of "
            f"{', '.join(repr(s.revision) for s in script.walk_revisions())}"
        ) from None
    if resolved is None:
        raise StoreError(f"`revision` got {revision!r}; allowed: 'head', '0001', ...")
    return resolved.revision


def _check_known(script: ScriptDirectory, current: str | None, url: URL) -> None:
    if current is None:
        return
    try:
        script.get_revision(current)
    except CommandError:
        raise StoreError(
            f"storage {display_url(url)} is at schema revision {current!r}, newer than this "
            f"resnas knows (head {script.get_current_head()!r}); upgrade resnas"
        ) from None


def migrate_engine(engine: Engine, url: URL, revision: str = "head") -> None:
    """Bring the schema to `revision` and (at head) the views up to date. Idempotent."""
    cfg = alembic_config()
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    target = head if revision == "head" else _resolve(script, revision, url)
    try:
        # Fast path, read-only: nothing to do (the usual case) takes no write lock.
        with engine.connect() as conn:
            conn = conn.execution_options(**{WRITE_OPTION: False})
            current = revision_of(conn)
            _check_known(script, current, url)
            if current == target and (target != head or views.views_up_to_date(conn)):
                return
        with engine.connect() as conn:
            conn = conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                if backend_of(url) == "postgresql":
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY}
                    )
                # SQLite: BEGIN IMMEDIATE already holds the write lock. Re-read under the lock.
                current = revision_of(conn)
                _check_known(script, current, url)
                changed = current != target
                if changed and not _is_ancestor(script, target, current):
                    views.drop_views(conn)
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, target)
                if target == head:
                    views.ensure_views(conn, force=changed)
    except SQLAlchemyError as exc:
        raise store_error("migrating the schema", exc, url) from exc
    except CommandError as exc:
        raise StoreError(f"migrating the schema of {display_url(url)} failed: {exc}") from exc


def _is_ancestor(script: ScriptDirectory, target: str, current: str | None) -> bool:
    """Whether `current` already contains `target` (upgrade never goes down)."""
    if current is None:
        return False
    return any(rev.revision == target for rev in script.iterate_revisions(current, "base"))


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the `nas_*` tables of `url` to `revision` (what `nas db upgrade` runs).

    Raises:
        StoreError: bad URL, unreachable database, or a failed migration.
    """
    parsed = normalize_url(url)
    engine = create_store_engine(parsed, migration=True)
    try:
        migrate_engine(engine, parsed, revision)
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """The schema revision of `url` (None for a database without our tables)."""
    parsed = normalize_url(url)
    engine = create_store_engine(parsed, migration=True)
    try:
        with engine.connect() as conn:
            return revision_of(conn.execution_options(**{WRITE_OPTION: False}))
    except SQLAlchemyError as exc:
        raise store_error("reading the schema revision", exc, parsed) from exc
    finally:
        engine.dispose()
