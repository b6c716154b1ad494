"""0002 full schema: architectures, stages, recipes, epochs, searches, meta; runs get the rest.

Changes:
- new tables `nas_architectures` (spec JSON + params, FLOPs, depth, block/skip types),
  `nas_stages` (one typed row per stage), `nas_recipes`, `nas_searches` (launches and their
  heartbeat), `nas_epochs` (learning curves), `nas_meta` (facts about the store itself);
- `nas_runs` gains recipe_id, dataset, fidelity, reason, best_val_accuracy, val_loss, flops,
  latency/throughput/memory, device, host, node_id, started, finished, cached_from (FK to the
  run whose result was reused), retry_of, search_id (FK to `nas_searches`), extra JSON and
  updated; a CHECK on `state` and an index on the cache key (arch, recipe, dataset, fidelity).
Existing rows are kept; new columns are NULL for them (`extra` is `{}`).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)
RUN_STATES = "state IN ('complete', 'pruned', 'failed', 'running')"
SEARCH_STATUSES = "status IN ('running', 'finished', 'interrupted', 'failed')"

NEW_RUN_COLUMNS = [
    ("recipe_id", sa.String(64)),
    ("dataset", sa.String(128)),
    ("fidelity", sa.Integer()),
    ("reason", sa.Text()),
    ("best_val_accuracy", sa.Float()),
    ("val_loss", sa.Float()),
    ("flops", sa.BigInteger()),
    ("latency_ms", sa.Float()),
    ("latency_ms_batch", sa.Float()),
    ("samples_per_s", sa.Float()),
    ("peak_memory_mb", sa.Float()),
    ("device", sa.String(64)),
    ("host", sa.String(255)),
    ("node_id", sa.String(128)),
    ("started", Timestamp),
    ("finished", Timestamp),
    ("cached_from", sa.Integer()),
    ("retry_of", sa.Integer()),
    ("search_id", sa.Integer()),
]


def upgrade() -> None:
    op.create_table(
        "nas_architectures",
        sa.Column("arch_id", sa.String(64), nullable=False),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("params", sa.BigInteger(), nullable=True),
        sa.Column("flops", sa.BigInteger(), nullable=True),
        sa.Column("input_size", sa.String(32), nullable=True),
        sa.Column("total_depth", sa.Integer(), nullable=False),
        sa.Column("total_blocks", sa.Integer(), nullable=False),
        sa.Column("num_stages", sa.Integer(), nullable=False),
        sa.Column("block_types", sa.String(64), nullable=False),
        sa.Column("skip_types", sa.String(128), nullable=False),
        sa.Column("created", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("arch_id", name="pk_nas_architectures"),
    )
    op.create_table(
        "nas_stages",
        sa.Column("arch_id", sa.String(64), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("stride", sa.Integer(), nullable=False),
        sa.Column("block", sa.String(16), nullable=False),
        sa.Column("expansion", sa.Integer(), nullable=False),
        sa.Column("groups", sa.Integer(), nullable=False),
        sa.Column("width_per_group", sa.Integer(), nullable=False),
        sa.Column("skip", sa.String(16), nullable=False),
        sa.ForeignKeyConstraint(
            ["arch_id"],
            ["nas_architectures.arch_id"],
            name="fk_nas_stages_arch_id_nas_architectures",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("arch_id", "stage", name="pk_nas_stages"),
    )
    op.create_table(
        "nas_recipes",
        sa.Column("recipe_id", sa.String(64), nullable=False),
        sa.Column("recipe", JSONType, nullable=False),
        sa.Column("dataset", sa.String(128), nullable=True),
        sa.Column("created", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("recipe_id", name="pk_nas_recipes"),
    )
    op.create_table(
        "nas_searches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study", sa.String(512), nullable=False),
        sa.Column("config", JSONType, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("started", Timestamp, nullable=False),
        sa.Column("heartbeat", Timestamp, nullable=False),
        sa.Column("finished", Timestamp, nullable=True),
        sa.CheckConstraint(SEARCH_STATUSES, name="ck_nas_searches_status"),
        sa.PrimaryKeyConstraint("id", name="pk_nas_searches"),
    )
    op.create_index("ix_nas_searches_study", "nas_searches", ["study"])
    op.create_table(
        "nas_meta",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_nas_meta"),
    )

    # SQLite cannot add constraints in place: batch mode copies the table (rows included).
    with op.batch_alter_table("nas_runs") as batch:
        for name, type_ in NEW_RUN_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
        batch.add_column(
            sa.Column("extra", JSONType, server_default=sa.text("'{}'"), nullable=False)
        )
        batch.add_column(sa.Column("updated", Timestamp, nullable=True))
        batch.create_foreign_key(
            "fk_nas_runs_cached_from_nas_runs",
            "nas_runs",
            ["cached_from"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_foreign_key(
            "fk_nas_runs_search_id_nas_searches",
            "nas_searches",
            ["search_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_check_constraint("ck_nas_runs_state", RUN_STATES)
        batch.create_index("ix_nas_runs_cache_key", ["arch_id", "recipe_id", "dataset", "fidelity"])

    op.create_table(
        "nas_epochs",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("train_loss", sa.Float(), nullable=True),
        sa.Column("val_loss", sa.Float(), nullable=True),
        sa.Column("val_accuracy", sa.Float(), nullable=True),
        sa.Column("lr", sa.Float(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["nas_runs.id"], name="fk_nas_epochs_run_id_nas_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "epoch", name="pk_nas_epochs"),
    )


def downgrade() -> None:
    op.drop_table("nas_epochs")
    with op.batch_alter_table("nas_runs") as batch:
        batch.drop_index("ix_nas_runs_cache_key")
        batch.drop_constraint("ck_nas_runs_state", type_="check")
        batch.drop_constraint("fk_nas_runs_search_id_nas_searches", type_="foreignkey")
        batch.drop_constraint("fk_nas_runs_cached_from_nas_runs", type_="foreignkey")
        for name in ["updated", "extra", *(n for n, _ in reversed(NEW_RUN_COLUMNS))]:
            batch.drop_column(name)
    op.drop_table("nas_meta")
    op.drop_index("ix_nas_searches_study", table_name="nas_searches")
    op.drop_table("nas_searches")
    op.drop_table("nas_recipes")
    op.drop_table("nas_stages")
    op.drop_table("nas_architectures")
