"""Garbage in a Redis queue list, through a real prefork worker: every entry is stored raw in the
failed-task table (``undecodable``), taken off the queue, and the worker keeps running.

kombu's Redis fetch trusts every entry of a queue: one that is not JSON, not an object, not UTF-8,
nested too deeply, without ``properties`` or a delivery tag, or with a body that is not base64
made the worker exit ("Unrecoverable error"), and the entry was in no list, not in ``unacked`` and
not in the table. See celery_reliable.broker.redis_fetch (the quarantine) and celery_reliable.broker.redis_envelope.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue

from celery_reliable.broker.redis_fetch import TRANSPORT, stage_list
from tests.conftest import Scenario, make_scenario
from tests.harness import RedisServer, die_after_fetch, wait_for, wait_while_alive
from tests.integration.test_queue_fuzz import capture_envelope, redis_leftovers, redis_scenario
from tests.malformed import TAKES_KEY, Factory, quarantine_list, tally

pytestmark = [pytest.mark.integration, pytest.mark.redis]

#: The kinds the first test writes into the queue, one entry each.
KINDS = [
    "not_json", "truncated", "json_list", "json_string", "json_number", "deep_nesting", "deep_in_headers",
    "not_utf8", "not_utf8_only", "raw_control_chars", "no_properties", "properties_list", "no_delivery_tag",
    "delivery_tag_int", "no_delivery_info", "routing_key_null", "body_not_base64", "body_bad_padding",
    "body_a_number", "body_encoding_unknown", "headers_list", "headers_null", "surrogate_tag", "huge_garbage",
]  # fmt: skip


@pytest.fixture
def redis_pg(request: pytest.FixtureRequest, redis_url: str, postgres_db: str, tmp_path: Path) -> Iterator[Scenario]:
    yield from redis_scenario(request, redis_url, postgres_db, tmp_path)


def _rows(scenario: Scenario, count: int) -> list[dict[str, Any]]:
    rows = scenario.db.failed_rows()
    return rows if len(rows) >= count else []


def test_entries_that_are_not_messages_are_stored_raw_and_the_worker_keeps_running(redis_pg: Scenario) -> None:
    scenario = redis_pg
    client = redis.Redis.from_url(scenario.broker_url)
    factory = Factory(capture_envelope(scenario, client), seed=1)
    kinds = factory.kinds()
    garbage = []
    for kind in KINDS:
        token = factory.token()
        garbage.append((kind, token, kinds[kind](token)))
    good = factory.valid()
    # Given a queue holding one entry of each kind, then a good message (LPUSH: taken in this order)
    client.lpush(scenario.queue, *[data for _, _, data in garbage], good.data)
    # When a worker consumes it
    worker = scenario.worker()
    assert worker.proc is not None
    pid = worker.proc.pid
    wait_while_alive(worker, lambda: scenario.db.counts().effect(good.token) == 1, 30, what="the good message run")
    rows = wait_while_alive(worker, lambda: _rows(scenario, len(garbage)), 30, what="a row for each entry")
    # Then the worker is the same process and never stopped
    assert worker.alive() and worker.proc.pid == pid
    assert "Unrecoverable error" not in worker.output()
    # and each entry is stored once, raw, with the reason, taken off every list and out of unacked
    assert len(rows) == len(garbage)
    outcome = tally([], [], rows)
    by_token = {token: (kind, data) for kind, token, data in garbage}
    assert all(reason == "row:undecodable" for got in outcome.values() for reason in got), outcome
    for row in rows:
        entry = row["raw_message"]["entry"]
        assert row["reason"] == "undecodable" and row["task_name"] == "<undecodable>"
        assert row["task_id"].startswith("raw-") and row["attempts"] == 1
        assert row["raw_message"]["queue"] == scenario.queue
        assert f"An entry of queue '{scenario.queue}' is not a message that can be delivered" in row["exc_message"]
        kept = entry["text"].encode() if "text" in entry else base64.b64decode(entry["base64"])
        tokens = [t for t in by_token if t.encode() in kept] or [t for t, (_, d) in by_token.items() if d == kept]
        assert len(tokens) == 1, (row["exc_message"], entry)
        kind, data = by_token.pop(tokens[0])
        assert entry["size"] == len(data)
        if len(data) > 64 * 1024:  # cut, with a note
            assert "truncated" in entry and len(kept) < len(data) and data.startswith(kept), kind
        else:
            assert kept == data and "truncated" not in entry, kind  # exactly as it was
        if kind in ("not_utf8", "not_utf8_only", "raw_control_chars"):
            assert "base64" in entry and entry["encoding"].startswith("base64: "), kind
    assert by_token == {}
    why = {r["exc_message"].split("can be delivered: ")[1].split(". It was taken")[0] for r in rows}
    for reason in ("not JSON", "a JSON list, not an object", "JSON nested more than 200 levels deep",
                   "not UTF-8 text", "'properties' is", "'properties.delivery_tag' is", "the body is not valid base64",
                   "unknown 'properties.body_encoding'", "'headers' is list, not an object"):  # fmt: skip
        assert any(w.startswith(reason) for w in why), (reason, why)
    assert redis_leftovers(client, scenario.queue, factory.run) == {}
    assert [k for k in client.hkeys(TAKES_KEY) if f"fz{factory.run}".encode() in k] == []  # counts cleared


def test_a_quarantine_list_left_by_a_dead_worker_is_stored_when_a_worker_starts(redis_pg: Scenario) -> None:
    scenario = redis_pg
    client = redis.Redis.from_url(scenario.broker_url)
    quarantine = quarantine_list(scenario.queue)
    # Given entries a worker moved to the quarantine list and died before it stored them (one in
    # the worker's own form, one written there by something else)
    client.lpush(quarantine, b"0a1b2c3d4e:{not json at all", b"\xff\xfe written by hand")
    # When a worker starts on the queue
    worker = scenario.worker()
    rows = wait_for(lambda: _rows(scenario, 2), 30, what="both quarantined entries stored")
    # Then both are stored, once, and the list is empty
    time.sleep(0.5)
    assert len(scenario.db.failed_rows()) == 2
    by_size = {r["raw_message"]["entry"]["size"]: r["raw_message"]["entry"] for r in rows}
    assert by_size[16] == {"size": 16, "text": "{not json at all"}
    encoded = base64.b64encode(b"\xff\xfe written by hand").decode()
    assert by_size[18] == {"size": 18, "base64": encoded, "encoding": "base64: not UTF-8 text"}
    assert {r["task_id"] for r in rows} >= {"raw-0a1b2c3d4e"}
    assert client.llen(quarantine) == 0
    assert worker.alive()


# -- a message that stops its worker while it is decoded --------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", persistent=False).start()
    try:
        yield server
    finally:
        server.stop()


def _killed_while_decoding(url: str, queue_name: str, client: redis.Redis) -> None:
    """A consumer takes the next message and dies before it delivered it; the message is then
    given back by kombu's visibility-timeout sweep, as it would be after a worker died."""
    queue = Queue(queue_name, Exchange(""), routing_key=queue_name)
    die_after_fetch(Connection(url, transport=TRANSPORT), queue, client)
    assert client.hlen("unacked") == 1  # taken and recorded, never delivered
    with Connection(url, transport=TRANSPORT, transport_options={"visibility_timeout": 0.3}) as conn:
        time.sleep(0.6)
        channel: Any = conn.default_channel
        channel.qos.restore_visible(num=10)
    assert client.hlen("unacked") == 0 and client.llen(queue_name) >= 1


def test_a_message_that_stopped_its_worker_twice_while_decoded_is_stored(
    request: pytest.FixtureRequest, private_redis: RedisServer, postgres_db: str, tmp_path: Path
) -> None:
    scenarios = make_scenario(request, private_redis.url, postgres_db, tmp_path)
    scenario = next(scenarios)
    try:
        client = redis.Redis.from_url(private_redis.url)
        # Given a message whose take stopped a worker once: it is delivered on its next take
        scenario.send("t.ok", "once", task_id="once")
        _killed_while_decoding(private_redis.url, scenario.queue, client)
        worker = scenario.worker("w1")
        wait_for(lambda: scenario.db.counts().effect("once") == 1, 30, what="the message killed once to run")
        worker.stop()
        # Given a message whose take stopped a worker twice
        scenario.send("t.ok", "twice", task_id="twice")
        _killed_while_decoding(private_redis.url, scenario.queue, client)
        _killed_while_decoding(private_redis.url, scenario.queue, client)
        # When a worker takes it a third time, it is quarantined and stored instead of delivered
        worker = scenario.worker("w2")
        (row,) = wait_while_alive(worker, lambda: _rows(scenario, 1), 30, what="the message stored")
        assert row["reason"] == "undecodable"
        assert "taken 3 times without being delivered" in row["exc_message"], row["exc_message"]
        assert json.loads(row["raw_message"]["entry"]["text"])["headers"]["id"] == "twice"
        time.sleep(0.5)
        assert scenario.db.counts().effect("twice") == 0  # not run
        assert worker.alive()
        for key in (scenario.queue, stage_list(scenario.queue), quarantine_list(scenario.queue)):
            assert client.llen(key) == 0, key
        assert client.hlen("unacked") == 0 and client.hlen(TAKES_KEY) == 0
    finally:
        scenarios.close()


def test_an_unacknowledged_record_kombu_cannot_restore_is_stored(
    request: pytest.FixtureRequest, private_redis: RedisServer, postgres_db: str, tmp_path: Path
) -> None:
    """A worker killed between taking an entry and checking it leaves its record in ``unacked``.
    kombu's restore sweep raised on a record that is not UTF-8 (stopping the sweeping worker, and
    the next one) and dropped one whose headers are not an object: both are stored instead."""
    scenarios = make_scenario(request, private_redis.url, postgres_db, tmp_path)
    scenario = next(scenarios)
    try:
        client = redis.Redis.from_url(private_redis.url)
        factory = Factory(capture_envelope(scenario, client), seed=2)
        records = {}
        for kind in ("not_utf8", "headers_null"):
            token = factory.token()
            raw = factory.kinds()[kind](token)
            tag = f"{token}-tag".encode()
            records[token] = raw
            client.hset("unacked", tag, b"[" + raw + b', "", "' + scenario.queue.encode() + b'"]')
            client.zadd("unacked_index", {tag: time.time() - 3600})  # long past the visibility timeout
        good = factory.valid()
        client.lpush(scenario.queue, good.data)
        # When a worker sweeps (a visibility timeout of 5 s, a sweep every second)
        worker = scenario.worker(RELIABLE_TEST_FAULT_VT="5", RELIABLE_TEST_RESTORE="1")
        assert worker.proc is not None
        pid = worker.proc.pid
        rows = wait_while_alive(worker, lambda: _rows(scenario, 2), 30, what="both records stored")
        wait_while_alive(worker, lambda: scenario.db.counts().effect(good.token) == 1, 30, what="the good message run")
        time.sleep(2.5)  # more sweeps
        # Then both are stored once, kept whole, and nothing is left in unacked or a quarantine list
        rows = scenario.db.failed_rows()
        assert len(rows) == 2 and all(r["reason"] == "undecodable" for r in rows)
        assert all("An unacknowledged message is not a message that can be delivered" in r["exc_message"] for r in rows)
        kept = {token for r in rows for token in records if token in json.dumps(r["raw_message"])
                or token.encode() in base64.b64decode(r["raw_message"]["entry"].get("base64", ""))}  # fmt: skip
        assert kept == set(records)
        assert client.hlen("unacked") == 0 and client.llen("_reliable.quarantine") == 0
        assert worker.alive() and worker.proc.pid == pid
        assert "Unrecoverable error" not in worker.output()
    finally:
        scenarios.close()


def test_without_a_worker_to_store_it_an_entry_stays_quarantined_under_the_key_prefix(
    private_redis: RedisServer,
) -> None:
    """A plain kombu consumer on the atomic-fetch transport (no failure table to store into) keeps
    the entry in the quarantine list, under the connection's global key prefix, and goes on."""
    url, prefix = private_redis.url, "app1:"
    client = redis.Redis.from_url(url)
    name = "fetch-prefixed"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    good: list[Any] = []
    with Connection(url, transport=TRANSPORT, transport_options={"global_keyprefix": prefix}) as conn:
        queue(conn.default_channel).declare()
        client.lpush(f"{prefix}{name}", b"\xff not a message")  # taken before the message below
        conn.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key=name)
        with conn.Consumer(queue, callbacks=[lambda body, message: (good.append(body), message.ack())]):
            for _ in range(6):
                if good:
                    break
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    continue
    assert good == [{"n": 1}]
    (element,) = client.lrange(f"{prefix}{name}\x06\x16quarantine", 0, -1)
    assert element.endswith(b":\xff not a message")
    assert client.llen(f"{prefix}{name}") == 0 and not client.exists(f"{name}\x06\x16quarantine")
    assert client.hlen(f"{prefix}unacked") == 0 and client.hlen(f"{prefix}{TAKES_KEY}") == 0
