"""The library's beat tasks stay out of the INFO log when idle, and out of task events unless asked for."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS

from celery_reliable import ReliableTask
from celery_reliable.worker.bootstep import ReliableWorkerStep
from celery_reliable.worker.quiet import IdleBeatTaskFilter, quiet_beat_tasks


def _app(**conf: Any) -> Celery:
    app = Celery("quiet", broker="memory://", set_as_current=False, task_cls=ReliableTask)
    app.conf.update(reliable_database_url="sqlite://", **conf)
    return app


def _record(msg: str, **data: Any) -> logging.LogRecord:
    return logging.LogRecord("celery.app.trace", logging.INFO, __file__, 1, msg, (data,), None)


def test_idle_runs_of_library_tasks_log_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    # Given Celery's loggers with the filter, at INFO
    quiet_beat_tasks()
    quiet_beat_tasks()  # once per process, however often the worker step is built
    trace = logging.getLogger("celery.app.trace")
    assert sum(isinstance(f, IdleBeatTaskFilter) for f in trace.filters) == 1
    caplog.set_level(logging.INFO, logger="celery.app.trace")
    # When Celery logs idle relay runs, a relay run that sent something, and a user task
    trace.info(LOG_RECEIVED, {"name": "celery_reliable.relay", "id": "r1"})
    trace.info(LOG_SUCCESS, {"name": "celery_reliable.relay", "id": "r1", "runtime": 0.01, "return_value": "None"})
    trace.info(LOG_SUCCESS, {"name": "celery_reliable.cleanup", "id": "c1", "runtime": 0.01, "return_value": "None"})
    busy = "{'claimed': 3, 'sent': 3, 'failed': 0}"
    trace.info(LOG_SUCCESS, {"name": "celery_reliable.relay", "id": "r2", "runtime": 0.01, "return_value": busy})
    trace.info(LOG_RECEIVED, {"name": "shop.charge", "id": "u1"})
    # Then only the busy run and the user task reach the INFO log
    assert [r.getMessage() for r in caplog.records] == [
        f"Task celery_reliable.relay[r2] succeeded in 0.01s: {busy}",
        "Task shop.charge[u1] received",
    ]
    # And at DEBUG the idle runs show, as DEBUG lines
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="celery.app.trace")
    trace.info(LOG_RECEIVED, {"name": "celery_reliable.relay", "id": "r3"})
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "Task celery_reliable.relay[r3] received")
    ]


def test_filter_leaves_other_records_alone() -> None:
    keep = IdleBeatTaskFilter()
    other = logging.LogRecord("celery.app.trace", logging.WARNING, __file__, 1, LOG_RECEIVED, None, None)
    assert keep.filter(other) and other.levelno == logging.WARNING
    assert keep.filter(_record("something else %(name)s", name="celery_reliable.relay"))


@pytest.mark.parametrize("events", [False, True])
def test_library_tasks_send_events_only_when_configured(events: bool) -> None:
    # Given an app, with or without reliable_beat_task_events
    app = _app(reliable_beat_task_events=events) if events else _app()
    app.finalize()
    names = ("celery_reliable.relay", "celery_reliable.cleanup")
    # Then its library tasks are declared without task events
    assert [app.tasks[name].send_events for name in names] == [False, False]
    # When a worker of the app starts its celery_reliable step
    ReliableWorkerStep(SimpleNamespace(app=app, prefetch_multiplier=1))
    # Then they send events exactly when the setting says so
    assert [app.tasks[name].send_events for name in names] == [events, events]
