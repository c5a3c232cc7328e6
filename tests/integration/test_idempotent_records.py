"""Completion records of ``idempotent=True`` tasks, written in batches after the ack.

Real prefork workers, real Redis and PostgreSQL; the task (``t.idem_plain``) commits its effect
on its own, so every run shows. Counted: effects per task id against what docs/guarantees.md
says (the window of ``idempotent=True``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.conftest import Scenario, make_scenario
from tests.harness import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.postgres]

#: Slack for the writer thread of a loaded machine to write a batch once its interval is over.
MARGIN = 1.0


@pytest.fixture
def records(request: pytest.FixtureRequest, redis_url: str, postgres_db: str, tmp_path: Path) -> Iterator[Scenario]:
    yield from make_scenario(request, redis_url, postgres_db, tmp_path)


def _recorded(scenario: Scenario) -> set[str]:
    with scenario.db.engine.connect() as conn:
        return set(conn.execute(text("SELECT task_id FROM celery_reliable_processed_task")).scalars())


def _effects(scenario: Scenario) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {}
    with scenario.db.engine.connect() as conn:
        for key, at in conn.execute(text("SELECT key, at FROM reliable_test_effect ORDER BY at")):
            runs.setdefault(key, []).append(float(at))
    return runs


def test_each_id_delivered_twice_has_one_effect(records: Scenario) -> None:
    scenario = records
    # Given 200 task ids, each queued twice (the second copies behind all the first ones)
    keys = [f"dup-{i}" for i in range(200)]
    for _ in range(2):
        for key in keys:
            scenario.send("t.idem_plain", key, task_id=key)
    # When a worker with two pool processes drains the queue (records written in batches)
    worker = scenario.worker(concurrency=2)
    wait_for(lambda: scenario.depth() == (0, 0) and len(_recorded(scenario)) == 200, 120, what="400 deliveries")
    # Then each id ran once, and each second copy was skipped
    effects = _effects(scenario)
    assert sorted(effects) == sorted(keys)
    assert sum(len(runs) for runs in effects.values()) == 200
    assert worker.output().count("duplicate delivery skipped") == 200


def test_waiting_records_are_written_at_warm_shutdown(records: Scenario) -> None:
    scenario = records
    # Given a worker whose writers wait 10 s before writing
    worker = scenario.worker(concurrency=2, RELIABLE_TEST_FLUSH_INTERVAL="10")
    keys = [f"sd-{i}" for i in range(50)]
    for key in keys:
        scenario.send("t.idem_plain", key, task_id=key)
    wait_for(lambda: len(_effects(scenario)) == 50 and scenario.depth() == (0, 0), 60, what="50 effects")
    assert len(_recorded(scenario)) < 50  # acknowledged, records still waiting in the pool processes
    # When the worker is stopped (SIGTERM: warm shutdown)
    worker.stop()
    # Then every record is written before the pool processes exit
    assert _recorded(scenario) == set(keys)
    # and a later copy of each id is skipped by another worker
    scenario.worker("w2", concurrency=2)
    for key in keys:
        scenario.send("t.idem_plain", key, task_id=key)
    scenario.wait_empty(60)
    assert sum(len(runs) for runs in _effects(scenario).values()) == 50


def test_worker_killed_before_its_records_are_written(records: Scenario) -> None:
    scenario = records
    interval = 1.0
    # Given a worker whose writers write every second, running 100 short idempotent tasks
    first = scenario.worker("w1", concurrency=2, RELIABLE_TEST_FLUSH_INTERVAL=str(interval))
    keys = [f"kill-{i}" for i in range(100)]
    for key in keys:
        scenario.send("t.idem_plain", key, 0.05, task_id=key)
    # When the whole worker is SIGKILLed in the middle (records of the last interval not written)
    wait_for(lambda: len(_effects(scenario)) >= 70, 90, interval=0.05, what="70 effects")
    killed_at = time.time()
    first.kill()
    recorded = _recorded(scenario)
    # and a copy of every id is delivered later (as the relay or a replay would resend it)
    scenario.worker("w2", concurrency=2, RELIABLE_TEST_FLUSH_INTERVAL=str(interval))
    for key in keys:
        scenario.send("t.idem_plain", key, 0.05, task_id=key)
    wait_for(lambda: scenario.depth() == (0, 0) and _recorded(scenario) == set(keys), 120, what="every copy handled")
    # Then every id ran, an id recorded before the kill never ran again, and each id that ran
    # again had first completed within the interval before the kill (docs/guarantees.md)
    effects = _effects(scenario)
    assert sorted(effects) == sorted(keys)
    assert all(len(effects[key]) == 1 for key in recorded)
    again = {key: runs for key, runs in effects.items() if len(runs) > 1}
    assert again, "the kill came before any record was lost: no window to show"
    oldest = killed_at - interval - MARGIN
    late = {key: round(killed_at - runs[0], 3) for key, runs in again.items() if runs[0] < oldest}
    assert not late, f"ran again although completed long before the kill (s before it): {late}"
    print(f"\n[records] recorded before the kill: {len(recorded)}; ran again: {len(again)} of {len(keys)}")
