"""The effect table of ``celery -A proj reliable verify``: one row per probe run.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from celery_reliable.store.models import BigIntPK, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLE = "celery_reliable_verify_effect"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{TABLE}")),
    )
    op.create_index(op.f(f"ix_{TABLE}_run_id"), TABLE, ["run_id"])


def downgrade() -> None:
    op.drop_index(op.f(f"ix_{TABLE}_run_id"), table_name=TABLE)
    op.drop_table(TABLE)
