"""``reliable_publish_all``: delay(), apply_async() and (with ReliableCelery) send_task() through publish()."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from celery import Celery
from kombu.exceptions import OperationalError

from celery_reliable import PublishError, ReliableCelery, ReliableTask
from tests.integration import test_publish
from tests.integration.test_publish import (
    AppFactory,
    close_app,
    dead_broker,
    migrated,
    pending_rows,
    queued_ids,
    queued_messages,
)

pytestmark = [pytest.mark.integration, pytest.mark.redis]

apps = test_publish.apps  # the fixture: producer apps, closed afterwards
queue = test_publish.queue  # the fixture: a per-test queue name, deleted afterwards

CONF: dict[str, Any] = {
    "reliable_publish_all": True,
    "reliable_publish_retries": 1,
    "reliable_publish_retry_backoff": 0.01,
    "reliable_publish_timeout": 2.0,
    "broker_connection_retry_on_startup": True,
}


def reliable_app(broker_url: str, db_url: str, queue: str) -> ReliableCelery:
    app = ReliableCelery(f"all-{uuid.uuid4().hex[:6]}", broker=broker_url, set_as_current=False)
    app.conf.update(
        reliable_database_url=db_url, task_default_queue=queue, reliable_external_tasks=["remote.*"], **CONF
    )

    @app.task(name="all.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    return app


def test_reliable_celery_tasks_are_reliable_tasks(redis_url: str, sqlite_db: str, queue: str) -> None:
    app = reliable_app(redis_url, sqlite_db, queue)
    try:
        assert isinstance(app.tasks["all.add"], ReliableTask)
        assert app.tasks["all.add"].acks_late is True
    finally:
        close_app(app)


def test_delay_and_send_task_go_through_publish_on_a_healthy_broker(redis_url: str, sqlite_db: str, queue: str) -> None:
    app = reliable_app(redis_url, migrated(sqlite_db), queue)
    try:
        by_delay = app.tasks["all.add"].delay(1, 2)
        by_name = app.send_task("all.add", (3, 4), countdown=0)
        assert by_delay.reliable.sent is True
        assert by_name.reliable.sent is True
        assert queued_ids(redis_url, queue) == [by_delay.id, by_name.id]
        assert [m["args"] for m in queued_messages(redis_url, queue)] == [[1, 2], [3, 4]]
        assert pending_rows(sqlite_db) == []
    finally:
        close_app(app)


def test_send_task_to_a_dead_broker_is_kept_in_the_pending_table(redis_url: str, sqlite_db: str, queue: str) -> None:
    app = reliable_app(dead_broker(redis_url), migrated(sqlite_db), queue)
    try:
        result = app.send_task("remote.charge", ("order-7",), {"amount": 5}, priority=3)
        task_result = app.tasks["all.add"].apply_async((1, 1), task_id="fixed-id-1")
    finally:
        close_app(app)
    assert result.reliable.sent is False
    assert task_result.reliable.sent is False and task_result.id == "fixed-id-1"
    rows = pending_rows(sqlite_db)
    assert [(r.task_id, r.task_name, r.status) for r in rows] == [
        (result.id, "remote.charge", "pending"),
        ("fixed-id-1", "all.add", "pending"),
    ]
    assert rows[0].args == ["order-7"] and rows[0].kwargs == {"amount": 5}
    assert rows[0].options["priority"] == 3


def test_send_task_to_an_unknown_name_is_refused_and_nothing_kept(redis_url: str, sqlite_db: str, queue: str) -> None:
    app = reliable_app(dead_broker(redis_url), migrated(sqlite_db), queue)
    try:
        with pytest.raises(PublishError, match="reliable_external_tasks"):
            app.send_task("all.ad", (1, 2))  # a typo of all.add, not matching remote.*
    finally:
        close_app(app)
    assert pending_rows(sqlite_db) == []


def test_canvas_and_positional_options_keep_celerys_own_path(redis_url: str, sqlite_db: str, queue: str) -> None:
    app = reliable_app(redis_url, migrated(sqlite_db), queue)
    try:
        add = app.tasks["all.add"]
        chained = (add.s(1, 2) | add.s(3)).apply_async()
        positional = app.send_task("all.add", (5, 6), None, 0)  # countdown given by position
        assert not hasattr(chained, "reliable")
        assert not hasattr(positional, "reliable")
        ids = queued_ids(redis_url, queue)
        assert len(ids) == 2 and positional.id in ids
        assert pending_rows(sqlite_db) == []
    finally:
        close_app(app)


def test_plain_celery_app_send_task_is_untouched(redis_url: str, sqlite_db: str, queue: str, apps: AppFactory) -> None:
    app: Celery = apps(dead_broker(redis_url), migrated(sqlite_db), queue, **CONF, broker_connection_max_retries=1)
    with pytest.raises(OperationalError):  # Celery's own error for an unreachable broker
        app.send_task("remote.charge", (1,), retry=False)
    assert pending_rows(sqlite_db) == []
