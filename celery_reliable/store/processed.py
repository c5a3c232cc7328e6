"""Processed task ids: the memory behind idempotent tasks.

The lookup and the record run on an autocommit engine (one round trip each), because every
idempotent task pays for them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery
from sqlalchemy import Connection, insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from .engine import get_autocommit_engine
from .failures import delete_in_batches, store_error
from .models import ProcessedTask, utcnow

_TABLE = ProcessedTask.__tablename__


class _Duplicate(Exception):
    """The id was already recorded (primary key conflict)."""


def _raw(app: Celery, sql: str, params: tuple[Any, ...], fetch: bool) -> bool:
    """One autocommit statement on a pooled DBAPI connection; True if ``fetch`` found a row.

    The hot path of every idempotent task, so it skips SQLAlchemy's statement layer (a third of
    the CPU of a Core execution). A pooled connection found dead is replaced and retried once.
    """
    engine = get_autocommit_engine(app)
    dialect = engine.dialect
    dbapi: Any = dialect.loaded_dbapi
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    statement = sql.replace("%s", marker)
    for attempt in (1, 2):
        conn = engine.raw_connection()
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(statement, params)
                return bool(cursor.fetchone()) if fetch else True
            finally:
                cursor.close()
        except dbapi.IntegrityError as exc:
            raise _Duplicate() from exc
        except dbapi.Error as exc:
            if attempt == 1 and dialect.is_disconnect(exc, conn.dbapi_connection, None):
                conn.invalidate(exc)
                continue
            raise store_error(str(engine.url), exc) from exc
        except SQLAlchemyError as exc:  # e.g. the pool could not connect
            raise store_error(str(engine.url), exc) from exc
        finally:
            conn.close()
    raise AssertionError("unreachable")


def is_processed(app: Celery, task_id: str) -> bool:
    """True if a task with this id already completed."""
    return _raw(app, f"SELECT 1 FROM {_TABLE} WHERE task_id = %s", (task_id,), fetch=True)


def mark_processed_in(target: Session | Connection, task_id: str, task_name: str) -> None:
    """Record completion inside the caller's transaction (committed with the task's writes).

    A duplicate run that reaches its commit second fails on the primary key, so its writes are
    rolled back with it: the effect happens once.
    """
    target.execute(insert(ProcessedTask).values(task_id=task_id, task_name=task_name[:255], completed_at=utcnow()))


def mark_processed(app: Celery, task_id: str, task_name: str) -> bool:
    """Record completion in its own (one-statement) transaction; False if already recorded."""
    now = utcnow()
    if get_autocommit_engine(app).dialect.name != "postgresql":
        now = now.replace(tzinfo=None)  # stored as naive UTC, like UTCDateTime does
    try:
        return _raw(
            app,
            f"INSERT INTO {_TABLE} (task_id, task_name, completed_at) VALUES (%s, %s, %s)",
            (task_id, task_name[:255], now),
            fetch=False,
        )
    except _Duplicate:
        return False


def purge_processed(app: Celery, older_than: float, batch: int = 5000) -> int:
    """Delete processed ids completed more than ``older_than`` seconds ago, in batches."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    return delete_in_batches(app, ProcessedTask.task_id, ProcessedTask.completed_at < cutoff, batch=batch)
