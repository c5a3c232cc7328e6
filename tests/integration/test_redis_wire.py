"""Messages written to Redis directly are the ones kombu writes, and WAIT for replicas holds a send."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, signals
from kombu import Exchange, Queue

from celery_reliable import publish
from celery_reliable.send.publisher import get_publisher, reset_publisher
from celery_reliable.store.engine import dispose
from tests.conftest import REDIS_URL, key_prefix
from tests.harness import RedisServer, wait_for
from tests.integration.test_publish import migrated, pending_rows

pytestmark = [pytest.mark.integration, pytest.mark.redis]


@pytest.fixture
def prefix() -> Iterator[str]:
    """A kombu global_keyprefix of this test; its keys are deleted afterwards."""
    yield from key_prefix(REDIS_URL, "rt-wire")


def make(prefix: str, db_url: str, **conf: Any) -> Celery:
    app = Celery(f"wire-{uuid.uuid4().hex[:6]}", broker=REDIS_URL, set_as_current=False)
    app.conf.update(
        broker_transport_options={"global_keyprefix": prefix},
        reliable_database_url=db_url,
        task_default_queue="wire",
        task_queues=[
            Queue("wire", Exchange("wire"), routing_key="wire"),
            Queue("other", Exchange("other"), routing_key="other"),
        ],
        reliable_publish_retries=0,
        **conf,
    )

    @app.task(name="wire.t", shared=False)
    def t(*args: Any, **kwargs: Any) -> None:
        return None

    return app


def entries(prefix: str, key: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        raw = list(reversed(client.lrange(f"{prefix}{key}", 0, -1)))
    finally:
        client.close()
    return [json.loads(item) for item in raw]


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    """A stored message without what differs per send (delivery tag, time left before expires)."""
    message = json.loads(json.dumps(message))
    message["properties"].pop("delivery_tag")
    message["properties"].pop("expiration", None)
    return message


CASES: list[tuple[str, tuple[Any, ...], dict[str, Any], dict[str, Any]]] = [
    ("plain", (1, "two"), {"k": [1, 2, {"x": None}]}, {}),
    ("unicode", ("żółć", "\u2603"), {}, {}),
    ("priority", (), {}, {"priority": 7}),
    ("queue", (), {}, {"queue": "other"}),
    ("headers", (), {}, {"headers": {"tenant": "acme", "n": 3}}),
    ("limits", (), {}, {"time_limit": 30, "soft_time_limit": 20, "ignore_result": True, "shadow": "alias"}),
    ("eta", (), {}, {"eta": datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)}),
    ("expires", (), {}, {"expires": datetime.now(timezone.utc) + timedelta(hours=1)}),
    ("root", (), {}, {"root_id": "r-1", "parent_id": "p-1", "reply_to": "replies"}),
]


@pytest.mark.parametrize(("case", "args", "kwargs", "options"), CASES, ids=[c[0] for c in CASES])
def test_direct_entry_is_what_kombu_writes(
    prefix: str, sqlite_db: str, case: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
) -> None:
    app = make(prefix, sqlite_db)
    try:
        publisher = get_publisher(app)
        assert publisher.direct_redis()
        task_id = f"id-{case}"
        # kombu: Celery's own send_task (not our mirror of it) on the same publisher connection
        publisher._send_task("wire.t", list(args), dict(kwargs), task_id, dict(options), publisher.producer)
        # direct
        publisher.send("wire.t", list(args), dict(kwargs), task_id, dict(options))
        queue = options.get("queue", "wire")
        key = queue if not options.get("priority") else f"{queue}\x06\x16{publisher.producer.channel.priority(7)}"
        by_kombu, direct = entries(prefix, key)
        assert comparable(direct) == comparable(by_kombu)
        assert direct["properties"]["delivery_tag"] != by_kombu["properties"]["delivery_tag"]
        if "expires" in options:
            assert abs(int(direct["properties"]["expiration"]) - int(by_kombu["properties"]["expiration"])) < 5000
    finally:
        reset_publisher(app)
        dispose(app)


@pytest.mark.parametrize("timed", [False, True], ids=["untimed", "eta"])
def test_task_options_apply_as_apply_async_applies_them(prefix: str, sqlite_db: str, timed: bool) -> None:
    """A task's own options (its queue, time limits) reach the message as with Celery's apply_async,
    on every supported Celery (before 5.7, send_task alone did not apply them)."""
    app = make(prefix, sqlite_db)

    @app.task(name="wire.opts", shared=False, queue="other", time_limit=30, soft_time_limit=20)
    def opts() -> None:
        return None

    options: dict[str, Any] = {"eta": datetime(2030, 1, 2, tzinfo=timezone.utc)} if timed else {}
    try:
        publisher = get_publisher(app)
        opts.apply_async(task_id="id-opts", producer=publisher.producer, **options)  # Celery's own path
        publisher.send("wire.opts", [], {}, "id-opts", dict(options))
        by_celery, ours = entries(prefix, "other")
        # apply_async says ignore_result=False (the task's value); publish() leaves it to the task
        # as send_task does (Celery 5.7: None); the worker reads both the same
        assert ours["headers"].pop("ignore_result") in (False, None)
        assert by_celery["headers"].pop("ignore_result") is False
        assert comparable(ours) == comparable(by_celery)
        assert ours["headers"]["timelimit"] == [30, 20]
    finally:
        reset_publisher(app)
        dispose(app)


def test_publish_signal_receivers_get_kombus_path(prefix: str, sqlite_db: str) -> None:
    seen: list[str] = []

    def on_publish(sender: Any = None, headers: Any = None, **_: Any) -> None:
        seen.append(headers["id"])
        headers["traced"] = "yes"

    app = make(prefix, sqlite_db)
    signals.before_task_publish.connect(on_publish, weak=False)
    try:
        assert not get_publisher(app).direct_redis()
        publish(app, "wire.t", [1], task_id="signalled")
    finally:
        signals.before_task_publish.disconnect(on_publish)
        reset_publisher(app)
        dispose(app)
    assert seen == ["signalled"]
    (message,) = entries(prefix, "wire")
    assert message["headers"]["traced"] == "yes"


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "primary")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_wait_replicas_holds_a_send_until_a_replica_has_it(primary: RedisServer, tmp_path: Path) -> None:
    db_url = migrated(f"sqlite:///{tmp_path / 'wait.sqlite3'}")

    def app_for(**conf: Any) -> Celery:
        app = Celery(f"wait-{uuid.uuid4().hex[:6]}", broker=primary.url, set_as_current=False)
        app.conf.update(
            reliable_database_url=db_url, task_default_queue="waitq", reliable_publish_retries=0,
            reliable_redis_wait_replicas=1, **{"reliable_redis_wait_timeout": 0.3, **conf},
        )  # fmt: skip

        @app.task(name="wire.t", shared=False)
        def t() -> None:
            return None

        return app

    # Without a replica: WAIT gives 0 of 1, the message is not counted as sent: it is kept.
    lonely = app_for()
    try:
        result = publish(lonely, "wire.t", task_id="no-replica")
    finally:
        reset_publisher(lonely)
        dispose(lonely)
    assert result.sent is False and "WAIT" in (result.error or "")
    assert [(r.task_id, r.status) for r in pending_rows(db_url)] == [("no-replica", "pending")]

    replica = RedisServer(tmp_path / "replica", extra=("--replicaof", "127.0.0.1", str(primary.port)))
    replica.start()
    try:
        client = redis.Redis(port=replica.port)
        wait_for(lambda: client.info("replication").get("master_link_status") == "up", 30, what="replica in sync")
        client.close()
        app = app_for(reliable_redis_wait_timeout=5.0)  # (a loaded machine: the replica acks late)
        try:
            sent = publish(app, "wire.t", task_id="replicated")
        finally:
            reset_publisher(app)
            dispose(app)
        assert sent.sent is True
        replica_client = redis.Redis(port=replica.port)
        ids = [json.loads(m)["headers"]["id"] for m in replica_client.lrange("waitq", 0, -1)]
        replica_client.close()
        assert "replicated" in ids  # on the replica when publish() returned
    finally:
        replica.stop()
