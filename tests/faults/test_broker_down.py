"""``self.retry()`` while the broker is down: the retry cannot be published.

A private, durable redis-server (AOF, ``appendfsync always``) is SIGKILLed while the task sleeps
before calling ``self.retry()``; the publish fails. Plain Celery turns that into
``Reject(requeue=False)`` and the message is gone; ``ReliableTask.retry`` hands it back instead
(or leaves it unacknowledged). After redis-server restarts on the same port and data, the task
must complete exactly once. A worker that exits by itself on the broker restart (a known Celery
bug) is started again, as a supervisor would.

In the first test the worker loses its consumer connection too; the second breaks only the
broker it publishes to (``broker_write_url``), so the hand-back itself is what saves the message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Scenario
from tests.faults.conftest import log_count, private_redis_scenario, wait_log
from tests.harness import RedisServer, Worker, wait_for

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.redis]

#: Short redelivery for the message left unacknowledged in Redis by the failed requeue.
VT = "8"
WORKER_ENV = {"RELIABLE_TEST_VT": VT, "RELIABLE_TEST_FAULT_VT": VT, "RELIABLE_TEST_RESTORE": "1"}
MAX_RESTARTS = 5


@pytest.fixture
def durable_redis(redis_servers: Callable[..., RedisServer]) -> RedisServer:
    return redis_servers(persistent=True)


@pytest.fixture
def redis_scenario(
    request: pytest.FixtureRequest, durable_redis: RedisServer, postgres_db: str, tmp_path: Path
) -> Iterator[Scenario]:
    yield from private_redis_scenario(request, durable_redis, postgres_db, tmp_path)


def test_retry_while_broker_is_down_is_not_lost(redis_scenario: Scenario, durable_redis: RedisServer) -> None:
    scenario = redis_scenario
    workers: list[Worker] = [scenario.worker("w1", **WORKER_ENV)]
    key = "retry-down-1"
    # Given a task that pauses 3 s before calling self.retry()
    task_id = scenario.send("t.retry_then_ok", key, 3.0, task_id=key)
    wait_for(lambda: scenario.db.counts().attempt(key) == 1, 30, what="first attempt running")
    # When the broker is SIGKILLed during the pause, so the retry cannot be published
    durable_redis.kill()
    wait_log(workers, 1, 30, f"[{task_id}]", "retry could not be sent")
    assert log_count(workers, f"[{task_id}]", "retry:") == 0  # no retry was published
    # and the broker comes back on the same port with the same data
    durable_redis.start()
    restarted_at = time.monotonic()
    assert sum(scenario.depth()) == 1  # the delivery survived the crash (AOF), held as unacked
    # Then (restarting a worker that exited, as a supervisor would) the task completes once
    restarts = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if scenario.db.counts().effect(key) >= 1 and scenario.depth() == (0, 0):
            break
        if not workers[-1].alive():
            restarts += 1
            assert restarts <= MAX_RESTARTS, "worker keeps exiting:\n" + workers[-1].output()[-3000:]
            workers.append(scenario.worker(f"w{restarts + 1}", **WORKER_ENV))
        time.sleep(0.5)
    else:
        raise AssertionError(f"not done in 120 s: effects={scenario.db.counts().effects} depth={scenario.depth()}")
    recovery = time.monotonic() - restarted_at
    counts = scenario.db.counts()
    assert counts.effect(key) == 1  # exactly once
    assert counts.attempt(key) == 2  # the interrupted run and the one after the outage
    assert scenario.depth() == (0, 0)  # nothing left in the queue or unacknowledged
    assert scenario.db.failed_rows() == []
    exits = [line.strip() for w in workers[:-1] for line in w.output().splitlines() if "Unrecoverable error" in line]
    print(
        f"\n[retry, broker down] done {recovery:.1f}s after the broker restart; "
        f"worker restarts: {restarts}; exits: {exits}"
    )


def test_retry_publish_fails_while_consumer_is_up(
    request: pytest.FixtureRequest,
    redis_servers: Callable[..., RedisServer],
    postgres_db: str,
    tmp_path: Path,
) -> None:
    read, write = redis_servers(), redis_servers()
    scenarios = private_redis_scenario(request, read, postgres_db, tmp_path)
    scenario = next(scenarios)
    try:
        # Given a worker consuming from one broker and publishing to another
        worker = scenario.worker(RELIABLE_TEST_FAULT_WRITE_BROKER=write.url)
        key = "retry-publish-down-1"
        task_id = scenario.send("t.retry_then_ok", key, 3.0, task_id=key)
        wait_for(lambda: scenario.db.counts().attempt(key) == 1, 30, what="first attempt running")
        # When the broker it publishes to is SIGKILLed before self.retry() (and stays down)
        write.kill()
        # Then the message goes back to the queue it came from and runs again, once
        wait_for(lambda: scenario.db.counts().effect(key) == 1, 60, what="effect after hand-back")
        scenario.wait_empty(30)
        counts = scenario.db.counts()
        assert (counts.effect(key), counts.attempt(key)) == (1, 2)
        assert scenario.db.failed_rows() == []
        assert log_count([worker], f"[{task_id}]", "retry could not be sent") == 1
        assert log_count([worker], f"[{task_id}]", "reject requeue=True") == 1
        assert log_count([worker], f"Task t.retry_then_ok[{task_id}] received") == 2
        assert worker.alive()
    finally:
        scenarios.close()
