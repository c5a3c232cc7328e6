"""Flower sees a stored failure: a custom task event sent after the task's FAILURE event."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from celery import Celery

from tests.conftest import Scenario
from tests.harness import wait_for

pytestmark = pytest.mark.integration


def test_failure_stored_event_follows_task_failed(scenario: Scenario) -> None:
    app = Celery("monitor", broker=scenario.broker_url, set_as_current=False)
    seen: list[dict[str, Any]] = []
    ready = threading.Event()
    stop = threading.Event()

    def capture() -> None:
        with app.connection() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": seen.append})
            ready.set()
            for _ in receiver.itercapture(limit=None, timeout=1, wakeup=False):
                if stop.is_set():
                    return

    def run_capture() -> None:
        while not stop.is_set():
            try:
                capture()
            except TimeoutError:
                continue
            except OSError:
                continue

    thread = threading.Thread(target=run_capture, daemon=True)
    thread.start()
    try:
        assert ready.wait(20)
        scenario.worker()
        scenario.send("t.permanent", "ev-1", task_id="ev-1")
        scenario.send("t.ok", "ev-2", task_id="ev-2")

        def types(uuid: str) -> list[str]:
            return [e["type"] for e in list(seen) if e.get("uuid") == uuid]

        wait_for(lambda: "task-reliable-failure-stored" in types("ev-1"), 30, what="failure-stored event")
        wait_for(lambda: "task-succeeded" in types("ev-2"), 30, what="success event")
        events = types("ev-1")
        assert events.index("task-failed") < events.index("task-reliable-failure-stored")
        stored = next(e for e in seen if e["type"] == "task-reliable-failure-stored")
        assert stored["reason"] == "permanent" and stored["exc_type"] == "PermanentError"
        assert "task-reliable-failure-stored" not in types("ev-2")
    finally:
        stop.set()
        thread.join(timeout=10)
        app.close()
