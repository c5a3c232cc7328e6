"""Reading and writing failed-task rows. Every database error becomes a :class:`StoreError`."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celery import Celery
from sqlalchemy import Select, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from ..exceptions import StoreError
from .engine import get_sessionmaker, safe_url
from .filters import RowFilter, like_pattern
from .models import FailedTask, FailureStatus, utcnow
from .payload import to_stored_lenient

logger = logging.getLogger(__name__)


@dataclass
class FailureRecord:
    """What is stored about one failed task."""

    task_id: str
    task_name: str
    reason: str
    args: Any = None
    kwargs: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    raw_message: Any = None
    exc_type: str = ""
    exc_message: str = ""
    traceback: str = ""
    attempts: int = 1
    hostname: str = ""
    replay_of_id: int | None = None
    #: when the first attempt failed (carried by the task's retries); None: this attempt was the first
    first_failed_at: datetime | None = None


@contextmanager
def session_scope(app: Celery) -> Iterator[Session]:
    """A session in a transaction; any SQLAlchemy error is raised as :class:`StoreError`."""
    try:
        with get_sessionmaker(app).begin() as session:
            yield session
    except SQLAlchemyError as exc:
        from ..config import get_settings

        raise store_error(get_settings(app).database_url, exc) from exc


def store_error(url: str, exc: BaseException) -> StoreError:
    """The error for a failed database operation: the masked URL, the real cause, the fix.

    An unknown dialect, a missing driver, a server that does not answer and tables never
    created each get their own advice (see :func:`~celery_reliable.store.errors.diagnose`).
    """
    from .errors import diagnose

    return StoreError(str(diagnose(url, exc)))


def batch_query(key: Any, age: Any, conditions: Sequence[Any], limit: int, floor: Any = None) -> Select[Any]:
    """The rows of one cleanup batch: the first ``limit`` matching ``conditions`` by ``age``, from
    ``floor`` on, locked with SKIP LOCKED (except on SQLite, which has no row locks).

    Walked through the index on ``age``; ``floor`` (the age of the last row of the batch before)
    starts the scan where that batch ended instead of at the index's start, over the entries of
    the rows already deleted, which stay until a vacuum.
    """
    query = select(key, age).where(*conditions)
    if floor is not None:
        query = query.where(age >= floor)
    return query.order_by(age).limit(limit).with_for_update(skip_locked=True)


#: Where a run stopped by its time limit ended (the age of its last row), per database and table:
#: the next run in this process starts there instead of walking again over the index entries of
#: the rows deleted before (they stay until a vacuum). A run that reaches the end leaves none, so
#: the run after it starts at the beginning and takes the rows skipped on the way (held then).
_resume: dict[tuple[str, str], Any] = {}


def delete_in_batches(
    app: Celery, key: Any, age: Any, *conditions: Any, batch: int = 5000, time_limit: float | None = None
) -> int:
    """Delete the rows of ``key``'s table matching ``conditions``, oldest ``age`` first, ``batch`` at a
    time; returns how many rows went.

    Each batch is one short transaction (:func:`batch_query`, then a DELETE of its keys): a row
    another transaction holds is skipped, never waited for, and no one waits on the cleanup longer
    than one batch. Each batch starts at the last one's ``age``, so a run costs time in proportion
    to the rows it deletes, not their square. ``time_limit``: no batch starts after that many
    seconds; the next run goes on from there.
    """
    from ..config import get_settings

    place = (get_settings(app).database_url, str(key.class_.__tablename__))
    deadline = None if time_limit is None else time.monotonic() + time_limit
    total = 0
    floor = _resume.pop(place, None)
    for _ in range(10_000):
        with session_scope(app) as session:
            rows = session.execute(batch_query(key, age, conditions, batch, floor)).all()
            if rows:
                result = session.execute(delete(key.class_).where(key.in_([row[0] for row in rows])))
                total += int(result.rowcount or 0)  # type: ignore[attr-defined]
        if len(rows) < batch:
            return total
        floor = rows[-1][1]
        if deadline is not None and time.monotonic() >= deadline:
            break
    _resume[place] = floor
    return total


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""


def record_failure(app: Celery, record: FailureRecord) -> int:
    """Store ``record`` and return its row id; a second call for the same task id updates it.

    Raises:
        StoreError: the row could not be written; the caller must not acknowledge the message.
    """
    values = {
        "task_id": record.task_id,
        "task_name": record.task_name[:255],
        "reason": record.reason,
        "args": to_stored_lenient(record.args),
        "kwargs": to_stored_lenient(record.kwargs),
        "options": to_stored_lenient(record.options),
        "raw_message": to_stored_lenient(record.raw_message),
        "exc_type": record.exc_type[:255],
        "exc_message": record.exc_message[:20000],
        "traceback": record.traceback[:100000],
        "attempts": record.attempts,
        "hostname": record.hostname[:255],
        "replay_of_id": record.replay_of_id,
    }
    now = utcnow()
    first = now if record.first_failed_at is None else min(record.first_failed_at, now)
    try:
        with session_scope(app) as session:
            row = FailedTask(**values, first_failed_at=first, last_failed_at=now)
            session.add(row)
            session.flush()
            return row.id
    except StoreError as exc:
        if not isinstance(exc.__cause__, IntegrityError):
            raise
    # Already stored (the failure signal can fire twice): refresh it instead.
    with session_scope(app) as session:
        existing = session.execute(
            select(FailedTask).where(FailedTask.task_id == record.task_id).with_for_update()
        ).scalar_one()
        for key in ("reason", "exc_type", "exc_message", "traceback", "hostname"):
            setattr(existing, key, values[key])
        stored = existing.attempts
        existing.attempts = max(stored if type(stored) is int else 0, record.attempts)  # (SQLite: any value)
        existing.last_failed_at = now
        return existing.id


@dataclass(frozen=True)
class FailureFilter(RowFilter):
    """Which failed rows to select; ``None`` means any (the window applies to the last failure).

    ``exc_type`` matches the stored type or its last dotted parts (``InvalidOrder`` matches
    ``shop.tasks.InvalidOrder``); ``search`` looks in the task id, the arguments and the
    exception message.
    """

    model = FailedTask
    time_column = "last_failed_at"
    search_columns = ("task_id", "args", "kwargs", "exc_message")

    task_name: str | None = None
    exc_type: str | None = None
    status: str | Sequence[str] | None = None
    since: datetime | None = None
    until: datetime | None = None
    ids: Sequence[int] | None = None
    search: str | None = None

    def apply_own(self, query: Select[Any]) -> Select[Any]:
        if self.exc_type is not None:
            short = FailedTask.exc_type.like(like_pattern(self.exc_type, prefix="%.", suffix=""), escape="\\")
            query = query.where(or_(FailedTask.exc_type == self.exc_type, short))
        return query


def list_failures(
    app: Celery, filter: FailureFilter | None = None, limit: int = 100, offset: int = 0
) -> list[FailedTask]:
    """Failed rows, newest first."""
    query = (filter or FailureFilter()).apply(select(FailedTask))
    query = query.order_by(FailedTask.id.desc()).limit(limit).offset(offset)
    with session_scope(app) as session:
        return list(session.execute(query).scalars())


def count_failures(app: Celery, filter: FailureFilter | None = None) -> int:
    query = (filter or FailureFilter()).apply(select(func.count()).select_from(FailedTask))
    with session_scope(app) as session:
        return int(session.execute(query).scalar_one())


def get_failure(app: Celery, failure_id: int) -> FailedTask | None:
    """One failed row by its id."""
    with session_scope(app) as session:
        return session.get(FailedTask, failure_id)


def get_failure_by_task_id(app: Celery, task_id: str) -> FailedTask | None:
    """One failed row by the id of the task that failed."""
    with session_scope(app) as session:
        return session.execute(select(FailedTask).where(FailedTask.task_id == task_id)).scalar_one_or_none()


def purge_failures(app: Celery, filter: FailureFilter | None = None) -> int:
    """Delete the selected rows (not those being replayed); return how many."""
    ids_query = (
        (filter or FailureFilter()).apply(select(FailedTask.id)).where(FailedTask.status != FailureStatus.REPLAYING)
    )
    with session_scope(app) as session:
        ids = list(session.execute(ids_query).scalars())
        deleted = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            result = session.execute(delete(FailedTask).where(FailedTask.id.in_(chunk)))
            deleted += result.rowcount or 0  # type: ignore[attr-defined]
        return deleted


def claim_for_replay(app: Celery, failure_id: int, replay_task_id: str) -> bool:
    """Atomically move a ``failed`` row to ``replaying``; False if another replay got it first."""
    with session_scope(app) as session:
        result = session.execute(
            update(FailedTask)
            .where(FailedTask.id == failure_id, FailedTask.status == FailureStatus.FAILED)
            .values(status=FailureStatus.REPLAYING, replay_task_id=replay_task_id)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def finish_replay(app: Celery, failure_id: int, sent: bool) -> None:
    """Mark a claimed row ``replayed`` (sent) or give it back to ``failed`` (send failed)."""
    with session_scope(app) as session:
        if sent:
            values: dict[str, Any] = {
                "status": FailureStatus.REPLAYED,
                "replayed_at": utcnow(),
                "replay_count": FailedTask.replay_count + 1,
            }
        else:
            values = {"status": FailureStatus.FAILED, "replay_task_id": None}
        session.execute(
            update(FailedTask)
            .where(FailedTask.id == failure_id, FailedTask.status == FailureStatus.REPLAYING)
            .values(**values)
        )


def describe_store(app: Celery) -> str:
    """The sanitised URL of the store, for logs."""
    from ..config import get_settings

    return safe_url(get_settings(app).database_url)


def failure_ids(app: Celery, filter: FailureFilter | None = None) -> list[int]:
    """Ids of the selected rows, oldest first (what a bulk replay or purge works through)."""
    query = (filter or FailureFilter()).apply(select(FailedTask.id)).order_by(FailedTask.id)
    with session_scope(app) as session:
        return [int(i) for i in session.execute(query).scalars()]


def iter_failures(app: Celery, filter: FailureFilter | None = None, batch: int = 500) -> Iterator[FailedTask]:
    """Every selected row, oldest first, read ``batch`` at a time (keyset pages: no row twice)."""
    after = 0
    for _ in range(10_000_000):
        query = (filter or FailureFilter()).apply(select(FailedTask)).where(FailedTask.id > after)
        with session_scope(app) as session:
            rows = list(session.execute(query.order_by(FailedTask.id).limit(batch)).scalars())
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1].id


def failure_states(app: Celery, filter: FailureFilter | None = None) -> list[tuple[int, str]]:
    """(id, status) of the selected rows, oldest first."""
    query = (filter or FailureFilter()).apply(select(FailedTask.id)).add_columns(FailedTask.status)
    with session_scope(app) as session:
        return [(int(i), str(s)) for i, s in session.execute(query.order_by(FailedTask.id))]
