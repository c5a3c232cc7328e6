"""An idempotent task redelivered while its first run is still going.

Redis gives an unacknowledged message to another consumer once the visibility timeout passes,
whether or not the first one still runs it. With a 3 s timeout and a 6 s task, the second of two
workers starts the same task id while the first one sleeps. ``record_completion`` in the task's
own transaction must make the later commit fail on the processed-ids key and roll its effect
back: one effect. A private redis-server is used, so the short timeout restores nobody else's
messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Scenario
from tests.faults.conftest import log_count, private_redis_scenario, wait_log
from tests.harness import RedisServer, Worker

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.redis]

WORKER_ENV = {"RELIABLE_TEST_VT": "3", "RELIABLE_TEST_FAULT_VT": "3", "RELIABLE_TEST_RESTORE": "1"}


@pytest.fixture
def race_scenario(
    request: pytest.FixtureRequest,
    redis_servers: Callable[..., RedisServer],
    postgres_db: str,
    tmp_path: Path,
) -> Iterator[Scenario]:
    yield from private_redis_scenario(request, redis_servers(persistent=False), postgres_db, tmp_path)


def _worker(scenario: Scenario, name: str) -> Worker:
    """A worker that holds one message at a time, so the redelivery goes to the idle worker.

    ``--prefetch-multiplier 1`` is passed explicitly: the library's own default of 1 is applied
    when the app is finalized, after ``celery worker`` has read Celery's default of 4, so without
    it a busy worker takes the redelivery of its own running message and no race happens.
    """
    worker = scenario.worker(name, start=False, **WORKER_ENV)
    worker.extra = ["--prefetch-multiplier", "1"]
    return worker.start()


def test_idempotent_task_redelivered_mid_run_has_one_effect(race_scenario: Scenario) -> None:
    scenario = race_scenario
    # Given two workers and a redelivery timeout shorter than the task
    workers = [_worker(scenario, "w1"), _worker(scenario, "w2")]
    key = "race-1"
    # When an idempotent task sleeping 6 s is sent once (redelivered after 3-4 s)
    task_id = scenario.send("t.fault_idem_race", key, 6.0, task_id=key)
    # Then it is redelivered to the other worker and runs twice at the same time
    wait_log(workers, 1, 60, f"[{task_id}]", "completed by another run; this one rolled back")
    scenario.wait_empty(30)
    counts = scenario.db.counts()
    assert counts.attempt(key) == 2  # two runs got past the duplicate check: the race happened
    received = [log_count([w], f"Task t.fault_idem_race[{task_id}] received") for w in workers]
    assert all(n >= 1 for n in received), received  # each worker ran it
    # and only the first commit counts: one effect, the other run rolled back
    assert counts.effect(key) == 1
    assert log_count(workers, f"[{task_id}]", "completed by another run") == 1
    assert scenario.db.failed_rows() == []
    skipped = log_count(workers, f"[{task_id}]", "duplicate delivery skipped")
    print(f"\n[idempotent race] deliveries per worker: {received}; skipped as done: {skipped}")
