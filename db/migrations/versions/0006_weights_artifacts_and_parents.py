"""0006 weights in an artifact store, and the parent a run inherited from.

Changes:
- `nas_runs` gains `weights_artifact` (nullable string): the id of the run's trained weights
  (safetensors) in the study's artifact store (`optuna.artifacts`); `weights_size` (bytes)
  and `weights_sha256` (hex) are checked when the weights are read back. NULL for existing
  rows, whose weights (if kept) stay in `nas_weights` and are still read from there.
- `nas_runs` gains `inherited_from` (nullable id of another run, SET NULL when it goes): the
  trained run whose weights this one started from (a function-preserving morph, `--inherit`).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nas_runs") as batch:
        batch.add_column(sa.Column("weights_artifact", sa.String(64), nullable=True))
        batch.add_column(sa.Column("weights_size", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("weights_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("inherited_from", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_nas_runs_inherited_from_nas_runs", "nas_runs",
                                 ["inherited_from"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("nas_runs") as batch:
        batch.drop_constraint("fk_nas_runs_inherited_from_nas_runs", type_="foreignkey")
        batch.drop_column("inherited_from")
        batch.drop_column("weights_sha256")
        batch.drop_column("weights_size")
        batch.drop_column("weights_artifact")
