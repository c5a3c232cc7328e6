"""Time limits and retry waits against the broker's redelivery timeout.

A late-ack message held longer than the timeout (Redis ``visibility_timeout``, RabbitMQ
``consumer_timeout``) is delivered again while the first worker still has it: the task runs twice.
That covers long runs, retries waiting in a worker with a countdown, and eta/countdown messages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from celery import Celery

from ...broker.facts import AMQP_SCHEMES, REDIS_SCHEMES, broker_scheme, kombu_sweeps_on_its_own, visibility_timeout
from ...config import get_settings
from ...worker.install import TIME_LIMIT_MARGIN
from .result import Result, Status
from .tasks import TaskFacts, names


def _option(options: Mapping[str, Any], key: str, default: float) -> float | None:
    """A numeric broker transport option, or None when it is not a finite number >= 0 (NaN, "abc", inf)."""
    try:
        value = float(options.get(key, default))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _bad_transport_option(app: Celery, key: str) -> str | None:
    """``broker_transport_options[key] = 'value'`` when that Redis option is set but is no usable number."""
    options = app.conf.broker_transport_options or {}
    if broker_scheme(app) not in REDIS_SCHEMES or key not in options:
        return None
    if _option(options, key, 0) is None or (key == "visibility_timeout" and _option(options, key, 0) == 0):
        return f"broker_transport_options[{key!r}] = {options[key]!r}"
    return None


def _timeout(app: Celery) -> float | None:
    """The broker's redelivery timeout; None if it has none or it is not a usable number."""
    if _bad_transport_option(app, "visibility_timeout"):
        return None
    return visibility_timeout(app)


def _timeout_words(app: Celery) -> tuple[str, str] | None:
    """(what the timeout is called, how to raise it) for the app's broker, or None if it has none."""
    scheme = broker_scheme(app)
    timeout = _timeout(app)
    if timeout is None:
        return None
    if scheme in REDIS_SCHEMES:
        return (
            f"visibility timeout {timeout:g} s",
            "app.conf.broker_transport_options = {'visibility_timeout': {seconds}} "
            "(or leave it unset: ReliableTask raises the timeout it chose above every time_limit)",
        )
    if scheme in AMQP_SCHEMES:
        return (
            f"RabbitMQ consumer_timeout (default {timeout:g} s; the server may set another)",
            "raise consumer_timeout in rabbitmq.conf (milliseconds), or lower the task's limit",
        )
    return None


def check_time_limits(app: Celery, tasks: list[TaskFacts]) -> Result | None:
    """A late-ack task running past the timeout is handed to a second worker."""
    bad = _bad_transport_option(app, "visibility_timeout")
    if bad:
        return Result(
            "tasks.time_limit",
            Status.FAIL,
            f"{bad} is not a number of seconds > 0: kombu cannot tell when a dead worker's messages are due, "
            "so they are never given back (and no time limit can be checked against it)",
            "set it to a number of seconds above the longest task time_limit, or leave it out "
            "(reliable_visibility_timeout then sets it)",
        )
    words = _timeout_words(app)
    timeout = _timeout(app)
    if words is None or timeout is None:
        return None
    what, fix = words
    late = [t for t in tasks if t.acks_late]
    over = [t for t in late if t.time_limit is not None and t.time_limit >= timeout]
    if over:
        longest = max(t.time_limit or 0 for t in over)
        return Result(
            "tasks.time_limit",
            Status.FAIL,
            f"{names(over)}: time_limit up to {longest:g} s >= {what}: a run still going then is delivered "
            "again and runs twice",
            fix.replace("{seconds}", f"{longest + TIME_LIMIT_MARGIN:g}"),
        )
    close = [t for t in late if t.time_limit is not None and t.time_limit > timeout - TIME_LIMIT_MARGIN]
    unlimited = [t for t in late if t.time_limit is None]
    if close or unlimited:
        parts = []
        if close:
            parts.append(f"{names(close)}: time_limit within {TIME_LIMIT_MARGIN:g} s of the {what}")
        if unlimited:
            parts.append(f"{len(unlimited)} late-ack tasks have no time_limit ({names(unlimited)})")
        return Result(
            "tasks.time_limit",
            Status.WARN,
            "; ".join(parts) + ": a run (plus its wait in the prefetch buffer) longer than the timeout runs twice",
            f"set time_limit below {timeout - TIME_LIMIT_MARGIN:g} s (app.conf.task_time_limit, or per task), "
            "or " + fix.replace("{seconds}", "<longest run + 60>"),
        )
    longest = max((t.time_limit or 0 for t in late), default=0)
    detail = f"longest time_limit {longest:g} s < {what}" if late else "no late-ack tasks"
    return Result("tasks.time_limit", Status.PASS, detail)


def check_retry_delays(app: Celery, tasks: list[TaskFacts]) -> Result | None:
    """A retry or eta waits in the worker's memory, unacknowledged, until it is due."""
    words = _timeout_words(app)
    timeout = _timeout(app)
    if words is None or timeout is None:
        return None
    what, fix = words
    reminder = f"countdown/eta passed at call time must stay below {timeout:g} s too"
    waits = {t.name: max(t.retry_delay or 0.0, t.default_retry_delay) for t in tasks}
    over = [t for t in tasks if waits[t.name] >= timeout]
    if over:
        longest = max(waits[t.name] for t in over)
        return Result(
            "tasks.retry_delay",
            Status.WARN,
            f"{names(over)}: a retry can wait up to {longest:g} s (retry_backoff_max / default_retry_delay) "
            f">= {what}: the waiting message is delivered again and runs twice; {reminder}",
            f"keep retry waits below {timeout:g} s (retry_backoff_max, default_retry_delay; ReliableTask caps "
            "its own), or " + fix.replace("{seconds}", f"{longest + TIME_LIMIT_MARGIN:g}"),
        )
    longest = max(waits.values(), default=0.0)
    return Result("tasks.retry_delay", Status.PASS, f"longest retry wait {longest:g} s < {what}; {reminder}")


#: A restore-sweep lock longer than this holds up every restore noticeably when its worker dies.
SWEEP_LOCK_LIMIT = 60.0
#: Seconds between actual restore scans beyond which dead workers' messages come back late.
SWEEP_PERIOD_LIMIT = 60.0


def check_restore_sweep(app: Celery) -> Result | None:
    """Redis: how soon, after the visibility timeout, kombu's sweep gives a dead worker's messages back."""
    if broker_scheme(app) not in REDIS_SCHEMES:
        return None
    options = app.conf.broker_transport_options or {}
    keys = ("unacked_restore_interval", "unacked_restore_throttle", "unacked_mutex_expire")
    bad = [shown for shown in (_bad_transport_option(app, key) for key in keys) if shown]
    if bad:
        return Result(
            "redis.restore_sweep",
            Status.FAIL,
            f"{', '.join(bad)}: not a finite number >= 0, so kombu's sweep that gives back the messages of dead "
            "workers cannot run as meant",
            "broker_transport_options: unacked_restore_interval 10, unacked_restore_throttle 1, "
            "unacked_mutex_expire 20 (or leave them out: ReliableTask sets these)",
        )
    if kombu_sweeps_on_its_own():
        interval = _option(options, "unacked_restore_interval", 10) or 0.0
        period = interval * max(1, int(_option(options, "unacked_restore_throttle", 10) or 1))
    else:  # kombu < 5.7 scans every 100 s; celery_reliable's consumer step scans at its own period
        period = get_settings(app).restore_interval
    lock = _option(options, "unacked_mutex_expire", 300) or 0.0
    problems = []
    if period > SWEEP_PERIOD_LIMIT:
        problems.append(
            f"the restore sweep scans every {period:g} s (unacked_restore_interval x unacked_restore_throttle): "
            "messages of dead workers come back up to that long after the visibility timeout"
        )
    if lock > SWEEP_LOCK_LIMIT:
        problems.append(
            f"the sweep's lock lasts {lock:g} s (unacked_mutex_expire): a worker killed during its sweep stops "
            "every worker's restores that long"
        )
    if problems:
        return Result(
            "redis.restore_sweep",
            Status.WARN,
            "; ".join(problems),
            "broker_transport_options: unacked_restore_interval 10, unacked_restore_throttle 1, "
            "unacked_mutex_expire 20 (what ReliableTask sets unless you set them)",
        )
    return Result(
        "redis.restore_sweep",
        Status.PASS,
        f"the restore sweep scans every {period:g} s; a dead sweeper's lock lasts at most {lock:g} s",
    )
