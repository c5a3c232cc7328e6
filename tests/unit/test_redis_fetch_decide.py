"""When the atomic Redis fetch turns itself off (pure logic; the fetch itself is tested against
real redis-servers in tests/integration/test_redis_fetch.py)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from redis.exceptions import ConnectionError, NoPermissionError

from celery_reliable.broker.redis_fetch import Channel, version_tuple


class FakeClient:
    def __init__(self, version: str, script: BaseException | None = None) -> None:
        self.version = version
        self.script = script
        self.loads = 0

    def info(self, section: str) -> dict[str, Any]:
        assert section == "server"
        return {"redis_version": self.version}

    def script_load(self, text: str) -> str:
        if self.script is not None:
            raise self.script
        self.loads += 1
        return "0" * 40


def _channel(client: FakeClient) -> Any:
    channel: Any = Channel.__new__(Channel)
    channel.__dict__["client"] = client
    channel.connection_errors = (ConnectionError,)
    return channel


def test_versions_compare_on_major_and_minor() -> None:
    assert version_tuple("7.0.15") == (7, 0)
    assert version_tuple("6.2.0") >= (6, 2) > version_tuple("6.0.20")
    assert version_tuple("7.2.4-valkey") == (7, 2)


def test_redis_with_blmove_and_scripts_fetches_atomically() -> None:
    client = FakeClient("7.0.15")
    channel = _channel(client)
    assert channel._decide() is True
    assert channel._decide() is True and client.loads == 1  # decided once


@pytest.mark.parametrize(
    "client,reason",
    [
        (FakeClient("6.0.9"), "Redis 6.0.9 has no BLMOVE"),
        (FakeClient("7.0.0", script=NoPermissionError("NOPERM this user has no permissions")), "NOPERM"),
    ],
)
def test_falls_back_to_kombus_fetch_and_says_why(client: FakeClient, reason: str, caplog: Any) -> None:
    with caplog.at_level(logging.WARNING, logger="celery_reliable.broker.redis_fetch"):
        assert _channel(client)._decide() is False
    assert reason in caplog.text and "atomic fetch is off" in caplog.text


def test_a_broker_down_decides_nothing() -> None:
    class Down(FakeClient):
        def info(self, section: str) -> dict[str, Any]:
            raise ConnectionError("Error 111 connecting")

    channel = _channel(Down("7.0.0"))
    with pytest.raises(ConnectionError):
        channel._decide()
    assert channel._atomic is None  # asked again once the broker answers


ATOMIC = "celery_reliable.broker.redis_fetch:Transport"
SENTINEL = "celery_reliable.broker.redis_fetch:SentinelTransport"


def _app(broker: str, **conf: Any) -> Any:
    from celery import Celery

    from celery_reliable.worker.install import install

    app = Celery(f"fetch_{uuid.uuid4().hex[:8]}", broker=broker)
    app.conf.update(reliable_database_url="sqlite://", **conf)
    install(app)
    return app


@pytest.mark.parametrize(
    "broker,conf,transport",
    [
        ("redis://127.0.0.1:6379/0", {}, ATOMIC),
        ("redis://a:6379/0;redis://b:6379/0", {}, ATOMIC),
        ("sentinel://a:26379;sentinel://b:26379", {}, "celery_reliable.broker.redis_fetch:SentinelTransport"),
        ("amqp://guest@localhost//", {}, None),
        ("rediss://127.0.0.1:6380/0", {}, ATOMIC),
        ("redis://a:6379/0;rediss://b:6380/0", {}, ATOMIC),
        ("redis://a:6379/0;sentinel://b:26379", {}, None),
        ("socket:///tmp/redis.sock", {}, None),
        ("redis://127.0.0.1:6379/0", {"reliable_redis_atomic_fetch": False}, None),
        ("redis://127.0.0.1:6379/0", {"broker_transport": "tests.unit.custom:Transport"}, None),
        # Celery's default consumer named before install: replaced by ours, like the default
        ("redis://127.0.0.1:6379/0", {"worker_consumer": "celery.worker.consumer:Consumer"}, ATOMIC),
    ],
)
def test_which_workers_fetch_atomically(broker: str, conf: dict[str, Any], transport: str | None) -> None:
    from celery_reliable.worker.install import atomic_fetch, atomic_fetch_off

    app = _app(broker, **conf)
    assert atomic_fetch(app) == transport
    assert (atomic_fetch_off(app) is None) == (transport is not None)


def test_a_users_own_consumer_turns_it_off_with_the_reason() -> None:
    from celery_reliable.worker.install import atomic_fetch_off

    app = _app("redis://127.0.0.1:6379/0")
    app.conf.worker_consumer = "celery.worker.consumer:Consumer"  # set after install: the user's choice
    assert "is not celery_reliable's ReliableConsumer" in str(atomic_fetch_off(app))


@pytest.mark.parametrize(
    "scheme,transport", [("redis", ATOMIC), ("sentinel", "celery_reliable.broker.redis_fetch:SentinelTransport")]
)
def test_a_failover_keeps_the_atomic_fetch(scheme: str, transport: str) -> None:
    from kombu import Connection

    from celery_reliable.broker.redis_fetch import FetchConnection, fetch_connection

    urls = f"{scheme}://127.0.0.1:1/0;{scheme}://127.0.0.1:2/0"
    kombus = Connection(urls, transport=transport)
    kombus.switch(f"{scheme}://127.0.0.1:2/0")
    assert kombus.transport_cls == scheme  # kombu's own switch: back to kombu's fetch
    base = Connection(urls, heartbeat=7, transport_options={"visibility_timeout": 9}, connect_timeout=3)
    ours = fetch_connection(base, transport)
    assert isinstance(ours, FetchConnection) and ours.transport_cls == transport
    assert (ours.heartbeat, ours.transport_options, ours.connect_timeout, ours.alt) == (
        7,
        {"visibility_timeout": 9},
        3,
        base.alt,
    )
    ours.switch(f"{scheme}://127.0.0.1:2/0")
    assert ours.transport_cls == transport and ours.port == 2
    assert type(ours.transport).__module__ == "celery_reliable.broker.redis_fetch"
