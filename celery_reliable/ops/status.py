"""The state of the reliability tables at a glance, and what in it needs a person.

Shared by ``celery -A proj reliable status``, the metrics and the Flower page: three grouped
queries in one transaction, whatever the size of the tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from celery import Celery
from sqlalchemy import func, select

from ..config import ReliableSettings, get_settings
from ..store.failures import session_scope
from ..store.models import FailedTask, FailureStatus, PendingMessage, PendingStatus, ProcessedTask, utcnow

#: A backlog older than this many relay intervals needs a person (the relay is not keeping up).
BACKLOG_INTERVALS = 10
#: ... and never less than this many seconds (outbox rows wait ``reliable_outbox_grace`` first).
BACKLOG_MIN_SECONDS = 60.0

#: Pending states a person must act on: nothing will send these rows again by itself.
STUCK_PENDING = (PendingStatus.DEAD, PendingStatus.INVALID, PendingStatus.EXPIRED)
#: Pending states still waiting to be sent.
WAITING_PENDING = (PendingStatus.PENDING, PendingStatus.CLAIMED)

#: Task names (and exception types) counted one by one in a summary; the rest are added up under
#: :data:`OTHER`. Anyone who can publish can create task names (an unknown one is stored as sent),
#: so without a cap one flood of names would make every summary, metric scrape and page that
#: large. 100 covers any real application's failing tasks.
TOP = 100
#: The key that stands for every name past the first :data:`TOP`.
OTHER = "(other)"


def top_counts(counts: Mapping[str, int], limit: int = TOP) -> dict[str, int]:
    """The ``limit`` largest counts, largest first, and the rest summed under :data:`OTHER`."""
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    top: dict[str, int] = {}
    for key, count in ordered[:limit]:
        top[key] = top.get(key, 0) + count
    rest = sum(count for _, count in ordered[limit:])
    if rest:
        top[OTHER] = top.get(OTHER, 0) + rest
    return top


def pending_statuses() -> list[str]:
    """Every value of :class:`PendingStatus`, in declaration order."""
    return [v for k, v in vars(PendingStatus).items() if k.isupper() and isinstance(v, str)]


@dataclass(frozen=True)
class Summary:
    """Counts of the reliability tables; ``attention`` says what a person must do (empty: healthy).

    ``failed_by_task`` and ``failed_by_exception`` hold the :data:`TOP` largest entries and the
    sum of the rest under ``"(other)"``.
    """

    pending: dict[str, int]
    oldest_pending_age: float | None
    failed_by_task: dict[str, int]
    failed_by_exception: dict[str, int]
    failed_by_status: dict[str, int]
    replayed: int
    processed_ids: int
    attention: list[str]

    @property
    def healthy(self) -> bool:
        return not self.attention


def backlog_threshold(settings: ReliableSettings) -> float:
    """Seconds after which unsent pending rows count as a backlog that needs a person."""
    interval = settings.relay_interval if settings.relay_interval is not None else BACKLOG_MIN_SECONDS
    return max(BACKLOG_INTERVALS * interval, settings.outbox_grace + 2 * interval, BACKLOG_MIN_SECONDS)


def summary(app: Celery, *, command: str | None = None) -> Summary:
    """Count the pending, failed and processed rows of ``app``'s database.

    Args:
        app: the app whose tables are read.
        command: how the advice in ``attention`` writes the command line (default
            ``celery -A <app.main> reliable``).

    Raises:
        StoreError: the database cannot be reached or is not migrated.
    """
    now = utcnow()
    with session_scope(app) as session:
        pending_rows = session.execute(
            select(PendingMessage.status, func.count(), func.min(PendingMessage.created_at)).group_by(
                PendingMessage.status
            )
        ).all()
        failed_rows = session.execute(
            select(FailedTask.task_name, FailedTask.exc_type, FailedTask.status, func.count()).group_by(
                FailedTask.task_name, FailedTask.exc_type, FailedTask.status
            )
        ).all()
        processed = int(session.execute(select(func.count()).select_from(ProcessedTask)).scalar_one())
    pending = dict.fromkeys(pending_statuses(), 0)
    oldest: datetime | None = None
    for status, count, created in pending_rows:
        pending[str(status)] = pending.get(str(status), 0) + int(count)
        if status in WAITING_PENDING and created is not None and (oldest is None or created < oldest):
            oldest = created
    by_status = dict.fromkeys(FailureStatus.ALL, 0)
    by_task: dict[str, int] = {}
    by_exc: dict[str, int] = {}
    for task_name, exc_type, status, count in failed_rows:
        by_status[str(status)] = by_status.get(str(status), 0) + int(count)
        if status == FailureStatus.FAILED:
            by_task[task_name] = by_task.get(task_name, 0) + int(count)
            key = exc_type or "(none)"
            by_exc[key] = by_exc.get(key, 0) + int(count)
    age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else None
    return Summary(
        pending=pending,
        oldest_pending_age=age,
        failed_by_task=top_counts(by_task),
        failed_by_exception=top_counts(by_exc),
        failed_by_status=by_status,
        replayed=by_status.get(FailureStatus.REPLAYED, 0),
        processed_ids=processed,
        attention=_attention(
            get_settings(app), pending, age, by_status, command or f"celery -A {app.main or 'proj'} reliable"
        ),
    )


def _attention(
    settings: ReliableSettings, pending: dict[str, int], age: float | None, failed: dict[str, int], command: str
) -> list[str]:
    reasons: list[str] = []
    waiting = failed.get(FailureStatus.FAILED, 0)
    if waiting:
        reasons.append(f"{waiting} failed task(s) await a replay or a purge ({command} failed list)")
    for status in STUCK_PENDING:
        if not pending.get(status):
            continue
        if status == PendingStatus.EXPIRED:  # resend skips them: they must not run any more
            reasons.append(
                f"{pending[status]} pending message(s) are expired: their expires passed before they were sent, "
                f"so they will not run; drop them ({command} pending drop --status expired) and publish "
                "again with a new expires if the work is still wanted"
            )
        else:
            reasons.append(
                f"{pending[status]} pending message(s) are {status}: resend or drop them "
                f"({command} pending list --status {status})"
            )
    threshold = backlog_threshold(settings)
    if age is not None and age > threshold:
        relay = (
            "the relay is not scheduled (reliable_relay_interval is None)"
            if settings.relay_interval is None
            else "is the broker reachable and celery beat running?"
        )
        reasons.append(f"the oldest unsent pending message is {age:.0f} s old (more than {threshold:.0f} s): {relay}")
    return reasons
