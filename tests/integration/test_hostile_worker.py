"""Messages no run can ever finish, through a real prefork worker on Redis and RabbitMQ: each is
stored once and acknowledged; none is handed back to the broker without bound.

The first test is the deploy that changed a task's signature while messages were queued: a plain
producer (``send_task``, no signature check) sends four arguments to ``t.ok(key)``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Scenario, make_scenario
from tests.faults.conftest import held
from tests.harness import RedisServer, wait_for

pytestmark = pytest.mark.integration

#: Seconds allowed for a message that is stored at once (a loop shows as a timeout well within it).
PROMPT = 10


@pytest.fixture
def redis_scenario_pg(
    request: pytest.FixtureRequest, redis_url: str, postgres_db: str, tmp_path: Path
) -> Iterator[Scenario]:
    """Redis and PostgreSQL (a test that breaks the broker the worker publishes to)."""
    yield from make_scenario(request, redis_url, postgres_db, tmp_path)


def _rows(scenario: Scenario, task_id: str) -> list[dict]:
    return [r for r in scenario.db.failed_rows() if r["task_id"] == task_id]


def _lines(worker_output: str, task_id: str) -> list[str]:
    return [line for line in worker_output.splitlines() if task_id in line]


def test_arguments_that_do_not_fit_the_signature_are_stored_once(scenario: Scenario) -> None:
    # Given a worker, and a message with four arguments for a task that takes one
    worker = scenario.worker()
    task_id = scenario.send("t.ok", 1, 2, 3, 4, task_id="misfit-1")
    # Then it is stored once, promptly, and the queue is empty (nothing ready, nothing unacked)
    wait_for(lambda: _rows(scenario, task_id), PROMPT, what="the failed row of the misfit message")
    scenario.wait_empty(PROMPT)
    time.sleep(1.0)  # a redelivery loop would go on logging meanwhile
    (row,) = scenario.db.failed_rows()
    assert (row["task_id"], row["task_name"], row["reason"], row["attempts"]) == (task_id, "t.ok", "bad_arguments", 1)
    assert row["args"] == [1, 2, 3, 4] and row["kwargs"] == {}
    assert row["exc_type"] == "celery_reliable.worker.arguments.BadArgumentsError"
    message = row["exc_message"]
    for part in ("t.ok", "args=[1, 2, 3, 4]", "too many positional arguments", "expects ok(key)", "replay"):
        assert part in message, (part, message)
    assert scenario.db.counts().effects == {}  # never run
    # and the worker saw it once: received, failed, stored (not hundreds of redeliveries)
    lines = _lines(worker.output(), task_id)
    assert len(lines) <= 4, lines
    assert sum("received" in line for line in lines) == 1, lines
    assert "retry could not be sent" not in worker.output()
    assert held(scenario) == (0, 0)  # on RabbitMQ counted by the node: ready and unacknowledged
    assert worker.alive()


def test_a_type_error_raised_by_the_task_itself_is_retried(scenario: Scenario) -> None:
    scenario.worker()
    task_id = scenario.send("t.type_error_inside", "te-1", task_id="te-1")
    wait_for(lambda: _rows(scenario, task_id), 60, what="the failed row after the retries")
    scenario.wait_empty()
    (row,) = scenario.db.failed_rows()
    # an ordinary exception: 1 run + 3 retries, then stored
    assert (row["reason"], row["exc_type"], row["attempts"]) == ("exception", "TypeError", 4)
    assert scenario.db.counts().attempt("te-1") == 4


def test_a_retry_that_cannot_be_encoded_is_stored_at_once(scenario: Scenario) -> None:
    worker = scenario.worker()
    task_id = scenario.send("t.retry_unencodable", "enc-1", task_id="enc-1")
    wait_for(lambda: _rows(scenario, task_id), PROMPT, what="the failed row of the unsendable retry")
    scenario.wait_empty(PROMPT)
    time.sleep(1.0)
    (row,) = scenario.db.failed_rows()
    assert (row["reason"], row["attempts"]) == ("retry_not_sent", 1)
    assert row["exc_type"] == "celery_reliable.worker.requeue.RetryNotSentError"
    assert "could not be sent (EncodeError" in row["exc_message"], row["exc_message"]
    assert scenario.db.counts().attempt("enc-1") == 1  # run once, never handed back
    assert "message returned to the broker" not in worker.output()


def test_a_message_handed_back_again_and_again_is_stored_after_its_ceiling(scenario: Scenario) -> None:
    # t.requeue_always raises Reject(requeue=True) on every run; its max_requeues is 3
    worker = scenario.worker()
    task_id = scenario.send("t.requeue_always", "rq-1", task_id="rq-1")
    wait_for(lambda: _rows(scenario, task_id), 30, what="the failed row after 3 hand-backs")
    scenario.wait_empty(PROMPT)
    time.sleep(1.0)
    (row,) = scenario.db.failed_rows()
    assert row["reason"] == "requeue_limit"
    assert "handed back to the broker 3 times in a row" in row["exc_message"], row["exc_message"]
    assert "handing rq-1 back" in row["exc_message"]
    assert scenario.db.counts().attempt("rq-1") == 4  # the first run and 3 after hand-backs
    assert len([line for line in _lines(worker.output(), task_id) if "goes back to the broker in" in line]) == 3


@pytest.mark.redis
def test_a_retry_that_cannot_be_sent_while_the_broker_is_away_is_stored_after_its_ceiling(
    redis_scenario_pg: Scenario, tmp_path: Path
) -> None:
    # The worker consumes from the real broker and publishes to a private redis-server, SIGKILLed
    # once the worker is up: every retry of t.retry_always fails with a connection error.
    scenario = redis_scenario_pg
    write = RedisServer(tmp_path / "write", persistent=False).start()
    try:
        worker = scenario.worker(RELIABLE_TEST_FAULT_WRITE_BROKER=write.url)
    finally:
        write.kill()
    task_id = scenario.send("t.retry_always", "away-1", task_id="away-1")
    wait_for(lambda: _rows(scenario, task_id), 60, what="the failed row after 3 hand-backs")
    scenario.wait_empty(PROMPT)
    (row,) = scenario.db.failed_rows()
    assert (row["reason"], row["exc_type"]) == ("retry_not_sent", "celery_reliable.worker.requeue.RetryNotSentError")
    assert "handed back to the broker 3 times in a row" in row["exc_message"], row["exc_message"]
    assert "could not be sent (OperationalError" in row["exc_message"], row["exc_message"]
    assert scenario.db.counts().attempt("away-1") == 4
    assert worker.alive()
