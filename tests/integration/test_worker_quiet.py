"""A real worker's log and task events: the library's idle beat tasks stay out of both, the broker
URL shows its own scheme, and Alembic writes nothing."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from celery import Celery

from tests.conftest import Scenario
from tests.harness import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.redis]


class Events:
    """Task events of the broker, collected in a thread until stopped (at most ``limit`` seconds)."""

    def __init__(self, broker_url: str, limit: float = 120) -> None:
        self.app = Celery("events", broker=broker_url, set_as_current=False)
        self.seen: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(limit,), daemon=True)

    def _run(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        with self.app.connection_for_read() as conn:
            receiver = self.app.events.Receiver(conn, handlers={"*": self.seen.append})
            consume_ready = receiver.on_consume_ready

            def on_ready(*args: Any, **kwargs: Any) -> None:
                consume_ready(*args, **kwargs)
                self.ready.set()

            def on_iteration() -> None:  # checked at least every 0.5 s (safety_interval)
                receiver.should_stop = self.stop.is_set() or time.monotonic() > deadline

            receiver.on_consume_ready = on_ready  # type: ignore[method-assign]
            receiver.on_iteration = on_iteration  # type: ignore[method-assign]
            for _ in receiver.consume(limit=None, timeout=None, safety_interval=0.5, wakeup=False):
                pass

    def __enter__(self) -> Events:
        self.thread.start()
        assert self.ready.wait(30), "event receiver did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.app.close()

    def of(self, task_id: str) -> list[str]:
        return [e["type"] for e in list(self.seen) if e.get("uuid") == task_id]


def test_idle_relay_runs_leave_no_trace_in_log_or_events(redis_sqlite_scenario: Scenario) -> None:
    scenario = redis_sqlite_scenario
    with Events(scenario.broker_url) as events:
        # Given a worker with task events on (the test app sets worker_send_task_events)
        worker = scenario.worker()
        # When the relay runs twice with nothing to send, then a user task runs
        scenario.send("celery_reliable.relay", task_id="relay-1")
        scenario.send("celery_reliable.relay", task_id="relay-2")
        scenario.send("t.ok", "ok-1", task_id="ok-1")
        wait_for(lambda: "Task t.ok[ok-1] succeeded" in worker.output(), 60, what="t.ok to succeed")
        wait_for(lambda: "task-succeeded" in events.of("ok-1"), 30, what="the task-succeeded event of ok-1")
    log = worker.output()
    # Then the user task is logged and seen in events, the idle relay runs are neither
    assert "Task t.ok[ok-1] received" in log
    assert events.of("ok-1")[:1] == ["task-received"] and "task-started" in events.of("ok-1")
    assert "celery_reliable.relay[relay-" not in log
    assert (events.of("relay-1"), events.of("relay-2")) == ([], [])
    # And the worker names its broker as redis://, and Alembic wrote nothing
    assert "Connected to redis://" in log, log[-3000:]
    assert "redis_fetch:Transport" not in log and "Context impl" not in log
