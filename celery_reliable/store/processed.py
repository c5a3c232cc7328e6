"""Processed task ids: the memory behind idempotent tasks.

Every idempotent task pays for the lookup before it runs, so it is one round trip on a
connection the process holds, with as little client work as possible: on PostgreSQL with
psycopg 3 a statement prepared once per connection and run through libpq
(``psycopg.Connection.pgconn``), elsewhere a DBAPI cursor. Records run on an autocommit
engine, one by one (:func:`mark_processed`) or many in one statement (:func:`mark_processed_many`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import Connection, insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from .engine import drop_held_connection, get_autocommit_engine, held_connection
from .failures import delete_in_batches, store_error
from .models import ProcessedTask, utcnow

_TABLE = ProcessedTask.__tablename__
_LOOKUP = f"SELECT 1 FROM {_TABLE} WHERE task_id = %s"
#: The lookup's name as a prepared statement on a held PostgreSQL connection.
_PREPARED = b"celery_reliable_is_processed"
#: Key of a held connection's ``info``: its libpq connection once the lookup is prepared on it
#: (None: not psycopg 3).
_PGCONN = "celery_reliable_pgconn"
#: ``psycopg.pq.ExecStatus.TUPLES_OK`` (libpq's PGRES_TUPLES_OK), without importing psycopg here.
_TUPLES_OK = 2


class _Duplicate(Exception):
    """The id was already recorded (primary key conflict)."""


def _in_paramstyle(dialect: Any, sql: str) -> str:
    """``sql`` written with ``%s`` markers, in the driver's own paramstyle (sqlite3: ``?``)."""
    return sql.replace("%s", "?") if dialect.paramstyle == "qmark" else sql


def _raw(app: Celery, sql: str, params: Any, fetch: bool, many: bool = False) -> bool:
    """One autocommit statement on a pooled DBAPI connection; True if ``fetch`` found a row.

    Skips SQLAlchemy's statement layer (a third of the CPU of a Core execution). A pooled
    connection found dead is replaced and retried once. ``many``: ``params`` is a list of rows.
    """
    engine = get_autocommit_engine(app)
    dialect = engine.dialect
    dbapi: Any = dialect.loaded_dbapi
    statement = _in_paramstyle(dialect, sql)
    for attempt in (1, 2):
        conn = engine.raw_connection()
        try:
            cursor = conn.cursor()
            try:
                if many:
                    cursor.executemany(statement, params)
                else:
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
    """True if a task with this id already completed (one round trip on a held connection).

    A held connection found dead is replaced and the question asked again, once.
    """
    engine = get_autocommit_engine(app)
    dbapi: Any = engine.dialect.loaded_dbapi
    for attempt in (1, 2):
        try:
            conn = held_connection(app)
        except SQLAlchemyError as exc:  # could not connect
            raise store_error(str(engine.url), exc) from exc
        if conn is None:  # many threads: the pooled connections
            return _raw(app, _LOOKUP, (task_id,), fetch=True)
        try:
            found = _ask_libpq(conn, task_id)
            if found is None:
                cursor = conn.cursor()
                try:
                    cursor.execute(_in_paramstyle(engine.dialect, _LOOKUP), (task_id,))
                    found = cursor.fetchone() is not None
                finally:
                    cursor.close()
            return found
        except dbapi.Error as exc:
            dead = engine.dialect.is_disconnect(exc, conn.dbapi_connection, None)
            if dead:
                drop_held_connection(app, conn)
            if not (dead and attempt == 1):
                raise store_error(str(engine.url), exc) from exc
    raise AssertionError("unreachable")


def _ask_libpq(conn: Any, task_id: str) -> bool | None:
    """The lookup through libpq on a psycopg 3 connection; None when not possible here.

    None also for any error result: the caller asks again through the DBAPI cursor, which
    raises the driver's own exception for it (a dead connection, a missing table).
    """
    info = conn.info
    pgconn = info.get(_PGCONN)
    if pgconn is None:
        if _PGCONN in info:
            return None  # not psycopg 3
        pgconn = getattr(conn.driver_connection, "pgconn", None)
        if pgconn is None:
            info[_PGCONN] = None
            return None
        from psycopg import pq

        if pgconn.prepare(_PREPARED, _LOOKUP.replace("%s", "$1").encode()).status != pq.ExecStatus.COMMAND_OK:
            return None  # prepared again next time (the table may not exist yet)
        info[_PGCONN] = pgconn
    result = pgconn.exec_prepared(_PREPARED, [task_id.encode()])
    if result.status != _TUPLES_OK:
        return None
    return bool(result.ntuples)


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


def mark_processed_many(app: Celery, marks: Sequence[tuple[str, str, datetime]]) -> None:
    """Record many completions (task id, task name, completion time) in one autocommit statement.

    Ids already recorded are left as they are.
    """
    if not marks:
        return
    dialect = get_autocommit_engine(app).dialect.name
    if dialect == "postgresql":
        _raw(
            app,
            f"INSERT INTO {_TABLE} (task_id, task_name, completed_at) "
            "SELECT * FROM unnest(%s::varchar[], %s::varchar[], %s::timestamptz[]) ON CONFLICT (task_id) DO NOTHING",
            ([m[0] for m in marks], [m[1][:255] for m in marks], [m[2] for m in marks]),
            fetch=False,
        )
        return
    verb = "INSERT IGNORE" if dialect in ("mysql", "mariadb") else "INSERT OR IGNORE"
    rows = [(task_id, name[:255], when.replace(tzinfo=None)) for task_id, name, when in marks]
    sql = f"{verb} INTO {_TABLE} (task_id, task_name, completed_at) VALUES (%s, %s, %s)"
    _raw(app, sql, rows, fetch=False, many=True)


def purge_processed(app: Celery, older_than: float, batch: int = 5000, time_limit: float | None = None) -> int:
    """Delete processed ids completed more than ``older_than`` seconds ago, oldest first, in batches
    (see :func:`~celery_reliable.store.failures.delete_in_batches`); ``time_limit``: seconds after
    which no batch starts (the next run goes on)."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    return delete_in_batches(
        app, ProcessedTask.task_id, ProcessedTask.completed_at, ProcessedTask.completed_at < cutoff,
        batch=batch, time_limit=time_limit,
    )  # fmt: skip
