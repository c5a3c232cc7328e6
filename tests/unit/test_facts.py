"""Broker facts read from an app's configuration: scheme, redelivery timeout, the atomic-fetch transport."""

from __future__ import annotations

import pytest
from celery import Celery

from celery_reliable.broker.facts import (
    AMQP_CONSUMER_TIMEOUT,
    ATOMIC_FETCH_TRANSPORTS,
    broker_scheme,
    fetch_transport,
    fetch_transport_off,
    url_schemes,
    visibility_timeout,
)


def _app(url: object, **conf: object) -> Celery:
    app = Celery("facts", broker=url, set_as_current=False)  # type: ignore[arg-type]
    app.conf.update(conf)
    return app


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("redis://h:6379/0", "redis"), ("rediss://h/0", "rediss"),
        ("sentinel://h:26379;sentinel://g:26379", "sentinel"),
        ("amqp://guest@h//", "amqp"), ("pyamqp://h//", "pyamqp"), ("sqla+postgresql://h/db", "sqla"),
        (["redis://a/0", "redis://b/0"], "redis"),
    ],
)  # fmt: skip
def test_the_scheme_of_the_first_broker_url(url: object, scheme: str) -> None:
    assert broker_scheme(_app(url)) == scheme


def test_a_transport_setting_wins_over_the_url() -> None:
    assert broker_scheme(_app("redis://h/0", broker_transport="amqp")) == "amqp"
    assert broker_scheme(_app("redis://h/0", broker_transport=ATOMIC_FETCH_TRANSPORTS["sentinel"])) == "sentinel"


def test_every_failover_url_counts() -> None:
    assert url_schemes(_app("redis://a/0;rediss://b/0")) == {"redis", "rediss"}


def test_redelivery_timeouts() -> None:
    assert visibility_timeout(_app("redis://h/0")) == 3600.0  # kombu's own default
    assert visibility_timeout(_app("redis://h/0", broker_transport_options={"visibility_timeout": 90})) == 90.0
    assert visibility_timeout(_app("amqp://h//")) == AMQP_CONSUMER_TIMEOUT
    assert visibility_timeout(_app("memory://")) is None


def test_the_atomic_fetch_serves_redis_and_sentinel_urls_only() -> None:
    assert fetch_transport_off(_app("redis://h/0"), True) is None
    assert fetch_transport(_app("rediss://h/0")) == ATOMIC_FETCH_TRANSPORTS["rediss"]
    assert fetch_transport(_app("sentinel://h:26379")) == ATOMIC_FETCH_TRANSPORTS["sentinel"]
    assert fetch_transport_off(_app("redis://h/0"), False) == "reliable_redis_atomic_fetch is False"
    assert "not redis://, socket://" in (fetch_transport_off(_app("redis://a/0;socket:///tmp/r.sock"), True) or "")
    other = _app("redis://h/0", broker_transport="amqp")
    assert "broker_transport is 'amqp'" in (fetch_transport_off(other, True) or "")
