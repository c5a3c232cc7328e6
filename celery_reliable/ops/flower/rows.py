"""What the Reliability page and its JSON API read: filters, rows as plain dicts, the summary.

No Flower or tornado here: these run in Flower's thread pool, off the event loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import click
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ...exceptions import ReliableError
from ...store.failures import FailureFilter, count_failures, list_failures, session_scope
from ...store.models import FailedTask, FailureStatus, PendingMessage, PendingStatus
from ...store.pending import PendingFilter, count_pending, find_pending
from ..cli.options import parse_when
from ..status import Summary, pending_statuses, summary
from .chart import SPANS, failures_over_time
from .hints import celery_command

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


def parse_time(value: str, name: str) -> datetime | None:
    """``since``/``until`` as the CLI reads them: an ISO date/time (UTC unless it says) or an age (``2h``, ``7d``)."""
    if not value:
        return None
    try:
        return parse_when(value, name)
    except click.BadParameter as exc:
        raise BadQuery(f"{name}: {exc.message}") from None


@dataclass(frozen=True)
class Query:
    """The page's filters, as given in the query string (empty string: any)."""

    task: str = ""
    exception: str = ""
    status: str = FailureStatus.FAILED
    pending_status: str = ""
    search: str = ""
    since: str = ""
    until: str = ""
    limit: int = DEFAULT_LIMIT
    #: page of the failed list and of the pending list (1: the first)
    page: int = 1
    pending_page: int = 1
    #: what the failures chart covers (a key of :data:`SPANS`)
    span: str = "24h"

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
        if self.page < 1 or self.pending_page < 1:
            raise BadQuery(f"page must be 1 or more, got {min(self.page, self.pending_page)}")
        if self.span not in SPANS:
            raise BadQuery(f"span must be one of {', '.join(SPANS)}, got {self.span!r}")
        self.window()  # a bad since/until is refused now, with its value

    def window(self) -> tuple[datetime | None, datetime | None]:
        """``since`` and ``until`` as times (an age such as ``24h`` counts back from now)."""
        return parse_time(self.since, "since"), parse_time(self.until, "until")

    def failure_filter(self) -> FailureFilter:
        since, until = self.window()
        return FailureFilter(
            task_name=self.task or None, exc_type=self.exception or None, status=self.status or None,
            since=since, until=until, search=self.search or None,
        )  # fmt: skip

    def chart_filter(self) -> FailureFilter:
        """What the chart counts: the task, exception and search filters, any status, any time."""
        return FailureFilter(task_name=self.task or None, exc_type=self.exception or None, search=self.search or None)

    def pending_filter(self) -> PendingFilter:
        since, until = self.window()
        status: str | tuple[str, ...] | None
        if self.pending_status == "":
            status = tuple(s for s in pending_statuses() if s not in PendingStatus.DELIVERED)
        else:
            status = None if self.pending_status == ALL else self.pending_status
        return PendingFilter(
            status=status, task_name=self.task or None, since=since, until=until, search=self.search or None
        )

    def params(self, **changes: Any) -> dict[str, str]:
        """The query string that shows the same view (only non-default values), with ``changes``."""
        values = {
            "task": self.task, "exception": self.exception, "status": self.status,
            "pending_status": self.pending_status, "search": self.search, "since": self.since,
            "until": self.until, "limit": str(self.limit), "page": str(self.page),
            "pending_page": str(self.pending_page), "span": self.span,
        }  # fmt: skip
        values.update({k: str(v) for k, v in changes.items()})
        defaults = Query()
        return {k: v for k, v in values.items() if v != str(getattr(defaults, k))}


@dataclass(frozen=True)
class Paging:
    """Where a page of a list is: ``41-60 of 213``."""

    page: int
    limit: int
    total: int

    @property
    def first(self) -> int:
        return min((self.page - 1) * self.limit + 1, self.total)

    @property
    def last(self) -> int:
        return min(self.page * self.limit, self.total)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.limit))

    @property
    def has_previous(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page * self.limit < self.total

    def label(self) -> str:
        if (self.page - 1) * self.limit >= self.total:
            return f"none of {self.total} (past the last page)" if self.total else "0 of 0"
        return f"{self.first}-{self.last} of {self.total}"


@dataclass
class Page:
    """Everything the page shows."""

    summary: Summary
    failures: list[dict[str, Any]]
    failures_total: int
    pending: list[dict[str, Any]]
    pending_total: int
    failed_paging: Paging
    pending_paging: Paging
    chart: Any = None
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
        "options": row.options,
    }  # fmt: skip


def pending_dict(row: PendingMessage) -> dict[str, Any]:
    """A pending row as JSON-ready data."""
    return {
        "id": row.id, "task_id": row.task_id, "task_name": row.task_name, "source": row.source,
        "status": row.status, "attempts": row.attempts, "args": row.args, "kwargs": row.kwargs,
        "eta": _time(row.eta), "expires_at": _time(row.expires_at), "next_attempt_at": _time(row.next_attempt_at),
        "created_at": _time(row.created_at), "sent_at": _time(row.sent_at), "last_error": row.last_error,
        "options": row.options, "lease_expires_at": _time(row.lease_expires_at),
    }  # fmt: skip


def short_json(value: Any, limit: int = 160) -> str:
    """Compact JSON of ``value``, cut to ``limit`` characters (the page escapes it)."""
    text = json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clip(text: str | None, limit: int, command: str = "celery -A proj") -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out (the page stays small)."""
    text = text or ""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… {len(text) - limit} more characters ({command} reliable failed show ID)"


def short_time(iso: str | None) -> str:
    """``2026-01-31 12:00:00`` from an ISO time (the page says the times are UTC)."""
    return iso[:19].replace("T", " ") if iso else "-"


def failures(app: Celery, query: Query) -> tuple[list[dict[str, Any]], int]:
    """The failed rows of the query's page (newest first) and how many match in all."""
    selected = query.failure_filter()
    rows = list_failures(app, selected, limit=query.limit, offset=(query.page - 1) * query.limit)
    return [failure_dict(r) for r in rows], count_failures(app, selected)


def pending(app: Celery, query: Query) -> tuple[list[dict[str, Any]], int]:
    """Pending rows of the query's page, oldest first (every unsent one by default), and how many match."""
    selected = query.pending_filter()
    rows = find_pending(app, selected, limit=query.limit, offset=(query.pending_page - 1) * query.limit)
    return [pending_dict(r) for r in rows], count_pending(app, selected)


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
    waiting, waiting_total = pending(app, query)
    task_names, exception_types = choices(app)
    return Page(
        summary(app, command=f"{celery_command(app)} reliable"), rows, total, waiting, waiting_total,
        Paging(query.page, query.limit, total),
        Paging(query.pending_page, query.limit, waiting_total),
        failures_over_time(app, query.span, query.chart_filter()), task_names, exception_types,
    )  # fmt: skip
