"""Processed task ids: the memory behind idempotent tasks."""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.orm import Session

from .failures import session_scope
from .models import ProcessedTask, utcnow


def is_processed(app: Celery, task_id: str) -> bool:
    """True if a task with this id already completed."""
    with session_scope(app) as session:
        found = session.execute(select(ProcessedTask.task_id).where(ProcessedTask.task_id == task_id)).first()
        return found is not None


def mark_processed_in(target: Session | Connection, task_id: str, task_name: str) -> None:
    """Record completion inside the caller's transaction (committed with the task's writes).

    A duplicate run that reaches its commit second fails on the primary key, so its writes are
    rolled back with it: the effect happens once.
    """
    target.execute(
        insert(ProcessedTask).values(task_id=task_id, task_name=task_name[:255], completed_at=utcnow())
    )


def mark_processed(app: Celery, task_id: str, task_name: str) -> bool:
    """Record completion in its own transaction; False if it was already recorded."""
    from sqlalchemy.exc import IntegrityError

    from ..exceptions import StoreError

    try:
        with session_scope(app) as session:
            mark_processed_in(session, task_id, task_name)
        return True
    except StoreError as exc:
        if isinstance(exc.__cause__, IntegrityError):
            return False
        raise


def purge_processed(app: Celery, older_than: float, batch: int = 5000) -> int:
    """Delete processed ids completed more than ``older_than`` seconds ago, in batches."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    total = 0
    for _ in range(10_000):
        with session_scope(app) as session:
            ids = list(
                session.execute(
                    select(ProcessedTask.task_id).where(ProcessedTask.completed_at < cutoff).limit(batch)
                ).scalars()
            )
            if not ids:
                break
            session.execute(delete(ProcessedTask).where(ProcessedTask.task_id.in_(ids)))
            total += len(ids)
    return total
