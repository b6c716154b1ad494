"""Migrations: 0001 -> head keeps rows, own version table, models match revisions, safe reopen."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import db
from db.engine import create_store_engine, normalize_url
from db.migrate import VERSION_TABLE
from db.models import BaseModel
from tests.db.helpers import run


def _engine(url: str) -> sa.Engine:
    return create_store_engine(normalize_url(url))


def test_upgrade_from_walking_skeleton_keeps_rows(storage_url):
    db.upgrade(storage_url, "0001")
    assert db.current_revision(storage_url) == "0001"
    engine = _engine(storage_url)
    try:
        with engine.begin() as conn:
            assert "nas_architectures" not in sa.inspect(conn).get_table_names()
            conn.execute(
                sa.text(
                    "INSERT INTO nas_runs (study, trial_number, arch_id, state, val_accuracy,"
                    " params, duration_s) VALUES (:study, :t, :arch, :state, :acc, :p, :d)"
                ),
                [
                    dict(study="old", t=0, arch="a1", state="complete", acc=0.75, p=123, d=4.5),
                    dict(study="old", t=1, arch="a2", state="failed", acc=None, p=None, d=None),
                ],
            )
            first = conn.execute(
                sa.text("SELECT id FROM nas_runs WHERE trial_number = 0")
            ).scalar_one()
            conn.execute(
                sa.text(
                    "INSERT INTO nas_weights (run_id, format, data) VALUES (:r, 'safetensors', :d)"
                ),
                {"r": first, "d": b"\x00\x01old"},
            )
    finally:
        engine.dispose()

    store = db.Store(storage_url)  # migrates to head on open
    try:
        assert db.current_revision(storage_url) == db.head_revision() == "0006"
        old = store.run_for_trial("old", 0)
        assert (old.id, old.arch_id, old.state, old.val_accuracy, old.params, old.duration_s) == (
            first,
            "a1",
            "complete",
            0.75,
            123,
            4.5,
        )
        assert old.extra == {} and old.recipe_id is None
        assert store.run_for_trial("old", 1).state == "failed"
        assert store.weights(first) == b"\x00\x01old"
        new_id = store.record_run(run("old", 2, val_accuracy=0.8), weights=b"new")
        assert new_id not in (first, store.run_for_trial("old", 1).id)
        assert [r.trial_number for r in store.runs("old", top=1)] == [2]
    finally:
        store.close()


def test_own_version_table_beside_optunas(storage_url):
    import optuna

    optuna.storages.RDBStorage(storage_url)  # Optuna's tables and its `alembic_version`
    db.upgrade(storage_url)
    db.upgrade(storage_url)  # idempotent
    engine = _engine(storage_url)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            assert {"alembic_version", VERSION_TABLE, "trials", "nas_runs"} <= tables
            ours = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
            theirs = (
                conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
            )
            assert ours == ["0006"] and theirs != ours
    finally:
        engine.dispose()


def test_models_match_the_migrations(storage_url):
    db.upgrade(storage_url)
    engine = _engine(storage_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "version_table": VERSION_TABLE,
                    "compare_type": True,
                    "include_name": lambda name, type_, _p: (
                        type_ != "table" or (name.startswith("nas_") and name != VERSION_TABLE)
                    ),
                },
            )
            assert compare_metadata(context, BaseModel.metadata) == []
    finally:
        engine.dispose()


def test_store_without_migrate_refuses_an_old_schema(sqlite_url):
    import pytest

    db.upgrade(sqlite_url, "0001")
    with pytest.raises(db.StoreError, match="run `nas db upgrade`"):
        db.Store(sqlite_url, migrate=False)
    db.upgrade(sqlite_url)
    db.Store(sqlite_url, migrate=False).close()
