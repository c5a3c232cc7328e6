"""Replay of stored failures through a real broker to a real worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from celery_reliable import FailureFilter, ReplayError, replay, replay_many
from celery_reliable.store.engine import dispose
from celery_reliable.store.failures import get_failure
from tests.conftest import Scenario
from tests.harness import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def operator(scenario: Scenario) -> Iterator[Celery]:
    """The app an operator replays from: same broker and database, the task names registered."""
    app = Celery("operator", broker=scenario.broker_url, set_as_current=False)
    app.conf.update(
        reliable_database_url=scenario.db.url,
        task_default_queue=scenario.queue,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name="t.fail_then_ok", shared=False)
    def fail_then_ok(key: str) -> None:  # body runs in the worker only
        raise AssertionError("not run here")

    yield app
    dispose(app)
    app.close()


def _row(scenario: Scenario, task_id: str) -> dict:
    return next((r for r in scenario.db.failed_rows() if r["task_id"] == task_id), {})


def test_replay_with_fixed_arguments_runs_once(scenario: Scenario, operator: Celery) -> None:
    # Given a task that failed for good with bad input
    scenario.worker()
    scenario.send("t.fail_then_ok", "order-7", task_id="orig-1", headers={"tenant": "acme"})
    row = wait_for(lambda: _row(scenario, "orig-1"), 30, what="stored failure")
    assert row["options"]["headers"] == {"tenant": "acme"}
    # When it is replayed with fixed arguments, twice (a double click)
    result = replay(operator, row["id"], args=["order-7-fixed"])
    with pytest.raises(ReplayError, match="already replayed"):
        replay(operator, row["id"], args=["order-7-fixed"])
    # Then the task runs exactly once, under a new id linked to the old row
    wait_for(lambda: scenario.db.counts().effect("order-7-fixed") == 1, 30, what="replayed effect")
    scenario.wait_empty()
    assert scenario.db.counts().effect("order-7-fixed") == 1
    stored = get_failure(operator, row["id"])
    assert stored is not None
    assert (stored.status, stored.replay_task_id, stored.replay_count) == ("replayed", result.task_id, 1)
    assert result.task_id != "orig-1" and result.sent


def test_replay_that_fails_again_is_linked_to_the_original(scenario: Scenario, operator: Celery) -> None:
    scenario.worker()
    scenario.send("t.fail_then_ok", "order-8", task_id="orig-2")
    row = wait_for(lambda: _row(scenario, "orig-2"), 30, what="stored failure")
    result = replay(operator, row["id"])  # same (still bad) arguments
    again = wait_for(lambda: _row(scenario, result.task_id), 30, what="second failure")
    assert again["replay_of_id"] == row["id"]
    assert again["args"] == ["order-8"]
    assert scenario.db.counts().attempt("order-8") == 2


def test_replay_refuses_bad_requests(scenario: Scenario, operator: Celery) -> None:
    scenario.worker()
    scenario.send("t.fail_then_ok", "order-9", task_id="orig-3")
    scenario.send("t.not_registered", "x", task_id="orig-4")
    row = wait_for(lambda: _row(scenario, "orig-3"), 30, what="stored failure")
    unknown = wait_for(lambda: _row(scenario, "orig-4"), 30, what="stored unknown task")
    with pytest.raises(ReplayError, match="no failed task with id 999999"):
        replay(operator, 999999)
    with pytest.raises(ReplayError, match=r"'t\.not_registered' .* is not registered"):
        replay(operator, unknown["id"])
    with pytest.raises(ReplayError, match="args must be a list"):
        replay(operator, row["id"], args="order-9")  # type: ignore[arg-type]
    with pytest.raises(ReplayError, match="cannot be stored as JSON"):
        replay(operator, row["id"], args=[object()])
    assert replay(operator, row["id"], dry_run=True).sent is False
    # nothing was sent by any of the refused calls
    scenario.wait_empty()
    assert scenario.db.counts().attempt("order-9") == 1
    stored = get_failure(operator, row["id"])
    assert stored is not None and stored.status == "failed"


def test_replay_many_skips_rows_it_cannot_send(scenario: Scenario, operator: Celery) -> None:
    scenario.worker()
    for i in range(3):
        scenario.send("t.fail_then_ok", f"bulk-{i}-fixed" if i else "bulk-0", task_id=f"bulk-{i}")
    scenario.send("t.not_registered", "x", task_id="bulk-x")
    wait_for(lambda: len(scenario.db.failed_rows()) == 2, 30, what="two failed rows")
    results = replay_many(operator, FailureFilter())
    errors = [r for r in results if isinstance(r, ReplayError)]
    assert len(results) == 2 and len(errors) == 1
    wait_for(lambda: len(scenario.db.failed_rows()) == 3, 30, what="bulk-0 failing again")
    counts = scenario.db.counts()
    assert (counts.effect("bulk-1-fixed"), counts.effect("bulk-2-fixed")) == (1, 1)
