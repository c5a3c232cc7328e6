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


@pytest.mark.redis
def test_relay_resends_are_events_flower_counts(redis_url: str, sqlite_db: str, request: pytest.FixtureRequest) -> None:
    from celery_reliable import publish, relay_once
    from tests.conftest import unique_queue
    from tests.integration.test_publish import close_app, dead_broker, drop_everything, make_app, migrated

    db = migrated(sqlite_db)
    queue = unique_queue(request)
    monitor = Celery("monitor", broker=redis_url, set_as_current=False)
    seen: list[dict[str, Any]] = []
    ready = threading.Event()
    stop = threading.Event()

    def capture() -> None:
        while not stop.is_set():
            try:
                with monitor.connection() as conn:
                    receiver = monitor.events.Receiver(conn, handlers={"*": seen.append})
                    ready.set()
                    for _ in receiver.itercapture(limit=None, timeout=1, wakeup=False):
                        if stop.is_set():
                            return
            except (TimeoutError, OSError):
                continue

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    down = make_app(dead_broker(redis_url), db, queue, tasks=("t.ok",), reliable_publish_retries=0)
    quiet = make_app(redis_url, db, queue, tasks=("t.ok",))
    loud = make_app(redis_url, db, queue, tasks=("t.ok",), worker_send_task_events=True)
    try:
        assert ready.wait(20)
        first = publish(down, "t.ok", ["quiet"]).task_id
        assert relay_once(quiet).sent == 1  # task events off: no event
        later = [publish(down, "t.ok", [f"loud-{i}"]).task_id for i in range(3)]
        assert relay_once(loud).sent == 3

        def resent() -> list[str]:
            return [e["uuid"] for e in list(seen) if e.get("type") == "task-reliable-resent"]

        wait_for(lambda: set(later) <= set(resent()), 20, what="task-reliable-resent events")
        events = [e for e in list(seen) if e.get("type") == "task-reliable-resent" and e["uuid"] in [*later, first]]
        assert sorted(e["uuid"] for e in events) == sorted(later)
        assert {e["name"] for e in events} == {"t.ok"}
    finally:
        stop.set()
        thread.join(5)
        for app in (down, quiet, loud):
            close_app(app)
        drop_everything(redis_url, queue)
