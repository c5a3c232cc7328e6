"""publish() and the relay against real brokers and databases.

Every test counts what it can see for itself: messages in the broker queue (read raw from Redis,
or fetched from RabbitMQ), rows of the pending table by status (read with a separate engine),
and effects written by a real worker. Dead brokers are closed ports on 127.0.0.1; queues have
per-test names and are deleted afterwards.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery, signature
from kombu import Exchange, Queue
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.orm import Session

from celery_reliable import PublishError, publish, relay_once, upgrade
from celery_reliable.message.prepare import LEDGER_HEADER
from celery_reliable.send.publisher import reset_publisher
from celery_reliable.store.engine import dispose
from celery_reliable.store.models import PendingMessage
from tests.apps.effects import Effect
from tests.conftest import AMQP_URL, REDIS_URL, Scenario, broker_depth, drop_queue, unique_queue
from tests.harness import free_port, wait_for

pytestmark = pytest.mark.integration

# -- helpers shared by the publish / relay / outbox tests --------------------------------------

AppFactory = Callable[..., Celery]


def is_redis(broker_url: str) -> bool:
    return broker_url.startswith("redis")


def dead_broker(broker_url: str) -> str:
    """A URL of the same kind as ``broker_url`` where nothing listens."""
    port = free_port()
    if is_redis(broker_url):
        return f"redis://127.0.0.1:{port}/0"
    return f"amqp://guest:guest@127.0.0.1:{port}//"


def make_app(broker_url: str, db_url: str, queue: str, *, tasks: tuple[str, ...] = (), **conf: Any) -> Celery:
    """A producer app; ``tasks`` registers task names (bodies never run here)."""
    app = Celery(f"pub-{uuid.uuid4().hex[:6]}", broker=broker_url, set_as_current=False)
    settings: dict[str, Any] = {
        "reliable_database_url": db_url,
        "task_default_queue": queue,
        "broker_connection_retry_on_startup": True,
        "reliable_publish_retries": 1,
        "reliable_publish_retry_backoff": 0.01,
        "reliable_publish_timeout": 3.0,
    }
    app.conf.update({**settings, **conf})
    for name in tasks:

        def body(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("runs in the worker only")

        app.task(name=name, shared=False)(body)
    return app


def close_app(app: Celery) -> None:
    reset_publisher(app)
    dispose(app)
    app.close()


def drop_everything(broker_url: str, queue: str) -> None:
    """The queue and, on Redis, the binding keys kombu made for it."""
    drop_queue(broker_url, queue)
    if is_redis(broker_url):
        import redis

        client = redis.Redis.from_url(broker_url, socket_connect_timeout=3)
        try:
            client.delete(f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        finally:
            client.close()


@pytest.fixture
def apps() -> Iterator[AppFactory]:
    """Makes producer/relay apps; closes their publishers and engines afterwards."""
    made: list[Celery] = []

    def factory(*args: Any, **kwargs: Any) -> Celery:
        app = make_app(*args, **kwargs)
        made.append(app)
        return app

    try:
        yield factory
    finally:
        for app in made:
            close_app(app)


@pytest.fixture
def queue(request: pytest.FixtureRequest) -> Iterator[str]:
    """A queue name of this test; deleted from both shared brokers afterwards."""
    name = unique_queue(request)
    yield name
    for broker_url in (REDIS_URL, AMQP_URL):
        try:
            drop_everything(broker_url, name)
        except Exception as exc:  # a broker this test did not use may be down
            print(f"cleanup of {name} on {broker_url}: {exc!r}")


@pytest.fixture
def bindings() -> Iterator[list[tuple[str, str]]]:
    """(broker url, queue) pairs whose kombu binding keys are deleted from Redis at the end.

    Request it before ``scenario``: it is then torn down after the scenario stopped its worker
    and dropped its queue (which leaves the binding keys behind)."""
    made: list[tuple[str, str]] = []
    yield made
    for broker_url, name in made:
        if is_redis(broker_url):
            drop_everything(broker_url, name)


def migrated(db_url: str) -> str:
    upgrade(db_url)
    return db_url


def pending_rows(db_url: str) -> list[PendingMessage]:
    """Every pending-table row, read with an engine of its own."""
    engine = create_engine(db_url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            return list(session.scalars(select(PendingMessage).order_by(PendingMessage.id)))
    finally:
        engine.dispose()


def statuses(db_url: str) -> Counter[str]:
    return Counter(row.status for row in pending_rows(db_url))


def sql(db_url: str, statement: Any, **params: Any) -> None:
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(statement, params)
    finally:
        engine.dispose()


def _decode_body(raw: bytes | str, encoding: str | None) -> Any:
    data = raw.encode() if isinstance(raw, str) else raw
    if encoding == "base64":
        data = base64.b64decode(data)
    return json.loads(data)


def _redis_list(broker_url: str, queue: str) -> list[bytes]:
    """The raw messages of a Redis queue, oldest first (LPUSH puts the newest first); none consumed."""
    import redis

    client = redis.Redis.from_url(broker_url, socket_connect_timeout=3)
    try:
        return list(reversed(client.lrange(queue, 0, -1)))
    finally:
        client.close()


def queued_messages(broker_url: str, queue: str, limit: int = 20_000) -> list[dict[str, Any]]:
    """Messages waiting in ``queue`` as {'headers', 'args', 'kwargs', 'embed'}, oldest first.

    Redis: read with LRANGE (nothing is consumed). RabbitMQ: fetched without ack, then given back
    when the channel closes.
    """
    result: list[dict[str, Any]] = []
    if is_redis(broker_url):
        for raw in _redis_list(broker_url, queue):
            message = json.loads(raw)
            encoding = message.get("properties", {}).get("body_encoding")
            args, kwargs, embed = _decode_body(message["body"], encoding)
            result.append({"headers": message["headers"], "args": args, "kwargs": kwargs, "embed": embed})
        return result
    from kombu import Connection

    with Connection(broker_url, connect_timeout=5) as conn:
        channel = conn.channel()
        try:
            for _ in range(limit):
                message = channel.basic_get(queue=queue, no_ack=False)
                if message is None:
                    break
                args, kwargs, embed = json.loads(message.body)
                result.append({"headers": message.headers, "args": args, "kwargs": kwargs, "embed": embed})
        finally:
            channel.close()
    return result


def queued_ids(broker_url: str, queue: str) -> list[str]:
    return [m["headers"]["id"] for m in queued_messages(broker_url, queue)]


def effects(scenario: Scenario) -> dict[str, list[str]]:
    """key -> task ids of the effects the worker wrote for it."""
    found: dict[str, list[str]] = {}
    with scenario.db.engine.connect() as conn:
        for key, task_id in conn.execute(select(Effect.key, Effect.task_id).order_by(Effect.id)):
            found.setdefault(key, []).append(task_id)
    return found


# -- 1. healthy broker -------------------------------------------------------------------------


def test_publish_on_healthy_broker_runs_once_with_the_same_id(
    bindings: list[tuple[str, str]], scenario: Scenario, apps: AppFactory
) -> None:
    bindings.append((scenario.broker_url, scenario.queue))
    # Given a producer app and a worker on a live broker
    app = apps(scenario.broker_url, scenario.db.url, scenario.queue)
    scenario.worker()
    # When 20 messages are published (one with an id chosen by the caller)
    results = [publish(app, "t.ok", [f"healthy-{i}"]) for i in range(19)]
    own_id = f"own-{uuid.uuid4().hex}"
    results.append(publish(app, "t.ok", kwargs={"key": "healthy-own"}, task_id=own_id))
    # Then every one is reported sent, nothing is kept for the relay
    assert [(r.sent, r.pending, r.pending_id, r.error) for r in results] == [(True, False, None, None)] * 20
    assert results[-1].task_id == own_id
    assert len({r.task_id for r in results}) == 20
    # and the worker runs each exactly once, under the id publish() returned
    keys = [f"healthy-{i}" for i in range(19)] + ["healthy-own"]
    wait_for(lambda: len(effects(scenario)) == 20, 30, what="20 effects")
    scenario.wait_empty()
    time.sleep(0.5)  # a late duplicate would show now
    assert effects(scenario) == {key: [r.task_id] for key, r in zip(keys, results, strict=True)}
    assert pending_rows(scenario.db.url) == []


# -- 5. corrupt rows ---------------------------------------------------------------------------


def test_corrupt_pending_rows_become_invalid_and_the_others_are_sent(
    broker_url: str, sqlite_db: str, queue: str, apps: AppFactory
) -> None:
    db = migrated(sqlite_db)
    # Given six messages kept in the pending table (the broker was down)
    down = apps(dead_broker(broker_url), db, queue, tasks=("t.ok",), reliable_publish_retries=0)
    results = [publish(down, "t.ok", [f"corrupt-{i}"]) for i in range(6)]
    assert [r.sent for r in results] == [False] * 6
    ids = [r.pending_id for r in results]

    # and four of them corrupted in the database (by hand: the message built ahead is dropped too)
    def corrupt(row_id: int, **values: Any) -> None:
        sql(db, update(PendingMessage).where(PendingMessage.id == row_id).values(message=None, **values))

    corrupt(ids[1], args="oops")
    corrupt(ids[2], kwargs=[1, 2])
    corrupt(ids[3], task_name="t.not_registered")
    corrupt(ids[4], options=42)
    # When a relay (an app that registers its tasks) runs against the live broker
    relay = apps(broker_url, db, queue, tasks=("t.ok",))
    stats = relay_once(relay)
    # Then the corrupt rows are 'invalid' with the reason, and the two good ones are sent
    assert (stats.claimed, stats.sent, stats.invalid, stats.failed, stats.broker_down) == (6, 2, 4, 0, False)
    rows = {row.id: row for row in pending_rows(db)}
    assert [rows[i].status for i in ids] == ["sent", "invalid", "invalid", "invalid", "invalid", "sent"]
    assert "not a list and a mapping" in rows[ids[1]].last_error
    assert "not a list and a mapping" in rows[ids[2]].last_error
    assert "'t.not_registered' is not registered" in rows[ids[3]].last_error
    assert rows[ids[4]].last_error != ""
    assert all(rows[i].claim_token is None for i in ids)
    assert sorted(queued_ids(broker_url, queue)) == sorted([results[0].task_id, results[5].task_id])
    # and a second pass has nothing left to do
    assert relay_once(relay).claimed == 0


@pytest.mark.redis
def test_message_built_ahead_is_sent_as_stored_and_a_corrupt_one_is_marked(
    redis_url: str, sqlite_db: str, queue: str, apps: AppFactory
) -> None:
    db = migrated(sqlite_db)
    down = apps(dead_broker(redis_url), db, queue, tasks=("t.ok",), reliable_publish_retries=0)
    results = [publish(down, "t.ok", [f"ahead-{i}"], priority=i) for i in range(3)]
    rows = pending_rows(db)
    # Redis: the row holds the list entry, keyed by queue (and kombu's priority suffix)
    assert [r.message.split("\n", 1)[0] if r.message else None for r in rows] == [queue, queue, queue]
    sql(db, update(PendingMessage).where(PendingMessage.id == results[1].pending_id).values(message="garbage"))
    relay = apps(redis_url, db, queue, tasks=("t.ok",))
    stats = relay_once(relay)
    assert (stats.claimed, stats.sent, stats.invalid) == (3, 2, 1)
    by_id = {row.id: row for row in pending_rows(db)}
    assert by_id[results[1].pending_id].status == "invalid"
    assert "stored message is corrupt" in by_id[results[1].pending_id].last_error
    messages = {m["headers"]["id"]: m for m in queued_messages(redis_url, queue)}
    assert sorted(messages) == sorted([results[0].task_id, results[2].task_id])
    assert messages[results[2].task_id]["args"] == ["ahead-2"]


def test_row_that_fails_at_send_time_does_not_hold_back_the_others(
    broker_url: str, sqlite_db: str, queue: str, apps: AppFactory
) -> None:
    """A row that passes decoding but makes the send itself raise (here options.queue = 5, an
    AttributeError inside Celery's routing) is bad data, not a broker outage."""
    db = migrated(sqlite_db)
    down = apps(dead_broker(broker_url), db, queue, reliable_publish_retries=0)
    results = [publish(down, "t.ok", [f"poison-{i}"]) for i in range(3)]
    ids = [r.pending_id for r in results]
    sql(
        db,
        update(PendingMessage)
        .where(PendingMessage.id == ids[1])
        .values(options={"headers": {}, "queue": 5}, message=None),  # edited by hand: built again when sent
    )
    relay = apps(broker_url, db, queue)
    stats = relay_once(relay)
    rows = {row.id: row for row in pending_rows(db)}
    queued = sorted(queued_ids(broker_url, queue))
    assert (rows[ids[0]].status, rows[ids[1]].status, rows[ids[2]].status) == ("sent", "invalid", "sent"), (
        f"stats={stats}; last_error={rows[ids[1]].last_error!r}; attempts={[rows[i].attempts for i in ids]}"
    )
    assert queued == sorted([results[0].task_id, results[2].task_id])
    assert (stats.sent, stats.invalid, stats.broker_down) == (2, 1, False)


# -- 6. expired --------------------------------------------------------------------------------


def test_expired_message_is_not_sent(broker_url: str, sqlite_db: str, queue: str, apps: AppFactory) -> None:
    db = migrated(sqlite_db)
    down = apps(dead_broker(broker_url), db, queue, reliable_publish_retries=0)
    short = publish(down, "t.ok", ["expires-short"], expires=1)
    long = publish(down, "t.ok", ["expires-long"], expires=600)
    assert (short.sent, long.sent) == (False, False)
    long_expires = next(r.expires_at for r in pending_rows(db) if r.id == long.pending_id)
    time.sleep(2)
    relay = apps(broker_url, db, queue)
    stats = relay_once(relay)
    assert (stats.claimed, stats.expired, stats.sent, stats.failed) == (2, 1, 1, 0)
    rows = {row.id: row for row in pending_rows(db)}
    assert rows[short.pending_id].status == "expired"
    assert rows[short.pending_id].sent_at is None
    assert "expires" in rows[short.pending_id].last_error
    assert rows[long.pending_id].status == "sent"
    messages = queued_messages(broker_url, queue)
    assert [m["headers"]["id"] for m in messages] == [long.task_id]
    # the absolute expiry chosen at publish time, not relay time + 600
    assert datetime.fromisoformat(messages[0]["headers"]["expires"]) == long_expires


# -- 7. eta kept across a resend ---------------------------------------------------------------


@pytest.mark.redis
def test_countdown_is_kept_as_an_absolute_eta_across_a_resend(
    redis_url: str, any_db_url: str, queue: str, apps: AppFactory
) -> None:
    db = migrated(any_db_url)
    down = apps(dead_broker(redis_url), db, queue, reliable_publish_retries=0)
    when = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=timezone.utc)
    before = datetime.now(timezone.utc)
    result = publish(
        down,
        "t.ok",
        ["eta-1", when],
        {"n": 1},
        countdown=30,
        headers={"x-trace": "abc"},
        link=signature("t.ok", ["eta-linked"]),
    )
    after = datetime.now(timezone.utc)
    assert not result.sent
    (row,) = pending_rows(db)
    assert before + timedelta(seconds=30) <= row.eta <= after + timedelta(seconds=30), (
        f"stored eta {row.eta} is not publish time + 30 s ({before} .. {after})"
    )
    time.sleep(1.5)  # the relay runs later; the eta must not move
    relay = apps(redis_url, db, queue)
    relayed_at = datetime.now(timezone.utc)
    assert relay_once(relay).sent == 1
    (message,) = queued_messages(redis_url, queue)
    sent_eta = datetime.fromisoformat(message["headers"]["eta"])
    assert before + timedelta(seconds=30) <= sent_eta <= after + timedelta(seconds=30), (
        f"eta in the broker {sent_eta} is not the original publish time + 30 s ({before} .. {after})"
    )
    assert sent_eta < relayed_at + timedelta(seconds=29)  # not relay time + 30
    assert message["headers"]["id"] == result.task_id
    assert message["headers"]["x-trace"] == "abc"
    # the payload survives the round trip through the table (kombu JSON keeps the datetime)
    from kombu.utils.json import loads

    assert loads(json.dumps(message["args"])) == ["eta-1", when]
    assert message["kwargs"] == {"n": 1}
    assert [(s["task"], s["args"]) for s in message["embed"]["callbacks"]] == [("t.ok", ["eta-linked"])]


# -- 8. RabbitMQ: a queue that rejects -----------------------------------------------------------


@pytest.mark.rabbitmq
def test_rabbitmq_nack_is_not_reported_as_sent(amqp_url: str, sqlite_db: str, queue: str, apps: AppFactory) -> None:
    db = migrated(sqlite_db)
    arguments = {"x-max-length": 1, "x-overflow": "reject-publish"}
    declared = Queue(queue, Exchange(queue), routing_key=queue, queue_arguments=arguments)
    app = apps(amqp_url, db, queue, reliable_publish_retries=0, task_queues=[declared])
    results = [publish(app, "t.ok", [f"nack-{i}"]) for i in range(3)]
    assert [r.sent for r in results] == [True, False, False]
    assert broker_depth(amqp_url, queue) == (1, 0)
    rows = pending_rows(db)
    assert [(r.task_id, r.status, r.source) for r in rows] == [
        (results[1].task_id, "pending", "publish_fallback"),
        (results[2].task_id, "pending", "publish_fallback"),
    ]
    assert [r.id for r in rows] == [results[1].pending_id, results[2].pending_id]
    # (the text is only "OperationalError: ": kombu's wrapper of MessageNacked has an empty message)
    assert all(r.last_error.startswith("OperationalError") for r in rows), [r.last_error for r in rows]
    # When the queue has room for one again, a relay pass sends one and stops at the next nack
    assert queued_ids(amqp_url, queue) == [results[0].task_id]  # (given back, still queued)
    from kombu import Connection

    with Connection(amqp_url) as conn:
        channel = conn.channel()
        message = channel.basic_get(queue=queue, no_ack=True)
        assert message is not None and message.headers["id"] == results[0].task_id
    stats = relay_once(app)
    assert (stats.claimed, stats.sent, stats.failed, stats.broker_down) == (2, 1, 1, True)
    assert queued_ids(amqp_url, queue) == [results[1].task_id]
    after = {r.task_id: r for r in pending_rows(db)}
    assert after[results[1].task_id].status == "sent"
    assert (after[results[2].task_id].status, after[results[2].task_id].attempts) == ("pending", 1)


# -- 9. broker and database both down -----------------------------------------------------------


def test_broker_and_database_down_raises_and_stores_nothing(
    broker_url: str, sqlite_db: str, queue: str, apps: AppFactory
) -> None:
    dead_db = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    app = apps(dead_broker(broker_url), dead_db, queue, reliable_publish_retries=0)
    started = time.monotonic()
    with pytest.raises(PublishError) as info:
        publish(app, "t.ok", ["both-down"])
    assert time.monotonic() - started < 15
    message = str(info.value)
    assert "neither sent" in message and "nor stored" in message and "t.ok[" in message
    # a database that answers but was never migrated is "down" too: nothing is stored
    empty = apps(dead_broker(broker_url), sqlite_db, queue, reliable_publish_retries=0)
    with pytest.raises(PublishError, match="neither sent"):
        publish(empty, "t.ok", ["both-down-2"])
    engine = create_engine(sqlite_db)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM sqlite_master WHERE type = 'table'")).scalar() == 0
    finally:
        engine.dispose()
    assert broker_depth(broker_url, queue) == (0, 0)


# -- 10. bad input -----------------------------------------------------------------------------


class _Opaque:
    pass


BAD_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    ("unserializable arg", ("t.ok", [_Opaque()]), {}, "cannot be stored as JSON"),
    ("unserializable kwarg", ("t.ok", [], {"k": _Opaque()}), {}, "cannot be stored as JSON"),
    ("unknown option", ("t.ok", ["x"]), {"bogus": 1}, r"unsupported option\(s\) \['bogus'\]"),
    ("unregistered name", ("t.okk", ["x"]), {}, r"'t.okk' is not registered.*Did you mean 't.ok'"),
    ("empty name", ("", ["x"]), {}, "non-empty string"),
    ("negative countdown", ("t.ok", ["x"]), {"countdown": -1}, "countdown must be seconds"),
    ("eta not a datetime", ("t.ok", ["x"]), {"eta": "tomorrow"}, "eta must be a datetime"),
    ("eta and countdown", ("t.ok", ["x"]), {"eta": datetime.now(timezone.utc), "countdown": 1}, "not both"),
    ("bad expires", ("t.ok", ["x"]), {"expires": "soon"}, "expires must be seconds"),
    ("headers not a dict", ("t.ok", ["x"]), {"headers": ["a"]}, "headers must be a dict"),
    ("link not a signature", ("t.ok", ["x"]), {"link": 5}, "link must be a signature"),
    ("unserializable header", ("t.ok", ["x"]), {"headers": {"h": _Opaque()}}, "cannot be stored as JSON"),
]


def test_bad_input_is_refused_before_anything_is_sent_or_stored(
    broker_url: str, sqlite_db: str, queue: str, apps: AppFactory
) -> None:
    db = migrated(sqlite_db)
    app = apps(broker_url, db, queue, tasks=("t.ok",))
    for label, args, options, pattern in BAD_CALLS:
        with pytest.raises(PublishError, match=pattern):
            publish(app, *args, **options)
            pytest.fail(f"{label}: not refused")
    assert broker_depth(broker_url, queue) == (0, 0)
    assert pending_rows(db) == []
    # the same app still publishes good input
    assert publish(app, "t.ok", ["fine"]).sent
    assert broker_depth(broker_url, queue) == (1, 0)


@pytest.mark.parametrize(
    "options",
    [pytest.param({"priority": "high"}, id="priority-str"), pytest.param({"queue": 5}, id="queue-int")],
)
def test_bad_delivery_options_are_refused_not_kept_as_broker_outage(
    broker_url: str, sqlite_db: str, queue: str, apps: AppFactory, options: dict[str, Any]
) -> None:
    """A delivery option that no send can ever accept must be refused, not stored as pending
    with 'broker unreachable' (where the relay would take it for an outage on every pass)."""
    db = migrated(sqlite_db)
    app = apps(broker_url, db, queue, tasks=("t.ok",))
    try:
        result = publish(app, "t.ok", ["bad-option"], **options)
    except PublishError:
        result = None
    rows = pending_rows(db)
    assert result is None or result.sent, (
        f"publish(**{options}) on {broker_url.split(':')[0]} returned {result}; pending rows: "
        f"{[(r.status, r.last_error) for r in rows]}"
    )
    if result is None:
        assert rows == []
        assert broker_depth(broker_url, queue) == (0, 0)


# -- 11. relay against a dead broker -------------------------------------------------------------


def test_relay_against_dead_broker_stops_at_the_first_failure(
    broker_url: str, sqlite_db: str, queue: str, apps: AppFactory
) -> None:
    db = migrated(sqlite_db)
    dead = dead_broker(broker_url)
    down = apps(dead, db, queue, reliable_publish_retries=0)
    results = [publish(down, "t.ok", [f"dead-relay-{i}"]) for i in range(5)]
    ids = [r.pending_id for r in results]
    before = {r.id: r for r in pending_rows(db)}
    relay = apps(dead, db, queue, reliable_relay_backoff=5.0, reliable_relay_max_attempts=2)
    started = datetime.now(timezone.utc)
    stats = relay_once(relay)
    now = datetime.now(timezone.utc)
    rows = {r.id: r for r in pending_rows(db)}
    summary = [(rows[i].status, rows[i].attempts) for i in ids]
    # Then one send was tried and failed; the others went back untouched
    assert (stats.claimed, stats.failed, stats.released, stats.sent, stats.broker_down) == (5, 1, 4, 0, True), (
        f"stats={stats}; rows={summary}"
    )
    assert summary == [("pending", 1)] + [("pending", 0)] * 4
    assert rows[ids[0]].next_attempt_at > now  # backed off: at least relay_backoff / 10 = 0.5 s
    assert rows[ids[0]].next_attempt_at >= started + timedelta(seconds=0.5)
    assert rows[ids[0]].last_error != ""
    for i in ids[1:]:
        assert rows[i].next_attempt_at == before[i].next_attempt_at
        assert rows[i].claim_token is None and rows[i].lease_expires_at is None


def test_rows_become_dead_after_max_attempts(broker_url: str, sqlite_db: str, queue: str, apps: AppFactory) -> None:
    db = migrated(sqlite_db)
    dead = dead_broker(broker_url)
    down = apps(dead, db, queue, reliable_publish_retries=0)
    result = publish(down, "t.ok", ["dead-row"])
    relay = apps(dead, db, queue, reliable_relay_backoff=5.0, reliable_relay_max_attempts=3)
    due_now = update(PendingMessage).values(next_attempt_at=datetime.now(timezone.utc) - timedelta(seconds=5))
    seen = []
    for _ in range(3):
        sql(db, due_now)
        stats = relay_once(relay)
        (row,) = pending_rows(db)
        seen.append((stats.failed, stats.dead, row.status, row.attempts))
    assert seen == [(1, 0, "pending", 1), (1, 0, "pending", 2), (1, 1, "dead", 3)]
    sql(db, due_now)
    assert relay_once(relay).claimed == 0  # dead rows are not tried again
    # a live broker does not bring it back either: a person must act
    assert relay_once(apps(broker_url, db, queue)).claimed == 0
    assert broker_depth(broker_url, queue) == (0, 0)
    (row,) = pending_rows(db)
    assert (row.task_id, row.status) == (result.task_id, "dead")


@pytest.mark.redis
@pytest.mark.parametrize("header", ["id", "task", "eta"])
def test_headers_cannot_override_the_task_id_name_or_eta(
    redis_url: str, sqlite_db: str, queue: str, apps: AppFactory, header: str
) -> None:
    """User headers are merged over Celery's protocol headers: {'id': ...} would make the message
    carry another id than the one publish() returned (and {'task': ...} another, unchecked, name)."""
    broker_url = redis_url
    db = migrated(sqlite_db)
    app = apps(broker_url, db, queue, tasks=("t.ok",))
    value = {"id": "not-the-task-id", "task": "t.not_registered", "eta": "2020-01-01T00:00:00+00:00"}[header]
    try:
        result = publish(app, "t.ok", ["header-clash"], headers={header: value})
    except PublishError:
        assert broker_depth(broker_url, queue) == (0, 0)
        return
    (message,) = queued_messages(broker_url, queue)
    assert (message["headers"]["id"], message["headers"]["task"], message["headers"]["eta"]) == (
        result.task_id,
        "t.ok",
        None,
    ), f"headers={{{header!r}: {value!r}}} was neither refused nor kept out of the protocol headers"


def test_publish_does_not_need_the_database_while_the_broker_is_up(
    broker_url: str, queue: str, apps: AppFactory
) -> None:
    dead_db = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    app = apps(broker_url, dead_db, queue)
    results = [publish(app, "t.ok", [f"no-db-{i}"]) for i in range(3)]
    assert [r.sent for r in results] == [True] * 3
    assert queued_ids(broker_url, queue) == [r.task_id for r in results]


def test_threads_publishing_at_once(broker_url: str, sqlite_db: str, queue: str, apps: AppFactory) -> None:
    """Four threads share one app (one publisher); the broker is live for one app, dead for another."""
    db = migrated(sqlite_db)
    live = apps(broker_url, db, queue)
    down = apps(dead_broker(broker_url), db, queue, reliable_publish_retries=0)
    results: dict[str, list[Any]] = {"live": [], "down": []}

    def produce(app: Celery, kind: str, thread: int) -> None:
        for i in range(50):
            try:
                results[kind].append(publish(app, "t.ok", [f"{kind}-{thread}-{i}"]))
            except Exception as exc:
                results[kind].append(exc)

    import threading

    threads = [
        threading.Thread(target=produce, args=(app, kind, n))
        for n in range(4)
        for app, kind in ((live, "live"), (down, "down"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert all(getattr(r, "sent", None) is True for r in results["live"]), results["live"][:3]
    assert all(getattr(r, "sent", None) is False for r in results["down"]), [
        r for r in results["down"] if getattr(r, "sent", None) is not False
    ][:3]
    assert len(results["live"]) == len(results["down"]) == 200
    queued = queued_ids(broker_url, queue)
    assert sorted(queued) == sorted(r.task_id for r in results["live"])
    rows = pending_rows(db)
    assert sorted((r.id, r.task_id) for r in rows) == sorted((r.pending_id, r.task_id) for r in results["down"])
    # and the relay sends the 200 kept ones: 400 messages, 400 distinct ids
    stats = relay_once(live)
    assert (stats.claimed, stats.sent) == (200, 200)
    queued = queued_ids(broker_url, queue)
    assert len(queued) == len(set(queued)) == 400


def _raw_messages(broker_url: str, queue: str) -> list[dict[str, Any]]:
    """The messages of ``queue`` as the broker holds them (delivery tags left out)."""
    if is_redis(broker_url):
        messages = [json.loads(raw) for raw in _redis_list(broker_url, queue)]
        for message in messages:
            message["properties"].pop("delivery_tag", None)
        return messages
    from kombu import Connection

    result = []
    with Connection(broker_url, connect_timeout=5) as conn:
        channel = conn.channel()
        try:
            for _ in range(100):
                message = channel.basic_get(queue=queue, no_ack=False)
                if message is None:
                    break
                properties = {k: v for k, v in message.properties.items() if k != "delivery_tag"}
                result.append(
                    {
                        "body": json.loads(message.body),
                        "headers": message.headers,
                        "properties": properties,
                        "content_type": message.content_type,
                    }
                )
        finally:
            channel.close()
    return result


def _purge(broker_url: str, queue: str) -> None:
    if is_redis(broker_url):
        drop_queue(broker_url, queue)
        return
    from kombu import Connection

    with Connection(broker_url, connect_timeout=5) as conn:
        conn.channel().queue_purge(queue)


def _comparable(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages without the one field that depends on the time of sending: the TTL in ms until
    ``expires`` (checked to be within a second instead)."""
    ttls = [m["properties"].pop("expiration", None) for m in messages]
    if any(ttl is not None for ttl in ttls):
        assert None not in ttls and max(map(int, ttls)) - min(map(int, ttls)) < 1000, ttls
    return messages


def test_publish_sends_the_message_send_task_would(
    broker_url: str, sqlite_db: str, queue: str, apps: AppFactory
) -> None:
    """publish() (and the relay) must put on the wire what ``app.send_task`` puts there for the
    same task id and options: the same headers, properties and body."""
    db = migrated(sqlite_db)
    app = apps(broker_url, db, queue, tasks=("t.ok",))
    when = datetime(2031, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
    cases: list[tuple[list[Any], dict[str, Any], dict[str, Any]]] = [
        (["plain"], {}, {}),
        (["kw"], {"a": [1, 2.5, None, True], "b": {"c": "d"}}, {}),
        (["types", when, uuid.UUID(int=7)], {}, {}),
        (["headers"], {}, {"headers": {"x-tenant": "acme", "x-n": 3}}),
        (["links"], {}, {"link": signature("t.ok", ["after"]), "link_error": [signature("t.ok", ["err"])]}),
        (["limits"], {}, {"time_limit": 30, "soft_time_limit": 20, "shadow": "shadowed", "retries": 2}),
        (["lineage"], {}, {"parent_id": "p-1", "root_id": "r-1", "ignore_result": True}),
        (["eta"], {}, {"eta": when, "expires": when + timedelta(hours=1)}),
        (["routing"], {}, {"queue": queue, "routing_key": queue}),
        (["long " * 200], {"k": "v " * 300}, {}),
    ]
    if not is_redis(broker_url):
        cases.append((["priority"], {}, {"priority": 3}))
    for args, kwargs, options in cases:
        task_id = f"same-{uuid.uuid4().hex}"
        assert publish(app, "t.ok", args, kwargs, task_id=task_id, **options).sent
        app.send_task("t.ok", args, kwargs, task_id=task_id, **options)
        ours, celerys = _comparable(_raw_messages(broker_url, queue))
        assert ours == celerys, f"publish(..., {args!r:.60}, {kwargs!r:.60}, **{options!r:.100}) differs from send_task"
        _purge(broker_url, queue)
    # and the relay sends the same message too
    down = apps(dead_broker(broker_url), db, queue, tasks=("t.ok",), reliable_publish_retries=0)
    for args, kwargs, options in cases:
        task_id = f"relayed-{uuid.uuid4().hex}"
        assert not publish(down, "t.ok", args, kwargs, task_id=task_id, **options).sent
        assert relay_once(app).sent == 1
        app.send_task("t.ok", args, kwargs, task_id=task_id, **options)
        ours, celerys = _comparable(_raw_messages(broker_url, queue))
        # the one header added: the row waits for its task's outcome (the delivery ledger)
        assert ours["headers"].pop(LEDGER_HEADER) == 1
        ours["properties"].get("application_headers", {}).pop(LEDGER_HEADER, None)
        if is_redis(broker_url):
            # built ahead, when the row was written: it names the producer's reply queue
            assert ours["properties"].pop("reply_to") == down.thread_oid
            celerys["properties"].pop("reply_to")
        assert ours == celerys, f"relayed {args!r:.60}, {kwargs!r:.60}, **{options!r:.100} differs from send_task"
        _purge(broker_url, queue)


@pytest.mark.rabbitmq
def test_relay_does_not_count_a_returned_message_as_sent(
    amqp_url: str, sqlite_db: str, queue: str, apps: AppFactory
) -> None:
    """The relay's batch confirms: a message RabbitMQ returns (its queue deleted after the relay
    declared it) fails and is sent again later, instead of being acked and dropped."""
    from kombu import Connection

    db = migrated(sqlite_db)
    down = apps(dead_broker(amqp_url), db, queue, tasks=("t.ok",), reliable_publish_retries=0)
    relay = apps(amqp_url, db, queue, tasks=("t.ok",))
    assert not publish(down, "t.ok", ["first"]).sent
    assert relay_once(relay).sent == 1  # the relay declared the queue
    with Connection(amqp_url, connect_timeout=5) as conn:
        conn.channel().queue_delete(queue=queue)
    late = [publish(down, "t.ok", [f"late-{i}"]) for i in range(2)]
    stats = relay_once(relay)
    assert (stats.sent, stats.failed, stats.broker_down) == (0, 2, True), stats  # both came back
    waiting = [row for row in pending_rows(db) if row.status != "sent"]
    assert [(row.status, row.attempts) for row in waiting] == [("pending", 1), ("pending", 1)]
    assert all(row.last_error.startswith("Unroutable: Basic.return: (312) NO_ROUTE") for row in waiting)
    now = datetime.now(timezone.utc)
    sql(db, update(PendingMessage).where(PendingMessage.status == "pending").values(next_attempt_at=now))
    again = relay_once(relay)
    assert again.sent == 2
    assert sorted(queued_ids(amqp_url, queue)) == sorted(r.task_id for r in late)


@pytest.mark.rabbitmq
def test_rabbitmq_unroutable_message_is_not_reported_as_sent(
    amqp_url: str, sqlite_db: str, queue: str, apps: AppFactory
) -> None:
    """'sent' must mean the broker has the message. A queue deleted after the publisher declared
    it (an operator, x-expires, auto-delete) leaves the message unroutable: RabbitMQ acks it
    (Celery never sets ``mandatory``) and drops it."""
    from kombu import Connection

    db = migrated(sqlite_db)
    app = apps(amqp_url, db, queue)
    first = publish(app, "t.ok", ["before-delete"])
    assert first.sent and broker_depth(amqp_url, queue) == (1, 0)
    with Connection(amqp_url, connect_timeout=5) as conn:
        conn.channel().queue_delete(queue=queue)
    second = publish(app, "t.ok", ["after-delete"])
    with Connection(amqp_url, connect_timeout=5) as conn:
        try:
            conn.channel().queue_declare(queue=queue, passive=True)
            exists = True
        except Exception:
            exists = False
    held = broker_depth(amqp_url, queue)[0] if exists else 0
    rows = pending_rows(db)
    assert (second.sent and held == 1) or (not second.sent and [r.task_id for r in rows] == [second.task_id]), (
        f"publish() returned {second}; queue exists: {exists}, messages in it: {held}; pending rows: {len(rows)}"
    )
