"""0004 stop requests: a search can be asked to stop through the store (`nas stop`).

Changes:
- `nas_searches` gains `stop_requested_at` (nullable timestamp): when someone asked this
  running search to stop cleanly. The driver reads it on each heartbeat, finishes the trials
  in flight, and ends the search. NULL for existing rows (nobody asked them to stop).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nas_searches") as batch:
        batch.add_column(sa.Column("stop_requested_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nas_searches") as batch:
        batch.drop_column("stop_requested_at")
