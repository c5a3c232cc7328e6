"""What each registered task will do with its message: ack timing, worker-lost handling, time
limit and the longest wait before a retry. Read from the bound task classes, as a worker sees them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery

#: Task names owned by Celery and by this package; they are not the application's to fix.
LIBRARY_PREFIXES = ("celery.", "celery_reliable.")


@dataclass(frozen=True)
class TaskFacts:
    """One registered task, as the worker will run it."""

    name: str
    reliable: bool
    acks_late: bool
    #: a pool process killed mid-task gives the message back (reject) or retries it
    survives_worker_loss: bool
    #: hard time limit in seconds, None when unlimited
    time_limit: float | None
    #: longest wait before an automatic retry, None when the task is not retried automatically
    retry_delay: float | None
    #: wait of a ``self.retry()`` without countdown (``default_retry_delay``)
    default_retry_delay: float


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _reliable_retry_delay(task: Any) -> float | None:
    policy = task.policy
    waits = [policy.backoff_max]
    for rule in policy.policies.values():
        waits += [w for w in (rule.backoff_max, rule.countdown) if w is not None]
    longest = float(max(waits))
    return min(longest, float(policy.ceiling)) if policy.ceiling is not None else longest


def _plain_retry_delay(task: Any) -> float | None:
    if not getattr(task, "autoretry_for", None):
        return None
    if getattr(task, "retry_backoff", False):
        return _number(getattr(task, "retry_backoff_max", 600)) or 600.0
    countdown = _number((getattr(task, "retry_kwargs", None) or {}).get("countdown"))
    return countdown if countdown is not None else _number(task.default_retry_delay) or 0.0


def task_facts(app: Celery) -> list[TaskFacts]:
    """The application's own registered tasks (library and Celery built-ins left out), by name."""
    from ...worker.task import ReliableTask

    facts: list[TaskFacts] = []
    for name, task in sorted(app.tasks.items()):
        if name.startswith(LIBRARY_PREFIXES):
            continue
        reliable = isinstance(task, ReliableTask)
        limit = _number(task.time_limit if task.time_limit is not None else app.conf.task_time_limit)
        facts.append(
            TaskFacts(
                name=name,
                reliable=reliable,
                acks_late=bool(task.acks_late),
                survives_worker_loss=bool(task.reject_on_worker_lost or getattr(task, "retry_on_worker_lost", False)),
                time_limit=limit or None,
                retry_delay=_reliable_retry_delay(task) if reliable else _plain_retry_delay(task),
                default_retry_delay=_number(task.default_retry_delay) or 0.0,
            )
        )
    return facts


def names(tasks: list[TaskFacts], limit: int = 5) -> str:
    """``a, b, c and 4 more``: task names short enough for one table cell."""
    shown = ", ".join(t.name for t in tasks[:limit])
    return f"{shown} and {len(tasks) - limit} more" if len(tasks) > limit else shown
