"""Seeded random malformed entries, mixed with good messages, through a real prefork worker.

Every entry must end as exactly one effect (a good ``t.ok`` message) or exactly one stored failure
row, the worker must never stop (same PID at the end, no "Unrecoverable error"), and nothing may be
left in the queue, its stage or quarantine list, or ``unacked``. On Redis the entries are written
into the queue list as raw bytes (what a broken producer, a bad migration or a bit flip leaves);
on RabbitMQ they are published raw (body bytes, properties and headers as given).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_reliable.broker.redis_fetch import stage_list
from tests.conftest import Scenario, make_scenario
from tests.harness import wait_for, wait_while_alive
from tests.malformed import Entry, Factory, quarantine_list, tally, tokens_in

pytestmark = pytest.mark.integration

#: The fuzz's seed (RELIABLE_TEST_FUZZ_SEED runs another one).
SEED = int(os.environ.get("RELIABLE_TEST_FUZZ_SEED", "20260101"))
RANDOM_ENTRIES = 200
DEADLINE = 60


def redis_scenario(request: pytest.FixtureRequest, url: str, db_url: str, tmp: Path) -> Iterator[Scenario]:
    """A Redis scenario whose queue's quarantine list goes too (the shared fixtures do not know it)."""
    scenarios = make_scenario(request, url, db_url, tmp)
    scenario = next(scenarios)
    try:
        yield scenario
    finally:
        scenarios.close()
        client = redis.Redis.from_url(url)
        client.delete(quarantine_list(scenario.queue))
        client.close()


@pytest.fixture
def redis_pg_scenario(
    request: pytest.FixtureRequest, redis_url: str, postgres_db: str, tmp_path: Path
) -> Iterator[Scenario]:
    yield from redis_scenario(request, redis_url, postgres_db, tmp_path)


def capture_envelope(scenario: Scenario, client: redis.Redis) -> dict[str, Any]:
    """The envelope of a real t.ok message, as the producer wrote it into the queue list."""
    scenario.send("t.ok", "template", task_id="template")
    raw = client.rpop(scenario.queue)
    assert raw is not None
    envelope: dict[str, Any] = json.loads(raw)
    return envelope


def redis_leftovers(client: redis.Redis, queue: str, run: str) -> dict[str, int]:
    """Entries of this run still anywhere in Redis: the queue's lists, and ``unacked``."""
    lists = [queue, stage_list(queue), quarantine_list(queue), *[f"{queue}\x06\x16{p}" for p in range(1, 10)]]
    left = {name: int(client.llen(name)) for name in lists if client.llen(name)}
    unacked = sum(1 for value in client.hvals("unacked") if f"fz{run}".encode() in value)
    if unacked:
        left["unacked"] = unacked
    return left


def _effect_keys(scenario: Scenario) -> list[str]:
    counts = scenario.db.counts().effects
    return [key for key, n in counts.items() for _ in range(n)]


def _settled(scenario: Scenario, entries: list[Entry]) -> dict[str, list[str]] | None:
    outcome = tally(entries, _effect_keys(scenario), scenario.db.failed_rows())
    return outcome if all(outcome[e.token] for e in entries) else None


def _check(scenario: Scenario, entries: list[Entry], worker: Any, pid: int) -> dict[str, list[str]]:
    """Wait until every entry has an outcome, then a little longer; assert exactly one each."""
    try:
        wait_while_alive(worker, lambda: _settled(scenario, entries), DEADLINE, what="an outcome for every entry")
    except AssertionError:
        outcome = tally(entries, _effect_keys(scenario), scenario.db.failed_rows())
        missing = [e.kind for e in entries if not outcome[e.token]]
        raise AssertionError(
            f"no outcome for {len(missing)} of {len(entries)} entries: {missing}; worker alive: {worker.alive()}; "
            f"log tail:\n{worker.output()[-4000:]}"
        ) from None
    time.sleep(2.0)  # a late duplicate (a redelivery, a second row) would show now
    outcome = tally(entries, _effect_keys(scenario), scenario.db.failed_rows())
    wrong = {token: got for token, got in outcome.items() if len(got) != 1}
    kinds = {e.token: e.kind for e in entries}
    assert not wrong, {kinds.get(t, t): got for t, got in wrong.items()}
    missing = [e.kind for e in entries if e.valid and outcome[e.token] != ["effect"]]
    assert not missing, missing
    assert worker.alive() and worker.proc.pid == pid
    assert "Unrecoverable error" not in worker.output()
    return outcome


def _summary(outcome: dict[str, list[str]]) -> dict[str, int]:
    summary: dict[str, int] = {}
    for got in outcome.values():
        summary[got[0]] = summary.get(got[0], 0) + 1
    return dict(sorted(summary.items()))


@pytest.mark.redis
def test_redis_queue_fuzz(redis_pg_scenario: Scenario) -> None:
    scenario = redis_pg_scenario
    client = redis.Redis.from_url(scenario.broker_url)
    factory = Factory(capture_envelope(scenario, client), seed=SEED)
    entries = factory.picked() + factory.random(RANDOM_ENTRIES)
    random.Random(SEED).shuffle(entries)
    assert len(entries) >= 240 and all(e.data for e in entries)
    # Given a queue full of entries, most of them malformed (LPUSH: the first one is taken first)
    for start in range(0, len(entries), 50):
        client.lpush(scenario.queue, *[e.data for e in entries[start : start + 50]])
    # When a prefork worker consumes it
    started = time.monotonic()
    worker = scenario.worker(concurrency=2)
    assert worker.proc is not None
    pid = worker.proc.pid
    outcome = _check(scenario, entries, worker, pid)
    took = time.monotonic() - started
    # Then nothing is left behind: not in the queue, its stage or quarantine list, nor unacked
    assert redis_leftovers(client, scenario.queue, factory.run) == {}
    rows = scenario.db.failed_rows()
    assert len(rows) + sum(scenario.db.counts().effects.values()) == len(entries)
    undecodable = [r for r in rows if r["reason"] == "undecodable"]
    assert undecodable and all(r["raw_message"]["entry"]["size"] > 0 for r in undecodable)
    assert all(len(json.dumps(r["raw_message"])) < 200_000 for r in rows)  # bounded, whatever came in
    print(f"\n[redis fuzz, seed {SEED}] {len(entries)} entries in {took:.1f}s: {_summary(outcome)}")


# -- RabbitMQ --------------------------------------------------------------------------------


def _amqp_entries(factory: Factory, template: dict[str, Any], n: int) -> list[tuple[Entry, dict[str, Any]]]:
    """(entry, publish arguments) for raw AMQP messages: body bytes, content type and headers as given."""
    rng = factory.rng
    good_headers = template["headers"]
    out: list[tuple[Entry, dict[str, Any]]] = []
    for _ in range(n):
        token = factory.token()
        headers = dict(good_headers, id=token, root_id=token, task="t.ok")
        body: bytes = json.dumps([[token], {}, {"callbacks": None, "errbacks": None, "chain": None}]).encode()
        content_type, content_encoding = "application/json", "utf-8"
        kind = rng.choice(
            ["valid", "body_noise", "body_not_json", "body_shape", "task_list", "task_int", "task_unknown",
             "no_task", "no_id", "content_type", "encoding", "deep_body", "huge_body", "bad_utf8_body",
             "headers_types", "too_many_args", "compression", "headers_exotic", "headers_deep"]
        )  # fmt: skip
        if kind == "body_noise":
            body = token.encode() + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
        elif kind == "body_not_json":
            body = f"{{{token} not json".encode()
        elif kind == "body_shape":
            shapes: list[Any] = [[[token], {}], {"a": token}, token, [token, {}, {}], [[token], [1], {}]]
            body = json.dumps(rng.choice(shapes)).encode()
        elif kind == "task_list":
            headers["task"] = ["t.ok", token]
        elif kind == "task_int":
            headers["task"] = 7
        elif kind == "task_unknown":
            headers["task"] = f"t.unknown-{token}"
        elif kind == "no_task":
            del headers["task"]
        elif kind == "no_id":
            del headers["id"]
        elif kind == "content_type":
            content_type = rng.choice(["application/x-python-serialize", "text/plain", "application/x-evil", ""])
        elif kind == "encoding":
            content_encoding = rng.choice(["binary", "rot13", "latin-1"])
            body = body.replace(b"[[", "[[\u00e9".encode("latin-1"), 1) if content_encoding == "latin-1" else body
        elif kind == "deep_body":
            body = token.encode() + b" " + b"[" * 50_000 + b"]" * 50_000
        elif kind == "huge_body":
            body = json.dumps([[token, "x" * 200_000], {}, {}]).encode()
        elif kind == "bad_utf8_body":
            body = body.replace(b"[[", b"[[\xff\xfe", 1)
        elif kind == "headers_types":
            headers[rng.choice(["retries", "timelimit", "eta", "lang", "group"])] = rng.choice(
                [[token], {"k": token}, f"x{token}", 1.5]
            )
        elif kind == "headers_exotic":  # AMQP table types JSON does not have
            headers["x-exotic"] = rng.choice(
                [b"\xff\xfe" + token.encode(), Decimal("1.5"), datetime(2020, 1, 1), [b"\x00", 1.5, None]]
            )
        elif kind == "headers_deep":
            nested: Any = token
            for _ in range(rng.choice([120, 250])):  # deeper ones py-amqp cannot even publish
                nested = {"d": nested}
            headers["x-deep"] = nested
        elif kind == "too_many_args":
            body = json.dumps([[token, 1, 2, 3], {}, {}]).encode()
        elif kind == "compression":
            headers["compression"] = "application/x-nope"
        entry = Entry(token, body + json.dumps(headers, default=str).encode(), f"amqp:{kind}", valid=kind == "valid")
        out.append((entry, {"body": body, "headers": headers, "content_type": content_type,
                            "content_encoding": content_encoding}))  # fmt: skip
    return out


@pytest.fixture
def rabbit_pg_scenario(
    request: pytest.FixtureRequest, amqp_url: str, postgres_db: str, tmp_path: Path
) -> Iterator[Scenario]:
    yield from make_scenario(request, amqp_url, postgres_db, tmp_path)


@pytest.mark.rabbitmq
def test_rabbitmq_queue_fuzz(rabbit_pg_scenario: Scenario) -> None:
    from kombu import Connection, Queue

    from tests.faults.conftest import held

    scenario = rabbit_pg_scenario
    # The headers of a real message (what kombu/Celery publish), as the template
    scenario.send("t.ok", "template", task_id="template")
    with Connection(scenario.broker_url) as conn:
        message = wait_for(lambda: conn.SimpleQueue(scenario.queue).get(timeout=2), 10, what="the template")
        template = {"headers": dict(message.headers)}
        message.ack()
    factory = Factory({}, seed=SEED)
    planned = _amqp_entries(factory, template, 60)
    entries = [entry for entry, _ in planned]
    with Connection(scenario.broker_url) as conn:
        producer = conn.Producer()
        queue = Queue(scenario.queue, routing_key=scenario.queue)
        for entry, options in planned:
            assert entry.token in tokens_in(entry.data)
            producer.publish(
                options["body"], routing_key=scenario.queue, declare=[queue], headers=options["headers"],
                content_type=options["content_type"], content_encoding=options["content_encoding"],
                serializer=None, delivery_mode=2,
            )  # fmt: skip
    started = time.monotonic()
    worker = scenario.worker(concurrency=2)
    assert worker.proc is not None
    outcome = _check(scenario, entries, worker, worker.proc.pid)
    took = time.monotonic() - started
    assert held(scenario) == (0, 0)
    print(f"\n[rabbitmq fuzz, seed {SEED}] {len(entries)} messages in {took:.1f}s: {_summary(outcome)}")
