"""The delivery ledger: a sent pending row waits for its task's outcome.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from celery_reliable.store.models import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLE = "celery_reliable_pending_message"
SENT = sa.text("status = 'sent'")
DELIVERED = sa.text("status IN ('sent', 'done')")


def upgrade() -> None:
    with op.batch_alter_table(TABLE) as batch:
        batch.add_column(sa.Column("tracked", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("done_at", UTCDateTime(), nullable=True))
    # cleanup deletes done rows (and untracked sent ones) by sent_at: both in the partial index
    op.drop_index(f"ix_{TABLE}_sent_at", table_name=TABLE)
    op.create_index(f"ix_{TABLE}_sent_at", TABLE, ["sent_at"], postgresql_where=DELIVERED, sqlite_where=DELIVERED)


def downgrade() -> None:
    op.drop_index(f"ix_{TABLE}_sent_at", table_name=TABLE)
    op.create_index(f"ix_{TABLE}_sent_at", TABLE, ["sent_at"], postgresql_where=SENT, sqlite_where=SENT)
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column("done_at")
        batch.drop_column("tracked")
