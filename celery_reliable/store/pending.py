"""Pending messages: staged (outbox) or failed sends, claimed in batches by relays.

A claim leases rows to one holder under a fresh fencing token: every later update names that
token, so a relay whose lease ran out (and whose rows another relay took) changes nothing.
PostgreSQL and MariaDB claim with ``FOR UPDATE SKIP LOCKED``, so relays never wait on each
other; SQLite claims with one ``UPDATE`` statement (a single writer at a time).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from .failures import session_scope
from .models import PendingMessage, PendingStatus, utcnow


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
    ids: list[int] = []
    for row in rows:
        result = target.execute(insert(PendingMessage).values(**row).returning(PendingMessage.id))
        ids.append(int(result.scalar_one()))
    return ids


def _due(now: datetime) -> Any:
    return or_(
        and_(PendingMessage.status == PendingStatus.PENDING, PendingMessage.next_attempt_at <= now),
        and_(PendingMessage.status == PendingStatus.CLAIMED, PendingMessage.lease_expires_at < now),
    )


def claim(
    app: Celery, *, limit: int, lease: float, ids: Iterable[int] | None = None
) -> tuple[str, list[PendingMessage]]:
    """Lease up to ``limit`` due rows (or exactly ``ids``, if still unsent) to a new token."""
    token = str(uuid.uuid4())
    now = utcnow()
    chosen = select(PendingMessage.id)
    if ids is None:
        chosen = chosen.where(_due(now)).order_by(PendingMessage.id).limit(limit)
    else:
        wanted = list(ids)
        if not wanted:
            return token, []
        chosen = chosen.where(
            PendingMessage.id.in_(wanted),
            PendingMessage.status.in_((PendingStatus.PENDING, PendingStatus.CLAIMED)),
            or_(PendingMessage.status == PendingStatus.PENDING, PendingMessage.lease_expires_at < now),
        )
    lease_values = {
        "status": PendingStatus.CLAIMED,
        "claim_token": token,
        "lease_expires_at": now + timedelta(seconds=lease),
    }
    with session_scope(app) as session:
        dialect = session.get_bind().dialect.name
        if dialect == "sqlite":
            session.execute(
                update(PendingMessage)
                .where(PendingMessage.id.in_(chosen.scalar_subquery()))
                .values(**lease_values)
                .execution_options(synchronize_session=False)
            )
        else:
            locked = list(session.execute(chosen.with_for_update(skip_locked=True)).scalars())
            if not locked:
                return token, []
            session.execute(
                update(PendingMessage)
                .where(PendingMessage.id.in_(locked))
                .values(**lease_values)
                .execution_options(synchronize_session=False)
            )
        rows = list(
            session.execute(
                select(PendingMessage).where(PendingMessage.claim_token == token).order_by(PendingMessage.id)
            ).scalars()
        )
    return token, rows


def mark_sent(app: Celery, token: str, ids: Sequence[int]) -> int:
    """Mark claimed rows sent; rows no longer held by ``token`` are left alone. Returns count."""
    if not ids:
        return 0
    now = utcnow()
    with session_scope(app) as session:
        result = session.execute(
            update(PendingMessage)
            .where(PendingMessage.id.in_(list(ids)), PendingMessage.claim_token == token)
            .values(status=PendingStatus.SENT, sent_at=now, claim_token=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def mark_status(app: Celery, token: str, ids: Sequence[int], status: str, error: str) -> int:
    """Move claimed rows to a final state (expired, invalid, dead) with the reason."""
    if not ids:
        return 0
    with session_scope(app) as session:
        result = session.execute(
            update(PendingMessage)
            .where(PendingMessage.id.in_(list(ids)), PendingMessage.claim_token == token)
            .values(status=status, last_error=error[:10000], claim_token=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def release(app: Celery, token: str, ids: Sequence[int]) -> int:
    """Give claimed rows back untouched (not tried in this pass)."""
    if not ids:
        return 0
    with session_scope(app) as session:
        result = session.execute(
            update(PendingMessage)
            .where(PendingMessage.id.in_(list(ids)), PendingMessage.claim_token == token)
            .values(status=PendingStatus.PENDING, claim_token=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter (never below a tenth of the base)."""
    return max(base / 10, random.random() * min(cap, base * 2.0 ** min(attempts, 40)))


def mark_failed(
    app: Celery,
    token: str,
    failures: Sequence[tuple[int, str]],
    *,
    max_attempts: int,
    base: float,
    cap: float,
) -> tuple[int, int]:
    """Count a failed send for each row: back off, or mark dead after ``max_attempts``.

    Returns (rows rescheduled, rows now dead).
    """
    if not failures:
        return 0, 0
    now = utcnow()
    errors = dict(failures)
    rescheduled = dead = 0
    with session_scope(app) as session:
        rows = session.execute(
            select(PendingMessage.id, PendingMessage.attempts).where(
                PendingMessage.id.in_(list(errors)), PendingMessage.claim_token == token
            )
        ).all()
        for row_id, attempts in rows:
            attempts += 1
            values: dict[str, Any] = {
                "attempts": attempts,
                "last_error": errors[row_id][:10000],
                "claim_token": None,
                "lease_expires_at": None,
            }
            if attempts >= max_attempts:
                values["status"] = PendingStatus.DEAD
                dead += 1
            else:
                values["status"] = PendingStatus.PENDING
                values["next_attempt_at"] = now + timedelta(seconds=backoff_seconds(attempts, base, cap))
                rescheduled += 1
            session.execute(
                update(PendingMessage)
                .where(PendingMessage.id == row_id, PendingMessage.claim_token == token)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
    return rescheduled, dead


def purge_sent(app: Celery, older_than: float, batch: int = 5000) -> int:
    """Delete sent rows older than ``older_than`` seconds, in batches."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    total = 0
    for _ in range(10_000):
        with session_scope(app) as session:
            ids = list(
                session.execute(
                    select(PendingMessage.id)
                    .where(PendingMessage.status == PendingStatus.SENT, PendingMessage.sent_at < cutoff)
                    .limit(batch)
                ).scalars()
            )
            if not ids:
                break
            session.execute(delete(PendingMessage).where(PendingMessage.id.in_(ids)))
            total += len(ids)
    return total


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
