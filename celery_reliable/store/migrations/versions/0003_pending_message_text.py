"""Pending messages: the message as built for the broker, and indexes that skip sent rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLE = "celery_reliable_pending_message"
OPEN = sa.text("status IN ('pending', 'claimed')")
SENT = sa.text("status = 'sent'")


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("message", sa.Text(), nullable=True))
    op.drop_index(f"ix_{TABLE}_due", table_name=TABLE)
    op.drop_index(f"ix_{TABLE}_sent", table_name=TABLE)
    # Partial on PostgreSQL and SQLite: a claim walks only unsent rows, and a row leaving the
    # open states leaves the index (MariaDB has no partial indexes: plain ones there).
    op.create_index(f"ix_{TABLE}_open", TABLE, ["id"], postgresql_where=OPEN, sqlite_where=OPEN)
    op.create_index(f"ix_{TABLE}_sent_at", TABLE, ["sent_at"], postgresql_where=SENT, sqlite_where=SENT)


def downgrade() -> None:
    op.drop_index(f"ix_{TABLE}_sent_at", table_name=TABLE)
    op.drop_index(f"ix_{TABLE}_open", table_name=TABLE)
    op.create_index(f"ix_{TABLE}_sent", TABLE, ["status", "sent_at"])
    op.create_index(f"ix_{TABLE}_due", TABLE, ["status", "next_attempt_at"])
    op.drop_column(TABLE, "message")
