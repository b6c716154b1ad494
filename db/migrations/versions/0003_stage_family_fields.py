"""0003 stage fields of the DenseNet and Transformer blocks.

Changes:
- `nas_stages` gains `heads` (attention heads of a transformer stage) and `compression`
  (a dense stage's transition keeps int(channels x compression) channels). Like the
  bottleneck fields, both hold the spec's value for every stage (its default where the block
  ignores it). Existing rows get the defaults, 1 and 0.5: no earlier block read them.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nas_stages") as batch:
        batch.add_column(sa.Column("heads", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("compression", sa.Float(), nullable=True))
    op.execute("UPDATE nas_stages SET heads = 1, compression = 0.5")


def downgrade() -> None:
    with op.batch_alter_table("nas_stages") as batch:
        batch.drop_column("compression")
        batch.drop_column("heads")
