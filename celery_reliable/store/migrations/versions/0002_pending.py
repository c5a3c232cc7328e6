"""Pending messages: failed sends and the transactional outbox.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from celery_reliable.store.models import BigIntPK, JSONType, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLE = "celery_reliable_pending_message"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("args", JSONType, nullable=True),
        sa.Column("kwargs", JSONType, nullable=True),
        sa.Column("options", JSONType, nullable=True),
        sa.Column("eta", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("claim_token", sa.String(36), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{TABLE}")),
    )
    op.create_index(op.f(f"ix_{TABLE}_task_id"), TABLE, ["task_id"])
    op.create_index(f"ix_{TABLE}_due", TABLE, ["status", "next_attempt_at"])
    op.create_index(f"ix_{TABLE}_sent", TABLE, ["status", "sent_at"])


def downgrade() -> None:
    op.drop_table(TABLE)
