"""0005 liveness and errors of a search, for `nas status`.

Changes:
- `nas_searches` gains `live` (nullable JSON): at each heartbeat, the trials the driver has
  running and how many seconds each has been silent (no epoch, no beat), so that a person
  sees a stalled trial before the driver gives it up. NULL for existing rows.
- `nas_searches` gains `error` (nullable text): the one line a search that ended `failed`
  said. NULL for existing rows.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nas_searches") as batch:
        batch.add_column(sa.Column("live", JSONType, nullable=True))
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nas_searches") as batch:
        batch.drop_column("error")
        batch.drop_column("live")
