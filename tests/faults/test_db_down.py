"""The failed-task database goes down while final failures are being stored.

A private PostgreSQL cluster is stopped (immediate mode) under a running worker. Every message
that fails for good while it is down must stay with the broker (handed back with
``Reject(requeue=True)`` / ``message.reject(requeue=True)``), and be stored exactly once by the
same worker when the cluster is started again (same port, same data). Both brokers.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from tests.conftest import Scenario
from tests.faults.conftest import frozen_held, log_count, wait_log
from tests.harness import PostgresCluster, wait_for

pytestmark = [pytest.mark.fault, pytest.mark.integration]

NOT_STORED = "could not be stored"


def _rows(scenario: Scenario, count: int) -> list[dict]:
    rows = scenario.db.failed_rows()
    return rows if len(rows) == count else []


def test_final_failures_wait_for_the_database(pg_scenario: Scenario, pg_cluster: PostgresCluster) -> None:
    scenario = pg_scenario
    worker = scenario.worker(concurrency=2)
    # Given the failed-task database is down
    pg_cluster.stop("immediate")
    # When a task failing for good at once and one failing after its retries are sent
    perm = scenario.send("t.fault_permanent", "perm-1", task_id="dbdown-perm-1")
    fail = scenario.send("t.always_fail", "fail-1", task_id="dbdown-fail-1")
    started = time.monotonic()
    # Then the worker keeps handing both back to the broker
    wait_log([worker], 5, 60, f"[{perm}]", NOT_STORED, "message returned to the broker")
    wait_log([worker], 5, 60, f"[{fail}]", NOT_STORED, "message returned to the broker")
    # and the broker holds both, no more (ready or unacked; counted with the worker paused)
    totals = frozen_held(scenario, worker, expected=2)
    assert totals[-1] == 2 and max(totals) == 2, totals
    assert log_count([worker], "stored as failed task") == 0
    assert worker.alive()
    handed_back = log_count([worker], NOT_STORED)
    outage = time.monotonic() - started
    # When the database comes back (same port, same data)
    back_at = datetime.now(timezone.utc)
    pg_cluster.start()
    # Then the same worker stores each failure exactly once and the queue drains
    rows = wait_for(lambda: _rows(scenario, 2), 60, what="two failed rows")
    scenario.wait_empty(60)
    assert worker.alive()
    by_id = {r["task_id"]: r for r in scenario.db.failed_rows()}
    assert sorted(by_id) == sorted([perm, fail]) and len(rows) == 2
    assert all(r["last_failed_at"] >= back_at for r in rows)  # nothing stored before
    assert all(r["first_failed_at"] <= r["last_failed_at"] for r in rows)  # (the first failure may be older)
    assert all(r["hostname"].startswith("w1-") for r in rows)
    p = by_id[perm]
    assert (p["task_name"], p["reason"], p["attempts"]) == ("t.fault_permanent", "permanent", 1)
    assert p["exc_type"] == "celery_reliable.exceptions.PermanentError"
    assert p["exc_message"] == "bad input: perm-1" and p["args"] == ["perm-1"]
    f = by_id[fail]
    assert (f["task_name"], f["reason"], f["attempts"]) == ("t.always_fail", "exception", 4)
    # The run stored is the first one after the database came back: either its own write failed
    # (database still starting) or it wrote its attempt and raised ValueError.
    counts = scenario.db.counts()
    expected = {"ValueError": 1, "sqlalchemy.exc.OperationalError": 0}
    assert f["exc_type"] in expected, f["exc_type"]
    assert counts.attempt("fail-1") == expected[f["exc_type"]]
    assert counts.effects == {}
    print(
        f"\n[{scenario.broker_url.split(':')[0]}] {handed_back} hand-backs to the broker in "
        f"{outage:.1f}s of database outage; broker totals while paused: {totals}"
    )


def test_unknown_task_waits_for_the_database(pg_scenario: Scenario, pg_cluster: PostgresCluster) -> None:
    scenario = pg_scenario
    worker = scenario.worker()
    # Given the failed-task database is down
    pg_cluster.stop("immediate")
    # When a message for a task name the worker does not know arrives
    task_id = scenario.send("t.fault_not_registered", "x", 2, task_id="dbdown-unknown-1", headers={"tenant": "acme"})
    # Then the consumer keeps handing it back (paced by REQUEUE_PAUSE) and the broker holds it
    wait_log([worker], 3, 30, f"Message {task_id} (unknown_task) {NOT_STORED}")
    totals = frozen_held(scenario, worker, expected=1)
    assert totals[-1] == 1 and max(totals) == 1, totals
    assert log_count([worker], "stored as failed task") == 0
    assert log_count([worker], "Received unregistered task") == 0  # Celery's reject: not reached
    assert worker.alive()
    # When the database comes back
    back_at = datetime.now(timezone.utc)
    pg_cluster.start()
    # Then it is stored exactly once, with the whole message, and the queue drains
    (row,) = wait_for(lambda: _rows(scenario, 1), 30, what="stored unknown message")
    scenario.wait_empty(30)
    assert worker.alive()
    assert len(scenario.db.failed_rows()) == 1
    assert row["task_id"] == task_id and row["first_failed_at"] >= back_at
    assert (row["reason"], row["task_name"]) == ("unknown_task", "t.fault_not_registered")
    assert row["args"] == ["x", 2]
    assert row["raw_message"]["headers"]["tenant"] == "acme"
    assert row["raw_message"]["headers"]["id"] == task_id
    assert log_count([worker], f"Message {task_id} (unknown_task) stored as failed task") == 1
