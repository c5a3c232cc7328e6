"""ReliableTask with a real prefork worker, a real broker (Redis and RabbitMQ) and PostgreSQL.

Every test counts: messages sent vs effects made vs failed rows stored.
"""

from __future__ import annotations

import pytest

from tests.conftest import Scenario
from tests.harness import wait_for

pytestmark = pytest.mark.integration


def _failed(scenario: Scenario, task_id: str) -> dict:
    rows = [r for r in scenario.db.failed_rows() if r["task_id"] == task_id]
    assert len(rows) <= 1
    return rows[0] if rows else {}


def test_success_transient_and_exhausted(scenario: Scenario) -> None:
    # Given one worker
    scenario.worker()
    # When a good task, a task failing twice, and a task that always fails are sent
    scenario.send("t.ok", "ok-1", task_id="ok-1")
    scenario.send("t.flaky", "flaky-1", 2, task_id="flaky-1")
    scenario.send("t.always_fail", "bad-1", task_id="bad-1")
    wait_for(lambda: _failed(scenario, "bad-1"), 60, what="failed row for bad-1")
    wait_for(lambda: scenario.db.counts().effect("flaky-1") == 1, 60, what="flaky effect")
    scenario.wait_empty()
    # Then: one effect each for the good ones, and exactly one failed row after 1 + 3 attempts
    counts = scenario.db.counts()
    assert counts.effect("ok-1") == 1
    assert (counts.effect("flaky-1"), counts.attempt("flaky-1")) == (1, 3)
    assert (counts.effect("bad-1"), counts.attempt("bad-1")) == (0, 4)
    rows = scenario.db.failed_rows()
    assert [r["task_id"] for r in rows] == ["bad-1"]
    row = rows[0]
    assert row["task_name"] == "t.always_fail"
    assert row["reason"] == "exception"
    assert row["status"] == "failed"
    assert row["exc_type"] == "ValueError"
    assert row["exc_message"] == "always fails: bad-1"
    assert "raise ValueError" in row["traceback"]
    assert row["attempts"] == 4
    # the first of the 4 attempts failed before the last one (the retries carried its time)
    assert row["first_failed_at"] < row["last_failed_at"]
    assert row["args"] == ["bad-1"] and row["kwargs"] == {}
    assert row["options"]["routing_key"] == scenario.queue
    assert "x_reliable_first_failed_at" not in row["options"].get("headers", {})  # a replay counts afresh
    assert row["hostname"].startswith("w1-")


def test_non_retryable_goes_straight_to_the_table(scenario: Scenario) -> None:
    scenario.worker()
    scenario.send("t.permanent", "perm-1", task_id="perm-1")
    scenario.send("t.custom_permanent", "perm-2", task_id="perm-2")
    scenario.send("t.policy", "pol-1", task_id="pol-1")
    wait_for(lambda: len(scenario.db.failed_rows()) == 3, 60, what="three failed rows")
    scenario.wait_empty()
    counts = scenario.db.counts()
    # PermanentError and a configured permanent exception: one attempt; own policy: 1 retry
    assert (counts.attempt("perm-1"), counts.attempt("perm-2"), counts.attempt("pol-1")) == (1, 1, 2)
    reasons = {r["task_id"]: (r["reason"], r["attempts"]) for r in scenario.db.failed_rows()}
    assert reasons == {"perm-1": ("permanent", 1), "perm-2": ("permanent", 1), "pol-1": ("exception", 2)}


def test_pool_process_killed_mid_task_runs_again(scenario: Scenario) -> None:
    scenario.worker()
    scenario.send("t.kill_once", "kill-1", task_id="kill-1")
    wait_for(lambda: scenario.db.counts().effect("kill-1") == 1, 60, what="effect after worker loss")
    scenario.wait_empty()
    counts = scenario.db.counts()
    assert (counts.effect("kill-1"), counts.attempt("kill-1")) == (1, 2)
    assert scenario.db.failed_rows() == []


def test_task_that_always_kills_its_worker_is_bounded(scenario: Scenario) -> None:
    scenario.worker()
    scenario.send("t.kill_always", "poison-1", task_id="poison-1")
    row = wait_for(lambda: _failed(scenario, "poison-1"), 90, what="failed row for poison task")
    scenario.wait_empty()
    # 1 run + max_retries (3) worker-lost retries, then stored: not a loop
    assert scenario.db.counts().attempt("poison-1") == 4
    assert row["reason"] == "worker_lost"
    assert row["exc_type"] == "billiard.exceptions.WorkerLostError"
    assert row["attempts"] == 4


def test_hard_time_limit_is_retried_then_stored(scenario: Scenario) -> None:
    scenario.worker()
    scenario.send("t.hang", "hang-1", task_id="hang-1")
    row = wait_for(lambda: _failed(scenario, "hang-1"), 90, what="failed row for hanging task")
    scenario.wait_empty()
    assert scenario.db.counts().attempt("hang-1") == 4
    assert row["reason"] == "time_limit"
    assert row["attempts"] == 4


def test_unknown_task_is_stored_not_dropped(scenario: Scenario) -> None:
    scenario.worker()
    scenario.send("t.does_not_exist", "x", 1, task_id="unknown-1", headers={"tenant": "acme"})
    row = wait_for(lambda: _failed(scenario, "unknown-1"), 30, what="stored unknown message")
    scenario.wait_empty()
    assert row["reason"] == "unknown_task"
    assert row["task_name"] == "t.does_not_exist"
    assert row["args"] == ["x", 1]
    assert row["raw_message"]["headers"]["tenant"] == "acme"
    assert row["raw_message"]["headers"]["id"] == "unknown-1"


def test_idempotent_task_delivered_twice_has_one_effect(scenario: Scenario) -> None:
    scenario.worker()
    # The same id sent three times (a resend, a redelivery): one effect.
    for _ in range(3):
        scenario.send("t.idem", "idem-1", task_id="idem-1")
    scenario.send("t.idem", "idem-2", task_id="idem-2")
    wait_for(lambda: scenario.db.counts().effect("idem-2") == 1, 30, what="idempotent effects")
    scenario.wait_empty()
    counts = scenario.db.counts()
    assert (counts.effect("idem-1"), counts.effect("idem-2")) == (1, 1)


def test_whole_worker_killed_messages_complete_after_restart(scenario: Scenario) -> None:
    # Given a worker holding a running task and prefetched ones, with a short redelivery timeout
    # (RELIABLE_TEST_FAULT_VT: reliable_visibility_timeout would be raised above t.hang's time limit)
    short = {"RELIABLE_TEST_FAULT_VT": "6", "RELIABLE_TEST_RESTORE": "1"}
    first = scenario.worker("w1", concurrency=2, **short)
    keys = [f"slow-{i}" for i in range(6)]
    for key in keys:
        scenario.send("t.slow", key, 2.0, task_id=key)
    wait_for(lambda: "Task t.slow" in first.output(), 20, what="a task started")
    # When the whole worker (main process and pool) is SIGKILLed and a new one started
    first.kill()
    scenario.worker("w2", concurrency=2, **short)
    # Then every message completes within a bounded time
    wait_for(lambda: all(scenario.db.counts().effect(k) >= 1 for k in keys), 90, what="all slow tasks done")
    scenario.wait_empty()
    counts = scenario.db.counts()
    assert sum(1 for k in keys if counts.effect(k) >= 1) == len(keys)
    assert scenario.db.failed_rows() == []


def test_unserializable_arguments_are_refused_before_sending(scenario: Scenario) -> None:
    from kombu.exceptions import EncodeError

    with pytest.raises(EncodeError, match="not JSON serializable"):
        scenario.send("t.ok", object(), task_id="bad-args")
    assert scenario.depth() == (0, 0)


def test_worker_holds_one_message_per_process(scenario: Scenario) -> None:
    # celery worker's own --prefetch-multiplier default (4) is replaced by 1: a worker holds only
    # the message it runs, so nothing waits unacknowledged behind a long task.
    worker = scenario.worker()
    for i in range(4):
        scenario.send("t.slow", f"pf-{i}", 2.0, task_id=f"pf-{i}")
    wait_for(lambda: "Task t.slow[pf-0] received" in worker.output(), 20, what="first task received")
    wait_for(lambda: scenario.depth()[0] == 3, 10, what="three messages left in the queue")
    assert "prefetch multiplier 1 (set by celery_reliable)" in worker.output()
    wait_for(lambda: scenario.db.counts().effect("pf-3") == 1, 60, what="all four done")
    scenario.wait_empty()
