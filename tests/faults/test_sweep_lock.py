"""A worker SIGKILLed during kombu's restore sweep leaves the sweep's lock in Redis.

kombu restores the messages of dead workers under a lock (``unacked_mutex``) that expires after
``unacked_mutex_expire``, 300 s by default: while a dead worker's lock lasts, no worker restores
anything, so the messages of killed workers wait five more minutes (seen in a chaos run, where
it looked like a loss). celery_reliable sets the expiry to twice its restore interval (at least
5 s). Here a real worker is killed while it holds the lock, in the middle of a long sweep, and
a message held by a dead consumer must still run well within a minute.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection, Queue

from celery_reliable.broker.redis_fetch import TRANSPORT
from tests.conftest import Scenario
from tests.faults.conftest import private_redis_scenario
from tests.harness import RedisServer, die_after_fetch, wait_for

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.redis]

WORKER_ENV = {"RELIABLE_TEST_VT": "4", "RELIABLE_TEST_FAULT_VT": "4", "RELIABLE_TEST_RESTORE": "1"}
#: What celery_reliable sets for a 1 s restore interval: max(2 x 1 s, 5 s).
LOCK_SECONDS = 5.0
#: Visible entries of another queue that keep the first sweep (and its lock) busy for a while.
BACKLOG = 10_000


@pytest.fixture
def redis_scenario(
    request: pytest.FixtureRequest, redis_servers: Callable[..., RedisServer], postgres_db: str, tmp_path: Path
) -> Iterator[Scenario]:
    yield from private_redis_scenario(request, redis_servers(), postgres_db, tmp_path)


def _backlog(client: redis.Redis, queue: str, count: int) -> None:
    """``count`` messages of ``queue`` in kombu's unacked hash, all past any visibility timeout."""
    with client.pipeline(transaction=False) as pipe:
        for i in range(count):
            tag = f"backlog-{uuid.uuid4()}"
            payload = {"body": "", "headers": {}, "properties": {"delivery_tag": tag, "delivery_info": {}}}
            pipe.hset("unacked", tag, json.dumps([payload, "", queue]))
            pipe.zadd("unacked_index", {tag: i})
        pipe.execute()


def test_a_worker_killed_during_its_sweep_holds_restores_up_only_briefly(redis_scenario: Scenario) -> None:
    scenario = redis_scenario
    client = redis.Redis.from_url(scenario.broker_url)
    # Given a worker whose next restore sweep has a long backlog to give back
    w1 = scenario.worker("w1", **WORKER_ENV)
    _backlog(client, f"other-{scenario.queue}", BACKLOG)
    # When it is SIGKILLed while its sweep holds the lock
    wait_for(lambda: client.exists("unacked_mutex"), 30, interval=0.005, what="the sweep's lock taken")
    w1.kill()
    ttl = int(client.pttl("unacked_mutex"))
    assert 0 < ttl <= LOCK_SECONDS * 1000, f"the dead worker's lock lasts {ttl} ms"  # kombu's default: 300 000
    assert client.zcard("unacked_index") > 0  # the sweep was cut short
    # and a message is held by a consumer that died too
    key = f"sweep-{uuid.uuid4().hex[:6]}"
    scenario.send("t.ok", key, task_id=key)
    queue = Queue(scenario.queue, routing_key=scenario.queue)
    die_after_fetch(Connection(scenario.broker_url, transport=TRANSPORT), queue, client)  # held by a dead consumer
    assert scenario.depth() == (0, 1)
    held_at = time.monotonic()
    # Then a new worker runs it once the lock and the visibility timeout have passed
    scenario.worker("w2", **WORKER_ENV)
    wait_for(lambda: scenario.db.counts().effect(key) == 1, 60, what="the held message run")
    waited = time.monotonic() - held_at
    assert waited < 4 + LOCK_SECONDS + 15, waited
    scenario.wait_empty(30)
    assert scenario.db.counts().effect(key) == 1
