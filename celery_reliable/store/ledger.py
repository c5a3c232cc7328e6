"""The delivery ledger: a sent pending row waits for its task's outcome, and is sent again if the
broker lost it first.

A row whose message went out under a delivery tag of its own (a message built ahead, on Redis) is
*tracked*: the worker that runs its task records the outcome (:func:`mark_done`, by task id, for a
message that carries the ledger header), and until then the relay looks for the message in the
broker every ``reliable_reconcile_after`` seconds (:func:`due_for_check`). Found: looked at again
later (:func:`check_later`); gone, with no outcome: sent again, same task id (:func:`reopen`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import Table, and_, bindparam, or_, select, update

from .claims import SEND_COLUMNS, ClaimedRow, relay_connection
from .models import PendingMessage, PendingStatus, utcnow

#: The pending table, for Core statements.
_T: Table = PendingMessage.__table__  # type: ignore[assignment]


def due_for_check(app: Celery, limit: int) -> list[tuple[ClaimedRow, int]]:
    """Tracked sent rows due for a look in the broker (no outcome yet), oldest check first, with
    their attempts. Not claimed: a look changes nothing unless a row is still sent (see :func:`reopen`)."""
    now = utcnow()
    query = (
        select(*SEND_COLUMNS, _T.c.attempts)
        .where(_T.c.status == PendingStatus.SENT, _T.c.tracked.is_(True), _T.c.next_attempt_at <= now)
        .order_by(_T.c.next_attempt_at)
        .limit(limit)
    )
    with relay_connection(app) as conn:
        return [(ClaimedRow(*row[:-1]), int(row[-1] or 0)) for row in conn.execute(query)]


def check_later(app: Celery, ids: Sequence[int], seconds: float) -> int:
    """Rows found in the broker: looked at again in ``seconds`` (if still sent)."""
    if not ids:
        return 0
    values = {"next_attempt_at": utcnow() + timedelta(seconds=seconds)}
    with relay_connection(app) as conn:
        sent = _T.c.status == PendingStatus.SENT
        result = conn.execute(update(_T).where(_T.c.id.in_(list(ids)), sent).values(values))
        return int(result.rowcount or 0)


def reopen(app: Celery, found: Sequence[tuple[int, int]], error: str, max_attempts: int) -> tuple[int, int]:
    """Rows the broker lost before their task reached an outcome: due to be sent again now (same task
    id), or dead after ``max_attempts``. ``found``: (row id, attempts). Returns (reopened, dead)."""
    reopened = dead = 0
    now = utcnow()
    with relay_connection(app) as conn:
        for row_id, attempts in found:
            values: dict[str, Any] = {"attempts": attempts + 1, "last_error": error[:10000], "next_attempt_at": now}
            values["status"] = PendingStatus.DEAD if attempts + 1 >= max_attempts else PendingStatus.PENDING
            result = conn.execute(
                update(_T).where(_T.c.id == row_id, _T.c.status == PendingStatus.SENT).values(values)
            )  # a row whose outcome came in meanwhile is done: left alone
            if result.rowcount:
                dead += values["status"] == PendingStatus.DEAD
                reopened += values["status"] == PendingStatus.PENDING
    return reopened, dead


def check_after_retry(app: Celery, due: Sequence[tuple[str, datetime]]) -> int:
    """Rows whose task sent a retry (a new message, another delivery tag, that may wait in a
    worker until its countdown ends): their next look is put off to ``due`` ((task id, when))."""
    if not due:
        return 0
    query = (
        update(_T)
        .where(_T.c.task_id == bindparam("tid"), _T.c.status == PendingStatus.SENT, _T.c.tracked.is_(True))
        .values(next_attempt_at=bindparam("due"))
    )
    with relay_connection(app) as conn:
        result = conn.execute(query, [{"tid": task_id, "due": when} for task_id, when in due])
        return int(result.rowcount or 0)


def mark_done(app: Celery, task_ids: Sequence[str]) -> int:
    """Rows whose task reached an outcome (completed, or its failure stored): done. Returns count.

    A row reopened because the broker seemed to have lost it, and not claimed yet, is done too: the
    outcome says its message was not lost after all. A pending row never sent (``tracked`` false) is
    another message with the same task id (a client's retry): it is left to be sent, and the task's
    own idempotency decides, whenever this outcome happens to be written.
    """
    if not task_ids:
        return 0
    values = {"status": PendingStatus.DONE, "done_at": utcnow()}
    reopened = and_(_T.c.status == PendingStatus.PENDING, _T.c.tracked.is_(True))
    with relay_connection(app) as conn:
        result = conn.execute(
            update(_T)
            .where(_T.c.task_id.in_(list(task_ids)), or_(_T.c.status == PendingStatus.SENT, reopened))
            .values(values)
        )
        return int(result.rowcount or 0)
