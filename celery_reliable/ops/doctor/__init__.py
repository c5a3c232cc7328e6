"""Check a live deployment for the settings that lose or duplicate Celery tasks.

:func:`run_checks` connects to the broker and the database of an app, reads its Celery and
``reliable_*`` settings and its registered tasks as a worker would see them, and returns one
:class:`Result` per check (PASS, NOTE, WARN or FAIL with the fix). It prints nothing and changes
nothing: no setting is written, no queue or table is created.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from ...broker.facts import AMQP_SCHEMES, REDIS_SCHEMES, broker_scheme
from ...config import get_settings
from ...exceptions import ImproperlyConfigured
from ...worker.install import atomic_fetch_off
from . import beat, celery_settings, rabbitmq, redis, store, timeouts, versions
from .result import Report, Result, Status
from .tasks import TaskFacts, task_facts

__all__ = ["Report", "Result", "Status", "run_checks"]

#: Seconds to wait for the broker to accept a connection or answer a command.
BROKER_TIMEOUT = 5.0


def _load_tasks(app: Celery) -> tuple[Result | None, list[TaskFacts]]:
    """Import the task modules a worker imports, bind every task (which installs ReliableTask)."""
    try:
        app.loader.import_default_modules()
        return None, task_facts(app)
    except ImproperlyConfigured as exc:
        return Result("tasks.import", Status.FAIL, str(exc), "fix the option named above"), []
    except Exception as exc:
        return (
            Result(
                "tasks.import",
                Status.FAIL,
                f"importing the task modules failed: {type(exc).__name__}: {exc}",
                "a worker would fail the same way at start: fix the import",
            ),
            [],
        )


def _hide(text: str, secret: str | None) -> str:
    """``text`` with the broker password masked, should an error message quote it."""
    return text.replace(secret, "***") if secret and len(secret) >= 4 else text


def _broker(app: Celery) -> list[Result]:
    scheme = broker_scheme(app)
    if scheme not in REDIS_SCHEMES + AMQP_SCHEMES:
        return [Result("broker.connection", Status.NOTE, f"broker transport {scheme!r}: no broker checks for it")]
    timeouts_ = {"socket_connect_timeout": BROKER_TIMEOUT, "socket_timeout": BROKER_TIMEOUT}
    connection: Any = app.connection_for_write(connect_timeout=BROKER_TIMEOUT, transport_options=timeouts_)
    shown = connection.as_uri()
    try:
        try:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT)
            channel = connection.default_channel
        except Exception as exc:
            return [
                Result(
                    "broker.connection",
                    Status.FAIL,
                    f"cannot connect to {shown}: {_hide(str(exc), connection.password)}",
                    "check broker_url and that the broker answers; nothing else about the broker was checked",
                )
            ]
        results = [Result("broker.connection", Status.PASS, f"connected to {shown}")]
        try:
            if scheme in REDIS_SCHEMES:
                settings = get_settings(app)
                recovery = (settings.worker_heartbeat, settings.worker_lost_after)
                ledger = settings.outbox_only and settings.reconcile_after is not None
                results += redis.run(
                    channel.client, settings.redis_wait_replicas, atomic_fetch_off(app), recovery, ledger
                )
            else:
                results += rabbitmq.run(app, connection.connection)
        except Exception as exc:  # the connection dropped mid-way, a command refused: report, go on
            results.append(
                Result(
                    "broker.settings",
                    Status.NOTE,
                    f"could not read the broker's settings: {type(exc).__name__}: "
                    f"{_hide(str(exc), connection.password)}",
                    "run the doctor again; if it persists, check the broker's permissions for this user",
                )
            )
        return results
    finally:
        connection.release()


def run_checks(app: Celery) -> Report:
    """Run every check against ``app``'s broker, database, settings and registered tasks.

    Imports the app's task modules and binds its tasks first, as a worker does, so the findings
    are about what the workers will actually do. Reads only: nothing is written or declared.

    Args:
        app: the configured Celery app (``celery -A proj``).

    Returns:
        Every finding in order; ``exit_code()`` is what ``celery -A proj reliable doctor`` exits with.
    """
    try:
        settings = get_settings(app)
    except ImproperlyConfigured as exc:
        return Report.of([Result("settings", Status.FAIL, str(exc), "fix the setting named above")])
    results: list[Result] = [versions.check_versions()]
    failed_import, tasks = _load_tasks(app)
    if failed_import is not None:
        results.append(failed_import)
    results += _broker(app)
    for check in (
        timeouts.check_time_limits(app, tasks),
        timeouts.check_retry_delays(app, tasks),
        timeouts.check_restore_sweep(app),
        celery_settings.check_acks_late(tasks),
        celery_settings.check_worker_lost(tasks),
        celery_settings.check_prefetch(app, tasks),
        celery_settings.check_events(app),
        store.check_schema(app, settings),
        beat.check_relay(app, settings),
    ):
        if check is not None:
            results.append(check)
    return Report.of(results)
