"""Pending messages: staged (outbox) or failed sends, kept until a relay has sent them.

Rows are written here (:func:`add_pending`, in the caller's transaction for the outbox), read by
the operator's tools (list, filter, count) and acted on by them (resend a dead row, drop one); the
relay's claims, leases and marks are in :mod:`celery_reliable.store.claims`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import (
    Connection,
    Select,
    Table,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from .failures import batch_query, delete_in_batches, session_scope
from .filters import RowFilter
from .models import PendingMessage, PendingStatus, utcnow

#: The pending table, for Core statements.
_T: Table = PendingMessage.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class PendingValues:
    """One message exactly as it would be published (the columns of a pending row)."""

    task_id: str
    task_name: str
    args: Any
    kwargs: Any
    options: dict[str, Any]
    eta: datetime | None
    expires_at: datetime | None
    #: the message as written to a Redis broker, built ahead (see celery_reliable.broker.redis_wire)
    message: str | None = None

    def row(self, source: str, next_attempt_at: datetime, error: str = "") -> dict[str, Any]:
        now = utcnow()
        return {
            "task_id": self.task_id,
            "task_name": self.task_name,
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
            "eta": self.eta,
            "expires_at": self.expires_at,
            "message": self.message,
            "source": source,
            "status": PendingStatus.PENDING,
            "attempts": 0,
            "next_attempt_at": next_attempt_at,
            "last_error": error,
            "created_at": now,
        }


def add_pending(
    target: Celery | Session | Connection,
    values: Sequence[PendingValues],
    *,
    source: str,
    delay: float = 0.0,
    error: str = "",
) -> list[int]:
    """Insert pending rows (in ``target``'s transaction when given a Session or Connection)."""
    due = utcnow() + timedelta(seconds=delay)
    rows = [v.row(source, due, error) for v in values]
    if isinstance(target, Celery):
        with session_scope(target) as session:
            return _insert(session, rows)
    return _insert(target, rows)


def _insert(target: Session | Connection, rows: list[dict[str, Any]]) -> list[int]:
    if isinstance(target, Session):
        target = target.connection(bind_arguments={"mapper": PendingMessage})
    return insert_rows(target, rows)


def insert_rows(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` in one statement; their ids, in the order of ``rows``.

    A Core insert of the table (the ORM's bulk path costs more than the round trip for a
    row), given all rows at once: SQLAlchemy sends them as one multi-row ``INSERT ...
    RETURNING`` ("insertmanyvalues"), and ``sort_by_parameter_order`` pairs each id with its row.
    """
    if not rows:
        return []
    statement = insert(_T).returning(_T.c.id, sort_by_parameter_order=len(rows) > 1)
    result = conn.execute(statement, rows[0] if len(rows) == 1 else rows)
    return [int(row_id) for row_id in result.scalars()]


def _sent_conditions(cutoff: datetime) -> tuple[Any, ...]:
    """Delivered rows sent before ``cutoff``: done ones, and sent ones the ledger does not track (a
    tracked sent row waits for its task's outcome). Served by the partial index on ``sent_at``."""
    finished = or_(PendingMessage.status == PendingStatus.DONE, PendingMessage.tracked.is_(False))
    return PendingMessage.status.in_(PendingStatus.DELIVERED), finished, PendingMessage.sent_at < cutoff


def sent_batch_query(cutoff: datetime, limit: int, floor: datetime | None = None) -> Select[Any]:
    """One batch of :func:`purge_sent` (what EXPLAIN shows of it)."""
    return batch_query(PendingMessage.id, PendingMessage.sent_at, _sent_conditions(cutoff), limit, floor)


def purge_sent(app: Celery, older_than: float, batch: int = 5000, time_limit: float | None = None) -> int:
    """Delete delivered rows sent more than ``older_than`` seconds ago, oldest first, in batches (see
    :func:`~celery_reliable.store.failures.delete_in_batches`): done ones, and sent ones the ledger
    does not track. ``time_limit``: seconds after which no batch starts (the next run goes on)."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    return delete_in_batches(
        app, PendingMessage.id, PendingMessage.sent_at, *_sent_conditions(cutoff), batch=batch, time_limit=time_limit
    )


def count_by_status(app: Celery) -> dict[str, int]:
    """Number of pending rows in each state."""
    with session_scope(app) as session:
        rows = session.execute(select(PendingMessage.status, func.count()).group_by(PendingMessage.status)).all()
    return {str(status): int(count) for status, count in rows}


def list_pending(app: Celery, status: str | None = None, limit: int = 100) -> list[PendingMessage]:
    """Pending rows, oldest first (the API the CLI and the Flower page use)."""
    query = select(PendingMessage).order_by(PendingMessage.id).limit(limit)
    if status is not None:
        query = query.where(PendingMessage.status == status)
    with session_scope(app) as session:
        return list(session.execute(query).scalars())


@dataclass(frozen=True)
class PendingFilter(RowFilter):
    """Which pending rows to select; ``None`` means any (the window applies to when the row was written).

    ``search`` looks in the task id, the arguments and the last send error.
    """

    model = PendingMessage
    time_column = "created_at"
    search_columns = ("task_id", "args", "kwargs", "last_error")

    status: str | Sequence[str] | None = None
    task_name: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    ids: Sequence[int] | None = None
    search: str | None = None


def find_pending(
    app: Celery, filter: PendingFilter | None = None, limit: int = 100, offset: int = 0, newest_first: bool = False
) -> list[PendingMessage]:
    """Selected pending rows, oldest first (``newest_first``: the other way), ``offset`` rows skipped."""
    order = PendingMessage.id.desc() if newest_first else PendingMessage.id
    query = (filter or PendingFilter()).apply(select(PendingMessage)).order_by(order).limit(limit).offset(offset)
    with session_scope(app) as session:
        return list(session.execute(query).scalars())


def count_pending(app: Celery, filter: PendingFilter | None = None) -> int:
    """How many pending rows the filter selects."""
    query = (filter or PendingFilter()).apply(select(func.count()).select_from(PendingMessage))
    with session_scope(app) as session:
        return int(session.execute(query).scalar_one())


def pending_ids(app: Celery, filter: PendingFilter | None = None) -> list[tuple[int, str]]:
    """(id, status) of the selected rows, oldest first (what a bulk resend or drop works through)."""
    query = (filter or PendingFilter()).apply(select(PendingMessage.id)).add_columns(PendingMessage.status)
    with session_scope(app) as session:
        return [(int(i), str(s)) for i, s in session.execute(query.order_by(PendingMessage.id))]


def get_pending(app: Celery, pending_id: int) -> PendingMessage | None:
    """One pending row by its id."""
    with session_scope(app) as session:
        return session.get(PendingMessage, pending_id)


def requeue_stuck(app: Celery, ids: Sequence[int]) -> int:
    """Make dead and invalid rows among ``ids`` due now with a fresh count of attempts.

    Their message built ahead is dropped: the relay builds it again from the row's columns
    (checked as they are), so a row refused for a message that disagreed with them goes out as
    its columns say once a person resends it.
    """
    if not ids:
        return 0
    values = {"status": PendingStatus.PENDING, "attempts": 0, "next_attempt_at": utcnow(), "message": None}
    with session_scope(app) as session:
        result = session.execute(
            update(_T).where(_T.c.id.in_(list(ids)), _T.c.status.in_(PendingStatus.NEEDS_ACTION)).values(**values)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def delete_pending(app: Celery, ids: Sequence[int]) -> int:
    """Delete the rows among ``ids`` that no relay holds (a claimed row may be on its way)."""
    if not ids:
        return 0
    with session_scope(app) as session:
        result = session.execute(_T.delete().where(_T.c.id.in_(list(ids)), _T.c.status != PendingStatus.CLAIMED))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
