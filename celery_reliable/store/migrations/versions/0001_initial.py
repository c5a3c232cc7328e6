"""Failed tasks and processed task ids.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from celery_reliable.store.models import BigIntPK, JSONType, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "celery_reliable_failed_task",
        sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("args", JSONType, nullable=True),
        sa.Column("kwargs", JSONType, nullable=True),
        sa.Column("options", JSONType, nullable=True),
        sa.Column("raw_message", JSONType, nullable=True),
        sa.Column("exc_type", sa.String(255), nullable=False),
        sa.Column("exc_message", sa.Text(), nullable=False),
        sa.Column("traceback", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("first_failed_at", UTCDateTime(), nullable=False),
        sa.Column("last_failed_at", UTCDateTime(), nullable=False),
        sa.Column("replay_of_id", sa.BigInteger(), nullable=True),
        sa.Column("replay_task_id", sa.String(255), nullable=True),
        sa.Column("replayed_at", UTCDateTime(), nullable=True),
        sa.Column("replay_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_celery_reliable_failed_task")),
        sa.UniqueConstraint("task_id", name=op.f("uq_celery_reliable_failed_task_task_id")),
    )
    op.create_index(op.f("ix_celery_reliable_failed_task_task_name"), "celery_reliable_failed_task", ["task_name"])
    op.create_index(op.f("ix_celery_reliable_failed_task_status"), "celery_reliable_failed_task", ["status"])
    op.create_index(
        op.f("ix_celery_reliable_failed_task_last_failed_at"),
        "celery_reliable_failed_task",
        ["last_failed_at"],
    )
    op.create_index("ix_celery_reliable_failed_task_exc_type", "celery_reliable_failed_task", ["exc_type"])
    op.create_table(
        "celery_reliable_processed_task",
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_celery_reliable_processed_task")),
    )
    op.create_index(
        op.f("ix_celery_reliable_processed_task_completed_at"),
        "celery_reliable_processed_task",
        ["completed_at"],
    )


def downgrade() -> None:
    op.drop_table("celery_reliable_processed_task")
    op.drop_table("celery_reliable_failed_task")
