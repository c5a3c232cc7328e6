"""The delivery ledger: a Redis that loses messages it had accepted loses none that went through the outbox.

A private redis-server without persistence takes the outbox's messages, then is SIGKILLed and
started again empty (or flushed, or its queue key deleted): the rows say ``sent`` and nothing in
Redis will run them. The relay's pass looks for each tracked message by its delivery tag and sends
again what Redis lost; the worker records every outcome, so a message that ran is never sent again.
The test waits out ``reliable_reconcile_after`` by moving the rows' next check to now (the clock,
not the logic, is what a 60-second wait would test).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from celery_reliable import outbox, relay_once
from celery_reliable.send.publisher import reset_publisher
from celery_reliable.store.engine import dispose
from tests.apps.effects import Attempt
from tests.conftest import Scenario
from tests.faults.conftest import private_redis_scenario
from tests.harness import RedisServer, wait_for
from tests.integration.test_publish import effects, pending_rows

pytestmark = [pytest.mark.fault, pytest.mark.redis]

N = 20


@pytest.fixture
def volatile_redis(redis_servers: Callable[..., RedisServer]) -> RedisServer:
    return redis_servers(persistent=False)


@pytest.fixture
def scenario(
    request: pytest.FixtureRequest, volatile_redis: RedisServer, sqlite_db: str, tmp_path: Path
) -> Iterator[Scenario]:
    yield from private_redis_scenario(request, volatile_redis, sqlite_db, tmp_path)


@pytest.fixture
def pg_scenario(
    request: pytest.FixtureRequest, volatile_redis: RedisServer, postgres_db: str, tmp_path: Path
) -> Iterator[Scenario]:
    """The same on PostgreSQL: a worker whose pool processes die writes from several processes at once."""
    yield from private_redis_scenario(request, volatile_redis, postgres_db, tmp_path)


def _producer(scenario: Scenario) -> Iterator[Celery]:
    app = Celery("ledger-producer", broker=scenario.broker_url, set_as_current=False)
    app.conf.update(reliable_database_url=scenario.db.url, task_default_queue=scenario.queue)

    @app.task(name="t.ok", shared=False)
    def ok(key: str) -> None:
        raise AssertionError("runs in the worker only")

    try:
        yield app
    finally:
        reset_publisher(app)
        dispose(app)
        app.close()


@pytest.fixture
def producer(scenario: Scenario) -> Iterator[Celery]:
    yield from _producer(scenario)


def _stage(app: Celery, scenario: Scenario, keys: list[str], task: str = "t.ok") -> list[str]:
    """Commit one business row and one outbox message per key; the post-commit send takes them to Redis."""
    engine = create_engine(scenario.db.url)
    ids = []
    try:
        with Session(engine) as session:
            box = outbox(session, app)
            for key in keys:
                session.add(Attempt(key=f"{key}-order", count=1))
                ids.append(box.send(task, [key], task_id=key))
            session.commit()
    finally:
        engine.dispose()
    return ids


def _statuses(scenario: Scenario) -> dict[str, int]:
    found: dict[str, int] = {}
    for row in pending_rows(scenario.db.url):
        found[row.status] = found.get(row.status, 0) + 1
    return found


def _check_now(scenario: Scenario) -> None:
    """Make every tracked sent row due for its look in Redis now (instead of in reconcile_after)."""
    engine = create_engine(scenario.db.url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE celery_reliable_pending_message SET next_attempt_at = '2000-01-01 00:00:00'"
                              " WHERE status = 'sent'"))  # fmt: skip
    finally:
        engine.dispose()


def _run_all(scenario: Scenario, keys: list[str]) -> dict[str, Any]:
    scenario.worker()
    wait_for(lambda: all(effects(scenario).get(k) for k in keys), 60, what="every message ran")
    wait_for(lambda: _statuses(scenario) == {"done": len(keys)}, 20, what="every row done")
    scenario.wait_empty()
    time.sleep(1)
    return effects(scenario)


def test_rows_are_tracked_until_their_task_ran(scenario: Scenario, producer: Celery) -> None:
    keys = [f"ledger-{i}" for i in range(5)]
    _stage(producer, scenario, keys)
    rows = pending_rows(scenario.db.url)
    assert [(r.status, r.tracked) for r in rows] == [("sent", True)] * 5
    # a look while the messages wait in Redis finds them: nothing is sent again
    _check_now(scenario)
    assert relay_once(producer).lost == 0
    assert scenario.depth() == (5, 0)
    found = _run_all(scenario, keys)
    assert {k: len(v) for k, v in found.items()} == dict.fromkeys(keys, 1)
    rows = pending_rows(scenario.db.url)
    assert all(r.status == "done" and r.done_at is not None for r in rows)
    # done rows are never looked for again
    _check_now(scenario)
    assert (relay_once(producer).lost, relay_once(producer).claimed) == (0, 0)


@pytest.mark.parametrize("loss", ["restart without persistence", "flushall", "queue key deleted"])
def test_messages_redis_lost_are_sent_again_once(
    scenario: Scenario, producer: Celery, volatile_redis: RedisServer, loss: str
) -> None:
    keys = [f"lost-{i}" for i in range(N)]
    ids = _stage(producer, scenario, keys)
    assert _statuses(scenario) == {"sent": N} and scenario.depth() == (N, 0)
    # When Redis loses every one of them
    if loss == "restart without persistence":
        volatile_redis.kill()
        volatile_redis.start()
        reset_publisher(producer)
    else:
        client = redis.Redis.from_url(scenario.broker_url)
        try:
            client.flushall() if loss == "flushall" else client.delete(scenario.queue)
        finally:
            client.close()
    assert scenario.depth() == (0, 0)
    # Then the relay's next look finds them gone, with no outcome, and sends each again (same task id)
    _check_now(scenario)
    stats = relay_once(producer)
    assert (stats.lost, stats.sent) == (N, N)
    assert scenario.depth() == (N, 0)
    found = _run_all(scenario, keys)
    assert found == {k: [task_id] for k, task_id in zip(keys, ids, strict=True)}  # each ran exactly once
    _check_now(scenario)
    assert relay_once(producer).lost == 0


def test_a_message_in_a_workers_hands_is_not_sent_again(scenario: Scenario, producer: Celery) -> None:
    # Given a tracked message a worker is running (unacknowledged, not in the queue)
    worker = scenario.worker()
    (task_id,) = _stage(producer, scenario, ["held-1"])
    del worker
    wait_for(lambda: effects(scenario).get("held-1"), 30, what="the message ran")
    # (a slow outcome write: the row may still be sent) -> the look must not resend a message that ran
    wait_for(lambda: _statuses(scenario) == {"done": 1}, 20, what="its outcome recorded")
    _check_now(scenario)
    assert relay_once(producer).lost == 0
    assert effects(scenario) == {"held-1": [task_id]}


def test_a_task_that_retries_is_done_after_its_last_run(pg_scenario: Scenario) -> None:
    scenario = pg_scenario
    app = Celery("ledger-retry", broker=scenario.broker_url, set_as_current=False)
    app.conf.update(reliable_database_url=scenario.db.url, task_default_queue=scenario.queue)

    @app.task(name="t.flaky", shared=False)
    def flaky(key: str, fail_times: int) -> None:
        raise AssertionError("runs in the worker only")

    @app.task(name="t.kill_once", shared=False)
    def kill_once(key: str) -> None:
        raise AssertionError("runs in the worker only")

    try:
        engine = create_engine(scenario.db.url)
        try:
            with Session(engine) as session:
                box = outbox(session, app)
                # fails twice, then succeeds: two retries (new messages, same task id) before the outcome
                box.send("t.flaky", ["retry-1", 2], task_id="retry-1")
                box.send("t.kill_once", ["lost-once-1"], task_id="lost-once-1")  # its pool process dies once
                session.commit()
        finally:
            engine.dispose()
        scenario.worker()
        wait_for(lambda: all(effects(scenario).get(k) for k in ("retry-1", "lost-once-1")), 60, what="both ran")
        wait_for(lambda: _statuses(scenario) == {"done": 2}, 20, what="both rows done")
        scenario.wait_empty()
        _check_now(scenario)
        assert relay_once(app).lost == 0
        assert {k: len(v) for k, v in effects(scenario).items()} == {"retry-1": 1, "lost-once-1": 1}
    finally:
        reset_publisher(app)
        dispose(app)
        app.close()


def test_a_retry_waiting_in_a_worker_puts_off_the_look(scenario: Scenario, producer: Celery) -> None:
    """A retry is another message (another delivery tag) that a worker holds until its countdown
    ends: the row's next look moves past the countdown, so the relay does not send a second copy."""

    @producer.task(name="t.retry_later", shared=False)
    def retry_later(key: str, countdown: float) -> None:
        raise AssertionError("runs in the worker only")

    engine = create_engine(scenario.db.url)
    try:
        with Session(engine) as session:
            outbox(session, producer).send("t.retry_later", ["later-1", 4.0], task_id="later-1")
            session.commit()
    finally:
        engine.dispose()
    (row,) = pending_rows(scenario.db.url)
    assert (row.status, row.tracked) == ("sent", True)
    first_look = (row.next_attempt_at - row.sent_at).total_seconds()
    assert 59 <= first_look <= 61  # reliable_reconcile_after
    scenario.worker()

    def put_off() -> bool:
        (row,) = pending_rows(scenario.db.url)
        return row.status == "sent" and (row.next_attempt_at - row.sent_at).total_seconds() >= 63.5

    wait_for(put_off, 20, interval=0.1, what="the next look put off past the retry's countdown")
    assert relay_once(producer).lost == 0
    assert effects(scenario) == {}
    wait_for(lambda: _statuses(scenario) == {"done": 1}, 30, what="the retry ran and the row is done")
    assert effects(scenario) == {"later-1": ["later-1"]}
