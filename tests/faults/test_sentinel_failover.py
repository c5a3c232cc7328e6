"""The delivery ledger across a Redis Sentinel failover to a replica that missed the last writes.

Replication is asynchronous: the primary acknowledges a write before its replica has it. A private
set (primary, replica, one sentinel; no persistence) takes outbox messages while the replica is
cut off, then the primary is SIGKILLed and the sentinel promotes the replica, which never got them.
Producer and worker reach Redis through ``sentinel://`` URLs, as in production: the rows say
``sent``, the new primary holds nothing, and the relay's look (the rows' next check moved to now
instead of ``reliable_reconcile_after``) sends each message again; each task runs exactly once.

The other way round, a replica that missed the worker's takes and acknowledgements still holds
messages that ran: Redis delivers them again after the failover, and an idempotent task skips them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from celery_reliable import relay_once
from celery_reliable.send.publisher import reset_publisher
from celery_reliable.send.relay import RelayStats
from celery_reliable.store.engine import dispose
from tests.conftest import Scenario, broker_depth, make_scenario
from tests.faults.conftest import log_count, wait_log
from tests.faults.sentinel import TRANSPORT_OPTIONS_ENV, SentinelSet
from tests.faults.test_broker_loses_messages import _check_now, _stage, _statuses
from tests.harness import wait_for
from tests.integration.test_publish import effects, pending_rows

pytestmark = [pytest.mark.fault, pytest.mark.redis]

N = 20


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    """A primary, its replica and a sentinel (master ``mymaster``), private; all stopped by PID."""
    servers = SentinelSet(tmp_path / "sentinel-set")
    try:
        yield servers.start()
    finally:
        servers.stop()


@pytest.fixture
def scenario(
    request: pytest.FixtureRequest, sentinels: SentinelSet, sqlite_db: str, tmp_path: Path
) -> Iterator[Scenario]:
    """Queue and database of the test, on the sentinel set (workers get its transport options).

    Its workers are stopped by the scenario's own teardown; the private servers go with their queues.
    """
    for scenario in make_scenario(request, sentinels.broker_url, sqlite_db, tmp_path):
        scenario.env_overrides[TRANSPORT_OPTIONS_ENV] = json.dumps(sentinels.transport_options)
        yield scenario


@pytest.fixture
def producer(scenario: Scenario, sentinels: SentinelSet) -> Iterator[Celery]:
    app = Celery("sentinel-producer", broker=sentinels.broker_url, set_as_current=False)
    app.conf.update(
        reliable_database_url=scenario.db.url,
        task_default_queue=scenario.queue,
        broker_transport_options=sentinels.transport_options,
    )

    @app.task(name="t.ok", shared=False)
    def ok(key: str) -> None:
        raise AssertionError("runs in the worker only")

    @app.task(name="t.idem", shared=False)
    def idem(key: str) -> None:
        raise AssertionError("runs in the worker only")

    try:
        yield app
    finally:
        reset_publisher(app)
        dispose(app)
        app.close()


def _depth(sentinels: SentinelSet, scenario: Scenario) -> tuple[int, int]:
    """(ready, unacknowledged) of the queue on the master the sentinel names now."""
    return broker_depth(sentinels.master_url(), scenario.queue)


def _queued_on(port: int, queue: str) -> int:
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=2)
    try:
        return int(client.llen(queue))
    finally:
        client.close()


def _fail_over(sentinels: SentinelSet) -> float:
    """Kill the primary; the seconds until the sentinel has promoted the replica."""
    failed_at = sentinels.fail_primary()
    sentinels.wait_promoted(timeout=30)
    return time.monotonic() - failed_at


def test_messages_the_promoted_replica_missed_are_sent_again_once(
    scenario: Scenario, producer: Celery, sentinels: SentinelSet
) -> None:
    keys = [f"failover-{i}" for i in range(N)]
    # Given a replica that stopped receiving the primary's writes
    sentinels.lag_replica()
    # When N outbox messages are committed: the primary takes them, the replica does not
    ids = _stage(producer, scenario, keys, "t.ok")
    rows = pending_rows(scenario.db.url)
    assert [(r.status, r.tracked) for r in rows] == [("sent", True)] * N
    assert _depth(sentinels, scenario) == (N, 0)
    # and the primary dies: the sentinel promotes the replica, which lacks every one of them
    promotion = _fail_over(sentinels)
    assert sentinels.master_port() == sentinels.replica.port
    lacked = N - _queued_on(sentinels.replica.port, scenario.queue)
    assert lacked == N
    assert _depth(sentinels, scenario) == (0, 0)
    assert _statuses(scenario) == {"sent": N}
    # Then the relay's look (through the sentinel, on the new primary) finds them gone and sends each again
    passes: list[RelayStats] = []
    deadline = time.monotonic() + 30
    while sum(stats.lost for stats in passes) < N:
        assert len(passes) < 5 and time.monotonic() < deadline, f"relay passes: {passes}"
        _check_now(scenario)
        passes.append(relay_once(producer))
    assert sum(stats.lost for stats in passes) == sum(stats.sent for stats in passes) == N, passes
    assert _depth(sentinels, scenario) == (N, 0)
    # and a worker on the new primary runs each exactly once, with its task id; every row ends done
    scenario.worker()
    wait_for(lambda: len(effects(scenario)) == N, 60, what="every message ran")
    wait_for(lambda: _statuses(scenario) == {"done": N}, 20, what="every row done")
    wait_for(lambda: _depth(sentinels, scenario) == (0, 0), 20, what="the queue empty")
    _check_now(scenario)
    assert relay_once(producer).lost == 0  # done rows are not looked for again
    time.sleep(1)  # a duplicate would have time to run
    assert effects(scenario) == {k: [task_id] for k, task_id in zip(keys, ids, strict=True)}
    assert _depth(sentinels, scenario) == (0, 0)
    print(f"promoted replica lacked {lacked} of {N}; promotion {promotion:.2f} s; relay passes: {len(passes)}")


def test_an_idempotent_task_skips_what_the_promoted_replica_still_held(
    scenario: Scenario, producer: Celery, sentinels: SentinelSet
) -> None:
    keys = [f"held-{i}" for i in range(N)]
    # Given N outbox messages the replica received too
    ids = _stage(producer, scenario, keys, "t.idem")
    sentinels.wait_ready()
    assert _queued_on(sentinels.replica.port, scenario.queue) == N
    # When the replica stops receiving writes and a worker runs them all on the primary
    sentinels.lag_replica()
    worker = scenario.worker()
    wait_for(lambda: len(effects(scenario)) == N, 60, what="every message ran")
    wait_for(lambda: _statuses(scenario) == {"done": N}, 20, what="every row done")
    # and the primary dies: the promoted replica missed the takes and acknowledgements, so it still holds them
    promotion = _fail_over(sentinels)
    held = _queued_on(sentinels.replica.port, scenario.queue)
    assert held == N
    # Then the worker follows the failover and is given them again: the task skips every one
    wait_log([worker], N, 60, "already completed; duplicate delivery skipped")
    wait_for(lambda: _depth(sentinels, scenario) == (0, 0), 20, what="the queue empty")
    assert worker.alive()
    time.sleep(1)  # a duplicate would have time to run
    assert log_count([worker], "already completed; duplicate delivery skipped") == N
    assert effects(scenario) == {k: [task_id] for k, task_id in zip(keys, ids, strict=True)}
    assert _statuses(scenario) == {"done": N}
    _check_now(scenario)
    assert relay_once(producer).lost == 0
    print(f"promoted replica still held {held} of {N} messages that had run; promotion {promotion:.2f} s")
