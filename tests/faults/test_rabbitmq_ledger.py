"""The delivery ledger on RabbitMQ: a queue cannot be searched by id, so with
``reliable_reconcile_rabbitmq_after`` set a sent row with no outcome past that deadline is sent
again, unlooked for; off by default (a row is then done with tracking once RabbitMQ confirmed it).

The loss here is a purge of the queue (as an operator's ``rabbitmqctl purge_queue``, a length
limit that drops the head, or a non-durable queue on a node restart would do); the test moves
the rows' deadline to now rather than waiting it out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from kombu import Connection

from celery_reliable import relay_once
from tests.conftest import Scenario, make_scenario
from tests.faults.test_broker_loses_messages import _check_now, _producer, _run_all, _stage, _statuses
from tests.integration.test_publish import pending_rows

pytestmark = [pytest.mark.fault, pytest.mark.rabbitmq]

N = 6


@pytest.fixture
def scenario(request: pytest.FixtureRequest, amqp_url: str, sqlite_db: str, tmp_path: Path) -> Iterator[Scenario]:
    yield from make_scenario(request, amqp_url, sqlite_db, tmp_path)


@pytest.fixture
def producer(scenario: Scenario) -> Iterator[Celery]:
    yield from _producer(scenario)


def _purge(scenario: Scenario) -> int:
    with Connection(scenario.broker_url) as conn:
        return int(conn.channel().queue_purge(scenario.queue) or 0)


def test_past_the_deadline_a_message_rabbitmq_lost_is_sent_again_once(scenario: Scenario, producer: Celery) -> None:
    producer.conf.reliable_reconcile_rabbitmq_after = 3600.0
    keys = [f"rmq-lost-{i}" for i in range(N)]
    ids = _stage(producer, scenario, keys)
    rows = pending_rows(scenario.db.url)
    assert [(r.status, r.tracked) for r in rows] == [("sent", True)] * N
    # within the deadline nothing is sent again
    assert relay_once(producer).lost == 0
    # When the broker loses them, and the deadline passed with no outcome
    assert _purge(scenario) == N
    _check_now(scenario)
    stats = relay_once(producer)
    # Then each is sent again, same task id, and runs exactly once; its row is done
    assert (stats.lost, stats.sent) == (N, N)
    found = _run_all(scenario, keys)
    assert found == {k: [task_id] for k, task_id in zip(keys, ids, strict=True)}
    _check_now(scenario)
    assert relay_once(producer).lost == 0


def test_off_by_default_rows_are_not_tracked_on_rabbitmq(scenario: Scenario, producer: Celery) -> None:
    keys = [f"rmq-off-{i}" for i in range(3)]
    _stage(producer, scenario, keys)
    rows = pending_rows(scenario.db.url)
    assert [(r.status, r.tracked) for r in rows] == [("sent", False)] * 3
    assert _purge(scenario) == 3
    _check_now(scenario)
    assert relay_once(producer).lost == 0  # lost for good: nothing looks for them
    assert _statuses(scenario) == {"sent": 3}
