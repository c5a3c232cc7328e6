"""Prefork workers freeze what the main process loaded before the pool forks (``gc.freeze``).

A pool process's garbage collections then leave the pages it shares with the main process alone;
``bench/bench_memory.py`` measures what that saves.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.apps.effects import Effect
from tests.conftest import Scenario
from tests.harness import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def _frozen(scenario: Scenario, key: str) -> tuple[int, int]:
    """(objects frozen in the pool process that ran ``key``, that process's pid); waits for the effect."""

    def found() -> list[tuple[str, int]]:
        with scenario.db.engine.connect() as conn:
            rows = conn.execute(select(Effect.key, Effect.pid).where(Effect.key.like(f"{key}=%")))
            return [(str(k), int(p)) for k, p in rows]

    wait_for(found, 60, what=f"effect of {key}")
    (effect_key, pid), *more = found()
    assert more == []
    return int(effect_key.split("=", 1)[1]), pid


@pytest.mark.parametrize(("setting", "frozen"), [("1", True), ("0", False)], ids=["default", "off"])
def test_pool_processes_inherit_frozen_objects(redis_sqlite_scenario: Scenario, setting: str, frozen: bool) -> None:
    scenario = redis_sqlite_scenario
    overrides = {} if setting == "1" else {"RELIABLE_TEST_GC_FREEZE": setting}
    worker = scenario.worker(concurrency=2, **overrides)
    scenario.send("t.gc_frozen", "freeze", task_id="freeze-1")
    count, pid = _frozen(scenario, "freeze")
    # the task ran in one of the pool processes, not in the worker's main process
    assert pid in worker.pool_pids()
    if frozen:
        # Celery, kombu, SQLAlchemy and the app: tens of thousands of objects
        assert count > 20_000, count
    else:
        assert count == 0
