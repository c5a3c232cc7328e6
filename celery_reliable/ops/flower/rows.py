"""What the Reliability page and its JSON API read: filters, rows as plain dicts, the summary.

No Flower or tornado here: these run in Flower's thread pool, off the event loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ...exceptions import ReliableError
from ...store.failures import FailureFilter, count_failures, list_failures, session_scope
from ...store.models import FailedTask, FailureStatus, PendingMessage, PendingStatus
from ..status import Summary, pending_statuses, summary

#: Most rows one page or API call returns.
MAX_LIMIT = 1000
#: Task names (and exception types) offered in the page's filter lists: the most common ones.
CHOICES = 50
#: Characters of a traceback (and of an exception message) shown per row on the page.
TRACEBACK_SHOWN = 4000
DEFAULT_LIMIT = 50
#: ``pending_status`` value that lists every row, sent ones included (the default hides sent rows).
ALL = "all"


class BadQuery(ReliableError):
    """A filter value the page does not accept (answered with HTTP 400)."""


@dataclass(frozen=True)
class Query:
    """The page's filters, as given in the query string (empty string: any)."""

    task: str = ""
    exception: str = ""
    status: str = FailureStatus.FAILED
    pending_status: str = ""
    limit: int = DEFAULT_LIMIT

    def __post_init__(self) -> None:
        if self.status and self.status not in FailureStatus.ALL:
            raise BadQuery(
                f"status must be one of {', '.join(FailureStatus.ALL)} (or empty for any), got {self.status!r}"
            )
        if self.pending_status and self.pending_status not in (*pending_statuses(), ALL):
            raise BadQuery(
                f"pending_status must be one of {', '.join(pending_statuses())} or {ALL} "
                f"(or empty for every unsent row), got {self.pending_status!r}"
            )
        if not 1 <= self.limit <= MAX_LIMIT:
            raise BadQuery(f"limit must be between 1 and {MAX_LIMIT}, got {self.limit}")

    def failure_filter(self) -> FailureFilter:
        return FailureFilter(task_name=self.task or None, exc_type=self.exception or None, status=self.status or None)

    def params(self) -> dict[str, str]:
        """The query string that shows the same view (only non-default values)."""
        values = {
            "task": self.task, "exception": self.exception, "status": self.status,
            "pending_status": self.pending_status, "limit": str(self.limit),
        }  # fmt: skip
        defaults = Query()
        return {k: v for k, v in values.items() if v != str(getattr(defaults, k))}


@dataclass
class Page:
    """Everything the page shows."""

    summary: Summary
    failures: list[dict[str, Any]]
    failures_total: int
    pending: list[dict[str, Any]]
    task_names: list[str] = field(default_factory=list)
    exception_types: list[str] = field(default_factory=list)


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def failure_dict(row: FailedTask) -> dict[str, Any]:
    """A failed row as JSON-ready data (arguments as stored: JSON with kombu's type markers)."""
    return {
        "id": row.id, "task_id": row.task_id, "task_name": row.task_name, "reason": row.reason,
        "status": row.status, "args": row.args, "kwargs": row.kwargs, "exc_type": row.exc_type,
        "exc_message": row.exc_message, "traceback": row.traceback, "attempts": row.attempts,
        "hostname": row.hostname, "first_failed_at": _time(row.first_failed_at),
        "last_failed_at": _time(row.last_failed_at), "replay_task_id": row.replay_task_id,
        "replayed_at": _time(row.replayed_at), "replay_count": row.replay_count, "replay_of_id": row.replay_of_id,
    }  # fmt: skip


def pending_dict(row: PendingMessage) -> dict[str, Any]:
    """A pending row as JSON-ready data."""
    return {
        "id": row.id, "task_id": row.task_id, "task_name": row.task_name, "source": row.source,
        "status": row.status, "attempts": row.attempts, "args": row.args, "kwargs": row.kwargs,
        "eta": _time(row.eta), "expires_at": _time(row.expires_at), "next_attempt_at": _time(row.next_attempt_at),
        "created_at": _time(row.created_at), "sent_at": _time(row.sent_at), "last_error": row.last_error,
    }  # fmt: skip


def short_json(value: Any, limit: int = 160) -> str:
    """Compact JSON of ``value``, cut to ``limit`` characters (the page escapes it)."""
    text = json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clip(text: str | None, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out (the page stays small)."""
    text = text or ""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… {len(text) - limit} more characters (celery -A proj reliable failed show ID)"


def short_time(iso: str | None) -> str:
    """``2026-01-31 12:00:00`` from an ISO time (the page says the times are UTC)."""
    return iso[:19].replace("T", " ") if iso else "-"


def failures(app: Celery, query: Query) -> tuple[list[dict[str, Any]], int]:
    """The failed rows the filters select (newest first, up to the limit) and how many match."""
    selected = query.failure_filter()
    rows = list_failures(app, selected, limit=query.limit)
    return [failure_dict(r) for r in rows], count_failures(app, selected)


def pending(app: Celery, query: Query) -> list[dict[str, Any]]:
    """Pending rows, oldest first: every unsent one by default, one status, or all of them."""
    statement = select(PendingMessage).order_by(PendingMessage.id).limit(query.limit)
    if query.pending_status == "":
        statement = statement.where(PendingMessage.status.notin_(PendingStatus.DELIVERED))
    elif query.pending_status != ALL:
        statement = statement.where(PendingMessage.status == query.pending_status)
    with session_scope(app) as session:
        return [pending_dict(r) for r in session.execute(statement).scalars()]


def _most_common(session: Session, column: Any) -> list[str]:
    """The :data:`CHOICES` values of ``column`` with the most rows, in alphabetical order."""
    count = func.count().label("n")
    top = select(column, count).group_by(column).order_by(count.desc(), column).limit(CHOICES)
    return sorted(str(value) for value, _ in session.execute(top) if value)


def choices(app: Celery) -> tuple[list[str], list[str]]:
    """Task names and exception types for the filter lists: the most common ones only.

    Anyone who can publish can create task names (an unknown name is stored as sent), so the
    list is capped; any name can still be typed into the filter.
    """
    with session_scope(app) as session:
        return _most_common(session, FailedTask.task_name), _most_common(session, FailedTask.exc_type)


def load(app: Celery, query: Query) -> Page:
    """Read the page (a handful of small queries).

    Raises:
        StoreError: the database cannot be read.
    """
    rows, total = failures(app, query)
    task_names, exception_types = choices(app)
    return Page(summary(app), rows, total, pending(app, query), task_names, exception_types)
