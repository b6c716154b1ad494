"""0001 walking skeleton: a minimal `nas_runs` (one row per trial) and `nas_weights`.

What it holds: the study, the trial number, the architecture id, the outcome state, the
validation accuracy, the parameter count and the duration of each trial, unique per
(study, trial_number); and the trained weights of a run as safetensors bytes.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nas_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study", sa.String(512), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=False),
        sa.Column("arch_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("val_accuracy", sa.Float(), nullable=True),
        sa.Column("params", sa.BigInteger(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_nas_runs"),
        sa.UniqueConstraint("study", "trial_number", name="uq_nas_runs_study_trial_number"),
    )
    op.create_table(
        "nas_weights",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(32), server_default="safetensors", nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["nas_runs.id"], name="fk_nas_weights_run_id_nas_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", name="pk_nas_weights"),
    )


def downgrade() -> None:
    op.drop_table("nas_weights")
    op.drop_table("nas_runs")
