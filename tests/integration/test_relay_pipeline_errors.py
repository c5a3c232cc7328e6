"""An error reply in the middle of a relay's Redis pipeline charges only the rows it refused.

Redis runs every command of a pipeline even when one fails, so the rows whose LPUSH succeeded are
in Redis and must be marked sent (a resend would duplicate them), and the rows Redis refused are
charged an attempt (and backed off, then dead). Three ways Redis refuses: a list key holding
another type (WRONGTYPE, shared Redis db 11), out of memory (a private redis-server with
``maxmemory`` and ``noeviction``) and a read-only replica (a private primary and replica).
Each test counts the copies of every row's message in Redis after three relay passes.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, signals

from celery_reliable import publish, relay_once
from tests.conftest import REDIS_URL
from tests.harness import RedisServer, wait_for
from tests.integration.test_publish import AppFactory, close_app, dead_broker, make_app, migrated, pending_rows

pytestmark = [pytest.mark.integration, pytest.mark.redis]

#: Passes of every test; a refused row is tried once per pass.
PASSES = 3


@pytest.fixture
def apps() -> Iterator[AppFactory]:
    """Makes producer/relay apps (tests.integration.test_publish.make_app); closes them afterwards."""
    made: list[Celery] = []

    def factory(*args: Any, **kwargs: Any) -> Celery:
        made.append(make_app(*args, **kwargs))
        return made[-1]

    yield factory
    for app in made:
        close_app(app)


def relay_conf(**extra: Any) -> dict[str, Any]:
    """A relay whose failed rows are due again by the next pass (not within the same one)."""
    return {
        "reliable_relay_backoff": 0.2,
        "reliable_relay_backoff_max": 0.2,
        "reliable_relay_max_attempts": 10,
        "reliable_publish_retries": 0,
        **extra,
    }


def passes(app: Celery, count: int = PASSES) -> list[Any]:
    """``count`` relay passes of one batch each, far enough apart for backed-off rows to be due."""
    stats = []
    for _ in range(count):
        stats.append(relay_once(app, max_batches=1))
        time.sleep(0.25)
    return stats


def copies(client: redis.Redis, *keys: str) -> Counter[str]:
    """Task id -> copies of its message in the lists ``keys`` (other types are skipped)."""
    found: Counter[str] = Counter()
    for key in keys:
        if client.type(key) != b"list":
            continue
        for raw in client.lrange(key, 0, -1):
            found[json.loads(raw)["headers"]["id"]] += 1
    return found


def stage(app: Celery, queues: list[str], payload: str = "") -> list[tuple[str, int, str]]:
    """One pending row per entry of ``queues`` (``app``'s broker is down): (queue, row id, task id)."""
    made = []
    for index, queue in enumerate(queues):
        result = publish(app, "relay.job", [f"{index}{payload}"], queue=queue)
        assert result.pending_id is not None, result
        made.append((queue, result.pending_id, result.task_id))
    return made


def by_id(db: str) -> dict[int, Any]:
    return {row.id: row for row in pending_rows(db)}


@pytest.fixture
def keys() -> Iterator[list[str]]:
    """Keys of the shared Redis db 11 this test made; deleted afterwards."""
    made: list[str] = []
    yield made
    client = redis.Redis.from_url(REDIS_URL)
    try:
        if made:
            client.delete(*made, *[f"_kombu.binding.{k}" for k in made])
    finally:
        client.close()


def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"rt-wrongtype-{tag}", f"rt-good-{tag}"


@pytest.mark.parametrize("path", ["direct", "kombu"])
def test_a_list_key_of_another_type_charges_its_rows_only(
    sqlite_db: str, apps: AppFactory, keys: list[str], path: str
) -> None:
    """WRONGTYPE for one queue's LPUSH; the other queue's LPUSH in the same pipeline succeeds.

    ``kombu``: a ``before_task_publish`` receiver makes every message go through kombu (no
    message built ahead, kombu's publish path in the relay).
    """
    db = migrated(sqlite_db)
    bad, good = names()
    keys.extend([bad, good])
    client = redis.Redis.from_url(REDIS_URL)

    def receiver(**_: Any) -> None:
        return None

    if path == "kombu":
        signals.before_task_publish.connect(receiver, weak=False)
    try:
        # Given six rows, interleaved: three to a queue whose list key holds a STRING, three to another
        down = apps(dead_broker(REDIS_URL), db, good, tasks=("relay.job",), reliable_publish_retries=0)
        rows = stage(down, [bad, good] * 3)
        assert all((row.message is None) == (path == "kombu") for row in pending_rows(db))
        client.set(bad, "not a list")
        relay = apps(REDIS_URL, db, good, tasks=("relay.job",), **relay_conf())
        # When the relay makes three passes
        stats = passes(relay)
        # Then each good row is in Redis exactly once, marked sent once; the bad rows never got in
        found = copies(client, good, bad)
        stored = by_id(db)
        assert {task_id: found[task_id] for _, _, task_id in rows} == {
            task_id: (1 if queue == good else 0) for queue, _, task_id in rows
        }
        assert client.get(bad) == b"not a list"
        # and each bad row was charged once per pass (and only those), with Redis's reason
        for queue, row_id, _ in rows:
            row = stored[row_id]
            if queue == good:
                assert (row.status, row.attempts) == ("sent", 0), (row.status, row.attempts, row.last_error)
            else:
                assert (row.status, row.attempts) == ("pending", PASSES), (row.status, row.attempts, row.last_error)
                assert "WRONGTYPE" in row.last_error
        assert [s.sent for s in stats] == [3, 0, 0]
        assert [s.failed for s in stats] == [3, 3, 3]
    finally:
        signals.before_task_publish.disconnect(receiver)
        client.close()


def test_publish_to_a_list_key_of_another_type_is_kept_not_reported_sent(
    sqlite_db: str, apps: AppFactory, keys: list[str]
) -> None:
    """publish()'s own direct write: a refused LPUSH is a failed send (kept for the relay), nothing in Redis."""
    db = migrated(sqlite_db)
    bad, _ = names()
    keys.append(bad)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.set(bad, "not a list")
        app = apps(REDIS_URL, db, bad, tasks=("relay.job",), reliable_publish_retries=1)
        result = publish(app, "relay.job", ["x"])
        assert (result.sent, result.pending_id is not None) == (False, True)
        assert "WRONGTYPE" in (result.error or "")
        assert client.get(bad) == b"not a list"
        (row,) = pending_rows(db)
        assert (row.status, row.task_id) == ("pending", result.task_id)
    finally:
        client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "oom", persistent=False, extra=("--maxmemory-policy", "noeviction"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_out_of_memory_mid_pipeline_charges_only_the_refused_rows(
    private_redis: RedisServer, sqlite_db: str, apps: AppFactory
) -> None:
    """``maxmemory`` + ``noeviction``: the first LPUSH of the pipeline fits, the second is refused (OOM)."""
    db = migrated(sqlite_db)
    client = redis.Redis.from_url(private_redis.url)
    try:
        # Given a private Redis with 4 MB to spare, and 2.7 MB of messages to each of two queues
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 4_000_000)
        first, second = "oom-first", "oom-second"
        down = apps(dead_broker(REDIS_URL), db, first, tasks=("relay.job",), reliable_publish_retries=0)
        rows = stage(down, [first] * 20, "x" * 100_000) + stage(down, [second] * 20, "y" * 100_000)
        relay = apps(private_redis.url, db, first, tasks=("relay.job",), **relay_conf())
        # When the relay makes three passes (one pipeline each: LPUSH first, LPUSH second)
        stats = passes(relay)
        # Then the first queue's rows are in Redis once each and sent; the second's never got in
        found = copies(client, first, second)
        assert {task_id: found[task_id] for _, _, task_id in rows} == {
            task_id: (1 if queue == first else 0) for queue, _, task_id in rows
        }
        stored = by_id(db)
        assert Counter((queue, stored[row_id].status, stored[row_id].attempts) for queue, row_id, _ in rows) == {
            (first, "sent", 0): 20,
            (second, "pending", PASSES): 20,
        }
        assert all("maxmemory" in stored[row_id].last_error for queue, row_id, _ in rows if queue == second)
        # and the pass stops there: Redis refuses writes, not one key
        assert [(s.sent, s.failed, s.broker_down) for s in stats] == [(20, 20, True), (0, 20, True), (0, 20, True)]
        # When memory is freed, the next pass sends the refused rows, once each
        client.config_set("maxmemory", 0)
        relay_once(relay)
        found = copies(client, first, second)
        assert {task_id: found[task_id] for _, _, task_id in rows} == {task_id: 1 for _, _, task_id in rows}
    finally:
        client.close()


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    primary = RedisServer(tmp_path / "primary", persistent=False)
    primary.start()
    replica = RedisServer(tmp_path / "replica", persistent=False, extra=("--replicaof", "127.0.0.1", str(primary.port)))
    try:
        replica.start()
        client = redis.Redis.from_url(replica.url)
        try:
            wait_for(lambda: client.info("replication").get("master_link_status") == "up", 20, what="replica in sync")
        finally:
            client.close()
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


def test_read_only_replica_charges_every_row_it_refused(
    primary_and_replica: tuple[RedisServer, RedisServer], sqlite_db: str, apps: AppFactory
) -> None:
    """A relay pointed at a replica (a failover it has not followed): every LPUSH answers READONLY."""
    primary, replica = primary_and_replica
    db = migrated(sqlite_db)
    on_primary, on_replica = redis.Redis.from_url(primary.url), redis.Redis.from_url(replica.url)
    try:
        queue = "ro-queue"
        down = apps(dead_broker(REDIS_URL), db, queue, tasks=("relay.job",), reliable_publish_retries=0)
        rows = stage(down, [queue] * 5)
        relay = apps(replica.url, db, queue, tasks=("relay.job",), **relay_conf())
        stats = passes(relay)
        # Then nothing is in Redis, and every row (not just the first) was charged once per pass
        assert copies(on_primary, queue) == Counter() and copies(on_replica, queue) == Counter()
        stored = by_id(db)
        assert [(stored[row_id].status, stored[row_id].attempts) for _, row_id, _ in rows] == [("pending", PASSES)] * 5
        assert all("ReadOnlyError" in stored[row_id].last_error for _, row_id, _ in rows)
        assert [(s.sent, s.failed, s.broker_down) for s in stats] == [(0, 5, True)] * PASSES
        # When the relay follows the failover to the primary, each row is sent once
        relay_once(apps(primary.url, db, queue, tasks=("relay.job",), **relay_conf()))
        found = copies(on_primary, queue)
        assert {task_id: found[task_id] for _, _, task_id in rows} == {task_id: 1 for _, _, task_id in rows}
        assert [row.status for row in pending_rows(db)] == ["sent"] * 5
    finally:
        on_primary.close()
        on_replica.close()
