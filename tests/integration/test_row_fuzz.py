"""Seeded fuzz of stored rows: the relay and replay against hundreds of malformed rows.

Valid rows are built the way ``publish()`` stores them (messages built ahead included), then most
are damaged at random with raw SQL (SQLite and PostgreSQL): random JSON edits of the stored
message, truncations, wrong types, control characters, huge values, other tasks' names in
headers, links and messages, cells that do not decode. Each damage kind knows what must become
of the row (sent, invalid, expired, dead; or "either" for edits that may keep it valid), and
whatever else happens, these hold:

* the relay never raises, over several passes; every row ends sent (its message in Redis exactly
  once) or invalid / expired / dead with a reason;
* every message in Redis (a private redis-server: every list is read) agrees with a sent row:
  its task, its id, its list; and no message names a task the app does not register, in its
  header or anywhere in its callbacks, errbacks, chain or chord;
* replay refuses every damaged failed row with ``ReplayError`` and sends every valid one once.
"""

from __future__ import annotations

import base64
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import create_engine, text

from celery_reliable import FailureFilter, ReplayError, ReplayResult, relay_once, replay_many, upgrade
from celery_reliable.message.prepare import prepare
from celery_reliable.message.protocol import PROTOCOL_HEADERS
from celery_reliable.send.publish import with_message
from celery_reliable.send.publisher import reset_publisher
from celery_reliable.store.engine import dispose
from tests.harness import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.redis]

SEED = 20260131
QUEUE, OTHER_QUEUE, WRONG_TYPE = "fuzz", "fuzz-other", "fuzz-string"
EVIL_NAMES = ("fuzz.evil", "evil.run", "fuzz.a.evil", "Fuzz.A", "fuzz.a ", "os.system")
#: rows of each kind
VALID_PENDING, MALFORMED_PENDING = 60, 240
VALID_FAILED, MALFORMED_FAILED = 40, 220


def fuzz_app(broker_url: str, db_url: str) -> Celery:
    """Registers ``fuzz.a(x)``, ``fuzz.b(x, y=1)`` and the bound ``fuzz.c(self, **kw)`` (never run here)."""
    app = Celery(f"fuzz-{uuid.uuid4().hex[:6]}", broker=broker_url, set_as_current=False)
    app.conf.update(
        reliable_database_url=db_url,
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        reliable_publish_retries=0,
        reliable_relay_batch_size=50,
        reliable_relay_backoff=0.2,
        reliable_relay_backoff_max=0.2,
        reliable_relay_max_attempts=2,
    )

    @app.task(name="fuzz.a", shared=False)
    def a(x: Any) -> None:
        raise AssertionError("runs in a worker only")

    @app.task(name="fuzz.b", shared=False)
    def b(x: Any, y: Any = 1) -> None:
        raise AssertionError("runs in a worker only")

    @app.task(name="fuzz.c", bind=True, shared=False)
    def c(self: Any, **kw: Any) -> None:
        raise AssertionError("runs in a worker only")

    return app


# -- random values --------------------------------------------------------------------------------


class Raw(str):
    """A cell's text written as it is (not JSON-encoded): SQLite only."""


def text_value(rng: random.Random, postgres: bool) -> str:
    """A string: plain, unicode, control characters (no NUL on PostgreSQL), or huge."""
    kind = rng.randrange(5)
    if kind == 0:
        return "".join(rng.choice("abcxyz 019_-") for _ in range(rng.randint(0, 12)))
    if kind == 1:
        return "".join(chr(rng.choice([0x142, 0x17C, 0x2603, 0x1F600, 0x4E2D, 0x5C, 0x22])) for _ in range(6))
    if kind == 2:
        low = 1 if postgres else 0
        return "".join(chr(rng.randint(low, 31)) for _ in range(rng.randint(1, 6)))
    if kind == 3:
        return rng.choice("xyz") * rng.randint(20_000, 200_000)
    return rng.choice(["", "null", "[", "{}", "\\", "'", '"'])


def json_value(rng: random.Random, postgres: bool, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([0, -1, 7, 2**31, -(2**63), 2**70])
    if kind == 1:
        return rng.choice([0.5, -1e300, 1e-300, 3.25])
    if kind == 2:
        return rng.choice([True, False, None])
    if kind in (3, 4):
        return text_value(rng, postgres)
    if kind == 5:
        return [json_value(rng, postgres, depth + 1) for _ in range(rng.randint(0, 4))]
    return {text_value(rng, postgres)[:20]: json_value(rng, postgres, depth + 1) for _ in range(rng.randint(0, 4))}


def sig(name: Any, **options: Any) -> dict[str, Any]:
    return {"task": name, "args": [], "kwargs": {}, "options": options, "subtask_type": None, "immutable": False}


def typed(kind: str, name: str, **kwargs: Any) -> dict[str, Any]:
    return {"task": name, "args": [], "kwargs": kwargs, "options": {}, "subtask_type": kind, "immutable": False}


def evil_tree(rng: random.Random, depth: int = 0) -> Any:
    """A signature (tree) that names a task the app does not register somewhere inside."""
    evil = rng.choice(EVIL_NAMES)
    if depth >= 3:
        return sig(evil)
    shapes: list[Callable[[], Any]] = [
        lambda: sig(evil),
        lambda: sig("fuzz.b", link=[evil_tree(rng, depth + 1)]),
        lambda: sig("fuzz.a", link_error=[sig("fuzz.b"), evil_tree(rng, depth + 1)]),
        lambda: typed("chain", "celery.chain", tasks=[sig("fuzz.a"), evil_tree(rng, depth + 1)]),
        lambda: typed("group", "celery.group", tasks=[evil_tree(rng, depth + 1)]),
        lambda: typed("chord", "celery.chord", header=[sig("fuzz.a"), evil_tree(rng, depth + 1)], body=sig("fuzz.b")),
        lambda: typed("chord", "celery.chord", header=[sig("fuzz.a")], body=evil_tree(rng, depth + 1)),
        lambda: typed("xmap", "celery.map", task=evil_tree(rng, depth + 1), it=[1]),
        lambda: sig("fuzz.a", chord=evil_tree(rng, depth + 1)),
    ]
    return rng.choice(shapes)()


def malformed_tree(rng: random.Random) -> Any:
    """A link value that is not signatures Celery could run as they are."""
    nested: Any = sig("fuzz.a")
    for _ in range(40):
        nested = sig("fuzz.a", link=[nested])
    return rng.choice([
        "fuzz.b", [5], [None], [{"task": None}], [{"task": ""}], [{"args": []}], [["fuzz.b"]],
        [{"task": "fuzz.b", "subtask_type": "bogus"}], [{"task": "fuzz.b", "options": []}],
        [{"task": "fuzz.b", "options": {"headers": {"task": "fuzz.evil"}}}],
        [{"task": "fuzz.b", "options": {"headers": {rng.choice(sorted(PROTOCOL_HEADERS)): 1}}}],
        [{"task": "celery.chain", "subtask_type": "chain", "kwargs": []}], [nested],
    ])  # fmt: skip


def good_tree(rng: random.Random) -> Any:
    return rng.choice([
        [sig("fuzz.b")], [sig("fuzz.a", link=[sig("fuzz.c")])],
        [typed("chain", "celery.chain", tasks=[sig("fuzz.a"), sig("fuzz.b")])],
        [typed("chord", "celery.chord", header=[sig("fuzz.a")], body=sig("fuzz.b"))],
    ])  # fmt: skip


# -- pending rows ---------------------------------------------------------------------------------

#: What must become of a row: a status, or ANY (edits that may leave it valid).
ANY = "any"
Damage = Callable[[dict[str, Any], random.Random, bool], str]


def _message_parts(row: dict[str, Any]) -> tuple[str, dict[str, Any], list[Any]]:
    key, _, raw = row["message"].partition("\n")
    envelope = json.loads(raw)
    return key, envelope, json.loads(base64.b64decode(envelope["body"]))


def _set_message(row: dict[str, Any], key: str, envelope: dict[str, Any], body: list[Any] | None = None) -> None:
    if body is not None:
        envelope["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    row["message"] = f"{key}\n{json.dumps(envelope)}"


def _edit(change: Callable[[str, dict[str, Any], list[Any], random.Random], str | None]) -> Damage:
    """A damage to the stored message; ``change`` edits (key, envelope, body) and may return a new key."""

    def damage(row: dict[str, Any], rng: random.Random, postgres: bool) -> str:
        key, envelope, body = _message_parts(row)
        new_key = change(key, envelope, body, rng)
        _set_message(row, new_key if new_key is not None else key, envelope, body)
        return "invalid"

    return damage


def _set(path: str, values: Callable[[random.Random], Any]) -> Callable[..., None]:
    def change(key: str, envelope: dict[str, Any], body: list[Any], rng: random.Random) -> None:
        target: Any = envelope
        *parents, last = path.split(".")
        for part in parents:
            target = target[part]
        target[last] = values(rng)

    return change


def _json_edit(row: dict[str, Any], rng: random.Random, postgres: bool) -> str:
    """Any value anywhere in the envelope (not the body) replaced by a random one."""
    key, envelope, _ = _message_parts(row)
    target: Any = envelope
    for _ in range(4):
        keys = [k for k in target if k != "body"] if isinstance(target, dict) else []
        if not keys:
            break
        choice = rng.choice(keys)
        if not isinstance(target[choice], dict) or rng.random() < 0.4:
            target[choice] = json_value(rng, postgres)
            break
        target = target[choice]
    _set_message(row, key, envelope)
    return ANY


def _truncate(row: dict[str, Any], rng: random.Random, postgres: bool) -> str:
    row["message"] = row["message"][: rng.randrange(len(row["message"]))]
    return "invalid"


def _control(row: dict[str, Any], rng: random.Random, postgres: bool) -> str:
    at = rng.randrange(len(row["message"]))
    row["message"] = row["message"][:at] + chr(rng.randint(1, 8)) + row["message"][at:]
    return "invalid"


def _other_task(row: dict[str, Any], rng: random.Random) -> Any:
    return rng.choice(
        [name for name in (*EVIL_NAMES, "fuzz.a", "fuzz.b", "fuzz.c", 5, None) if name != row["task_name"]]
    )


def _header_task(row: dict[str, Any], rng: random.Random, postgres: bool) -> str:
    key, envelope, _ = _message_parts(row)
    envelope["headers"]["task"] = _other_task(row, rng)
    _set_message(row, key, envelope)
    return "invalid"


def _priority(row: dict[str, Any], rng: random.Random, postgres: bool) -> str:
    """Another priority in the message (its list key kept): 3 and 9 are other lists than 0-2."""
    key, envelope, _ = _message_parts(row)
    current = envelope["properties"]["priority"]
    envelope["properties"]["priority"] = rng.choice([p for p in (3, 9, 300, -1, "5", None, 2.5) if p != current])
    _set_message(row, key, envelope)
    return "invalid"


def _duplicate_headers(row: dict[str, Any], rng: random.Random, postgres: bool) -> str:
    """A second "headers" key at the end of the envelope (JSON's last one wins) naming another task."""
    key, envelope, _ = _message_parts(row)
    headers = dict(envelope["headers"], task=_other_task(row, rng))
    text = json.dumps(envelope)
    row["message"] = f'{key}\n{text[:-1]}, "headers": {json.dumps(headers)}}}'
    return "invalid"


def _body(values: Callable[[random.Random], Any]) -> Damage:
    def damage(row: dict[str, Any], rng: random.Random, postgres: bool) -> str:
        key, envelope, _ = _message_parts(row)
        envelope["body"] = values(rng)
        _set_message(row, key, envelope)
        return "invalid"

    return damage


def _embed(row: dict[str, Any], rng: random.Random, postgres: bool) -> str:
    key, envelope, body = _message_parts(row)
    part = rng.choice(["callbacks", "errbacks", "chain", "chord"])
    tree = evil_tree(rng)
    body[2][part] = tree if part == "chord" else [sig("fuzz.b"), tree]
    _set_message(row, key, envelope, body)
    return "invalid"


def _column(column: str, values: Callable[[random.Random, bool], Any], verdict: str = "invalid") -> Damage:
    def damage(row: dict[str, Any], rng: random.Random, postgres: bool) -> str:
        row[column] = values(rng, postgres)
        return verdict

    return damage


def _option(key: str, values: Callable[[random.Random, bool], Any], verdict: str = "invalid") -> Damage:
    def damage(row: dict[str, Any], rng: random.Random, postgres: bool) -> str:
        if not isinstance(row["options"], dict):
            row["options"] = {}
        row["options"][key] = values(rng, postgres)
        return verdict

    return damage


def _arguments(verdict: str, task: str, args: Callable[[random.Random, bool], Any], kwargs: Any = None) -> Damage:
    def damage(row: dict[str, Any], rng: random.Random, postgres: bool) -> str:
        row["task_name"], row["args"] = task, args(rng, postgres)
        row["kwargs"] = kwargs(rng, postgres) if callable(kwargs) else ({} if kwargs is None else kwargs)
        return verdict

    return damage


def _unreadable(rng: random.Random, postgres: bool) -> Raw:
    good = json.dumps({"headers": {}, "a": [1, 2, {"b": "c"}]})
    return Raw(rng.choice([good[: rng.randrange(1, len(good))], "[not json", "{'a': 1}", "\x01\x02", "nope", "[1,]"]))


def _garbage_time(rng: random.Random, postgres: bool) -> Raw:
    return Raw(rng.choice(["garbage", "2026-13-45 99:00:00", "yesterday", "1e9", "\x03", "-"]))


def _damaged_headers(rng: random.Random, postgres: bool) -> Any:
    return {rng.choice(sorted(PROTOCOL_HEADERS)): json_value(rng, postgres), "x-ok": 1}


#: Damage of a row whose message was built ahead (the message kept): (damage, SQLite only).
MESSAGE_DAMAGE: list[tuple[Damage, bool]] = [
    (_header_task, False),
    (_edit(_set("headers.id", lambda rng: rng.choice([uuid.uuid4().hex, "", 7, None]))), False),
    (_edit(_set("properties.correlation_id", lambda rng: uuid.uuid4().hex)), False),
    (
        _edit(lambda key, env, body, rng: rng.choice([OTHER_QUEUE, f"{QUEUE}\x06\x165", "", "any-key", WRONG_TYPE])),
        False,
    ),
    (_priority, False),
    (_edit(_set("properties.delivery_info.routing_key", lambda rng: rng.choice([OTHER_QUEUE, "", 5]))), False),
    (_edit(_set("properties.delivery_info.exchange", lambda rng: rng.choice(["celery", "amq.topic", 1]))), False),
    (
        _edit(_set("content-type", lambda rng: rng.choice(["application/x-python-serialize", "application/x-yaml"]))),
        False,
    ),
    (_edit(_set("content-encoding", lambda rng: rng.choice(["binary", "utf-16", None]))), False),
    (_edit(_set("properties.body_encoding", lambda rng: rng.choice(["plain", None]))), False),
    (_edit(lambda key, env, body, rng: body.__setitem__(0, rng.choice([[1, 2, 3], [], "x", {"x": 1}]))), False),
    (_edit(lambda key, env, body, rng: body.__setitem__(1, rng.choice([{"zz": 1}, [], "y"]))), False),
    (_edit(lambda key, env, body, rng: body.__setitem__(2, rng.choice([[], "x", 5]))), False),
    (_embed, False),
    (
        _bad_body := _body(
            lambda rng: rng.choice(["!!not base64!!", base64.b64encode(b"\xff\xfe[1]").decode(), "", 5])
        ),
        False,
    ),
    (
        _short_body := _body(
            lambda rng: base64.b64encode(rng.choice([b"[1, 2]", b"{}", b"[[], {}]", b"null"])).decode()
        ),
        False,
    ),
    (_truncate, False),
    (_control, False),
    (_duplicate_headers, False),
    (_message_type := _column("message", lambda rng, pg: rng.choice([123, b"\x00\xff", 1.5])), True),
    (_json_edit, False),
]

#: Damage that holds for rows with or without a message built ahead: (damage, SQLite only).
COLUMN_DAMAGE: list[tuple[Damage, bool]] = [
    (_column("task_name", lambda rng, pg: rng.choice([*EVIL_NAMES, ""])), False),
    (_column("task_name", lambda rng, pg: rng.choice([b"\xff\xfe", 12.5, "fuzz.a" + "x" * 1000])), True),
    (_column("task_id", lambda rng, pg: ""), False),
    (_column("task_id", lambda rng, pg: b"\x00\x01"), True),
    (_column("options", lambda rng, pg: rng.choice([[], "x", 5, True, [{"queue": QUEUE}]])), False),
    (_option("headers", _damaged_headers), False),
    (_option("headers", lambda rng, pg: rng.choice([[1], "x", 5])), False),
    (_option("priority", lambda rng, pg: rng.choice([300, -1, "high", True, 2.5])), False),
    (_option("queue", lambda rng, pg: rng.choice([5, [], {"a": 1}])), False),
    (_option("exchange", lambda rng, pg: rng.choice([5, []])), False),
    (_option("time_limit", lambda rng, pg: rng.choice([-1, 0, "x", True])), False),
    (_column("args", _unreadable), True),
    (_column("kwargs", _unreadable), True),
    (_column("options", _unreadable), True),
    (_column("eta", _garbage_time), True),
    (_column("expires_at", _garbage_time), True),
]

#: Damage of a row sent from its columns (no message): (damage, SQLite only).
NO_MESSAGE_DAMAGE: list[tuple[Damage, bool]] = [
    (_arguments("invalid", "fuzz.a", lambda rng, pg: rng.choice([[1, 2, 3], [], None])), False),
    (_arguments("invalid", "fuzz.a", lambda rng, pg: [1], {"zz": 1}), False),
    (_arguments("invalid", "fuzz.b", lambda rng, pg: rng.choice(["x", 5, {"x": 1}, True])), False),
    (_arguments("invalid", "fuzz.b", lambda rng, pg: [1], lambda rng, pg: rng.choice([[1], "y", 5])), False),
    (_arguments("invalid", "fuzz.c", lambda rng, pg: [1]), False),
    (_option("link", lambda rng, pg: [evil_tree(rng)]), False),
    (_option("link_error", lambda rng, pg: [sig("fuzz.b"), evil_tree(rng)]), False),
    (_option("link", lambda rng, pg: malformed_tree(rng)), False),
    (_option("link_error", lambda rng, pg: malformed_tree(rng)), False),
]

#: Changes that leave a row valid, sent from its columns.
NO_MESSAGE_FINE: list[Damage] = [
    _arguments("sent", "fuzz.a", lambda rng, pg: [json_value(rng, pg)]),
    _arguments("sent", "fuzz.b", lambda rng, pg: [json_value(rng, pg)], lambda rng, pg: {"y": json_value(rng, pg)}),
    _arguments("sent", "fuzz.c", lambda rng, pg: [], lambda rng, pg: {"k": json_value(rng, pg)}),
    _option("headers", lambda rng, pg: {f"x-{text_value(rng, pg)[:10]}": json_value(rng, pg)}, "sent"),
    _option("priority", lambda rng, pg: rng.randint(0, 9), "sent"),
    _option("queue", lambda rng, pg: OTHER_QUEUE, "sent"),
    _option("link", lambda rng, pg: good_tree(rng), "sent"),
    _column("eta", lambda rng, pg: datetime.now(timezone.utc) + timedelta(seconds=rng.uniform(-1e5, 1e6)), "sent"),
]


#: Damage that leaves no message a later damage could parse: done last, at most one of them.
_FINAL = (_truncate, _control, _message_type, _bad_body, _short_body)
_PARSING = tuple(damage for damage, _ in MESSAGE_DAMAGE if damage not in _FINAL)


def _in_order(damages: list[Damage]) -> list[Damage]:
    """The damages to do, in an order where none undoes or breaks another: a random JSON edit of
    the message is its only edit that parses it; one final damage last."""
    final = [d for d in damages if d in _FINAL][:1]
    rest = [d for d in damages if d not in _FINAL]
    if _json_edit in rest:
        rest = [_json_edit, *[d for d in rest if d not in _PARSING]]
    return rest + final


def _drop_queue_option(row: dict[str, Any], rng: random.Random, postgres: bool) -> str:
    """A row written before the queue was kept in its options: the relay routes it by name."""
    row["options"].pop("queue", None)
    return "sent"


def valid_row(app: Celery, index: int, rng: random.Random) -> dict[str, Any]:
    """A row as publish() stores it when the broker is down (message built ahead)."""
    task, args, kwargs = rng.choice([("fuzz.a", [index], {}), ("fuzz.b", [index], {"y": "y"})])
    options = {"priority": rng.randint(0, 9)} if rng.random() < 0.3 else {}
    values = with_message(app, prepare(app, task, args, kwargs, options))
    assert values.message is not None
    return {
        "task_id": values.task_id, "task_name": task, "args": values.args, "kwargs": values.kwargs,
        "options": values.options, "eta": None, "expires_at": None, "message": values.message,
    }  # fmt: skip


def pending_rows(app: Celery, rng: random.Random, postgres: bool) -> list[tuple[dict[str, Any], str, str]]:
    """(row, what must become of it, what was done to it): valid rows, then damaged ones."""
    rows: list[tuple[dict[str, Any], str, str]] = []
    for index in range(VALID_PENDING):
        row = valid_row(app, index, rng)
        if index % 3 == 1:
            row["message"] = None
            verdict = rng.choice(NO_MESSAGE_FINE)(row, rng, postgres)
            rows.append((row, verdict, "valid, from its columns"))
        elif index % 3 == 2:
            rows.append((row, _drop_queue_option(row, rng, postgres), "valid, no queue option"))
        else:
            rows.append((row, "sent", "valid"))
    allowed = [(damage, sqlite_only) for damage, sqlite_only in COLUMN_DAMAGE if not (sqlite_only and postgres)]
    for index in range(MALFORMED_PENDING):
        row = valid_row(app, VALID_PENDING + index, rng)
        kind = rng.random()
        if kind < 0.04:
            row["expires_at"] = datetime.now(timezone.utc) - timedelta(seconds=rng.uniform(1, 1e6))
            rows.append((row, "expired", "expires passed"))
            continue
        if kind < 0.08:
            row["message"] = None
            row["options"] = {"queue": WRONG_TYPE}
            rows.append((row, "dead", "list key holds a string"))
            continue
        with_message = kind < 0.55
        if with_message:
            pool = [(d, s) for d, s in MESSAGE_DAMAGE if not (s and postgres)] + allowed
        else:
            row["message"] = None
            pool = [(d, s) for d, s in NO_MESSAGE_DAMAGE if not (s and postgres)] + allowed
        verdicts, names = [], []
        if not with_message and rng.random() < 0.3:  # a change that keeps it valid, then the damage
            verdicts.append(rng.choice(NO_MESSAGE_FINE)(row, rng, postgres))
        for damage in _in_order([damage for damage, _ in rng.sample(pool, rng.randint(1, 3))]):
            verdicts.append(damage(row, rng, postgres))
            names.append(getattr(damage, "__qualname__", "?"))
        verdict = "invalid" if "invalid" in verdicts else ANY
        rows.append((row, verdict, f"{'message' if with_message else 'columns'}: {', '.join(names)}"))
    return rows


# -- writing with raw SQL -------------------------------------------------------------------------


def _cell(value: Any, kind: str, postgres: bool) -> Any:
    """A Python value as the raw SQL parameter of a ``kind`` (json / time / plain) column."""
    if value is None:
        return None
    if isinstance(value, Raw):
        assert not postgres, "raw cells on SQLite only"
        return str(value)
    if kind == "json":
        return json.dumps(value)
    if kind == "time" and isinstance(value, datetime):
        return value if postgres else value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


PENDING_KINDS = {"args": "json", "kwargs": "json", "options": "json", "eta": "time", "expires_at": "time"}
FAILED_KINDS = {"args": "json", "kwargs": "json", "options": "json", "raw_message": "json",
                "first_failed_at": "time", "last_failed_at": "time"}  # fmt: skip


def insert(db: str, table: str, kinds: dict[str, str], rows: list[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` with raw SQL, one by one (ids in order)."""
    engine = create_engine(db)
    postgres = engine.dialect.name == "postgresql"
    ids = []
    try:
        with engine.begin() as conn:
            for row in rows:
                names = list(row)
                holders = [
                    f"CAST(:{n} AS jsonb)" if postgres and kinds.get(n) == "json" else f":{n}" for n in names
                ]  # fmt: skip
                statement = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(holders)}) RETURNING id"
                params = {n: _cell(row[n], kinds.get(n, "plain"), postgres) for n in names}
                ids.append(int(conn.execute(text(statement), params).scalar_one()))
    finally:
        engine.dispose()
    return ids


def table(db: str, statement: str) -> list[Any]:
    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(statement)))
    finally:
        engine.dispose()


# -- reading Redis --------------------------------------------------------------------------------


def all_messages(client: redis.Redis) -> list[tuple[str, dict[str, Any], list[Any]]]:
    """(list key, envelope, decoded body) of every message in every list of the private Redis."""
    found = []
    for key in client.scan_iter(count=1000):
        if client.type(key) != b"list":
            continue
        for raw in client.lrange(key, 0, -1):
            envelope = json.loads(raw)
            found.append((key.decode(), envelope, json.loads(base64.b64decode(envelope["body"]))))
    return found


def named_tasks(value: Any) -> list[Any]:
    """Every value under a "task" key anywhere in ``value`` (more than Celery would run: a bound)."""
    names: list[Any] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "task" in item:
                names.append(item["task"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return names


# -- the tests ------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest) -> str:
    url = str(request.getfixturevalue(f"{request.param}_db"))
    upgrade(url)
    return url


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", persistent=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def app_of() -> Iterator[Callable[[str, str], Celery]]:
    made: list[Celery] = []

    def factory(broker_url: str, db_url: str) -> Celery:
        made.append(fuzz_app(broker_url, db_url))
        return made[-1]

    yield factory
    for app in made:
        reset_publisher(app)
        dispose(app)
        app.close()


def test_relay_over_malformed_pending_rows(db: str, broker: RedisServer, app_of: Callable[[str, str], Celery]) -> None:
    postgres = db.startswith("postgresql")
    rng = random.Random(f"{SEED}-pending-{postgres}")
    client = redis.Redis.from_url(broker.url)
    try:
        client.set(WRONG_TYPE, "not a list")
        app = app_of(broker.url, db)
        planned = pending_rows(app, rng, postgres)
        assert sum(verdict != "sent" for _, verdict, _ in planned) >= 200
        columns = ["task_id", "task_name", "args", "kwargs", "options", "eta", "expires_at", "message"]
        fixed = {"source": "outbox", "status": "pending", "attempts": 0, "last_error": "",
                 "next_attempt_at": datetime(2000, 1, 1, tzinfo=timezone.utc),
                 "created_at": datetime(2000, 1, 1, tzinfo=timezone.utc)}  # fmt: skip
        ids = insert(
            db, "celery_reliable_pending_message", {**PENDING_KINDS, "next_attempt_at": "time", "created_at": "time"},
            [{**{c: row[c] for c in columns}, **fixed} for row, _, _ in planned],
        )  # fmt: skip
        # When the relay makes several passes (it never raises)
        for _ in range(3):
            relay_once(app)
            time.sleep(0.25)
        stored = {
            int(r[0]): r
            for r in table(db, "SELECT id, status, last_error, task_id FROM celery_reliable_pending_message")
        }
        # Then every row ends as its damage says, with a reason when it was not sent
        wrong = []
        for row_id, (_, verdict, what) in zip(ids, planned, strict=True):
            status, reason = stored[row_id][1], stored[row_id][2]
            expected = {"sent", "invalid"} if verdict == ANY else {verdict}
            if status not in expected or (status != "sent" and not reason):
                wrong.append((row_id, what, verdict, status, reason[:300]))
        assert not wrong, f"seed {SEED}: {len(wrong)} rows ended wrong, e.g. {wrong[:5]}"
        # and Redis holds exactly one message per sent row, agreeing with it, naming only registered tasks
        registered = set(app.tasks)
        messages = all_messages(client)
        by_task_id = Counter(envelope["headers"].get("id") for _, envelope, _ in messages)
        sent = {stored[row_id][3]: (row_id, row) for row_id, (row, _, _) in zip(ids, planned, strict=True)
                if stored[row_id][1] == "sent"}  # fmt: skip
        assert set(by_task_id) == set(sent) and set(by_task_id.values()) == {1}, f"seed {SEED}"
        for key, envelope, body in messages:
            row_id, row = sent[envelope["headers"]["id"]]
            queue = row["options"].get("queue") or QUEUE
            assert envelope["headers"]["task"] == row["task_name"], (row_id, envelope["headers"])
            assert envelope["properties"]["delivery_info"] == {"exchange": "", "routing_key": queue}, row_id
            assert key == queue or key.startswith(f"{queue}\x06\x16"), (row_id, key, queue)
            names = [envelope["headers"]["task"], *named_tasks(body[2])]
            assert set(names) <= registered, (row_id, names)
            assert not PROTOCOL_HEADERS & set(row["options"].get("headers") or {}), row_id
        counts = Counter(status for _, status, _, _ in stored.values())
        print(f"seed {SEED} ({'postgres' if postgres else 'sqlite'}): {dict(counts)}, {len(messages)} messages")
    finally:
        client.close()


# -- failed rows ----------------------------------------------------------------------------------


def valid_failure(index: int, rng: random.Random) -> dict[str, Any]:
    task, args, kwargs = rng.choice([("fuzz.a", [index], {}), ("fuzz.b", [index], {"y": index}), ("fuzz.c", [], {})])
    return {
        "task_id": uuid.uuid4().hex, "task_name": task, "reason": "exception", "status": "failed",
        "args": args, "kwargs": kwargs,
        "options": {"routing_key": "orig", "headers": {"x-tenant": "t"}, "link": [sig("fuzz.b")]},
        "raw_message": None, "exc_type": "ValueError", "exc_message": "boom", "traceback": "", "attempts": 3,
        "hostname": "h", "first_failed_at": datetime(2026, 1, 1, tzinfo=timezone.utc),
        "last_failed_at": datetime(2026, 1, 1, tzinfo=timezone.utc), "replay_count": 0,
    }  # fmt: skip


#: Damage to a failed row that replay must refuse: (damage, SQLite only).
FAILURE_DAMAGE: list[tuple[Damage, bool]] = [
    (_column("task_name", lambda rng, pg: rng.choice([*EVIL_NAMES, ""])), False),
    (_column("task_name", lambda rng, pg: rng.choice([b"\xff", 7, "fuzz.a" + "x" * 1000])), True),
    (_arguments("invalid", "fuzz.a", lambda rng, pg: rng.choice([[1, 2, 3], []])), False),
    (_arguments("invalid", "fuzz.a", lambda rng, pg: [1], {"zz": 1}), False),
    (_arguments("invalid", "fuzz.b", lambda rng, pg: rng.choice(["x", 5, {"x": 1}, True])), False),
    (_arguments("invalid", "fuzz.b", lambda rng, pg: [1], lambda rng, pg: rng.choice([[1], "y", 5])), False),
    (_arguments("invalid", "fuzz.a", lambda rng, pg: [{"__unserializable_repr__": "<object>"}]), False),
    (_column("options", lambda rng, pg: rng.choice([[], "x", 5, True])), False),
    (_option("headers", _damaged_headers), False),
    (_option("headers", lambda rng, pg: rng.choice([[1], "x", 5])), False),
    (_option("link", lambda rng, pg: [evil_tree(rng)]), False),
    (_option("link_error", lambda rng, pg: [sig("fuzz.b"), evil_tree(rng)]), False),
    (_option("link", lambda rng, pg: malformed_tree(rng)), False),
    (_option("link_error", lambda rng, pg: malformed_tree(rng)), False),
    (_option("priority", lambda rng, pg: rng.choice([300, -1, "high", True])), False),
    (_option("routing_key", lambda rng, pg: rng.choice([5, [], {"a": 1}])), False),
    (_option("exchange", lambda rng, pg: rng.choice([5, []])), False),
    (_option("parent_id", lambda rng, pg: rng.choice([5, [], {"a": 1}])), False),
    (_option("shadow", lambda rng, pg: rng.choice([5, []])), False),
    (_column("args", _unreadable), True),
    (_column("kwargs", _unreadable), True),
    (_column("options", _unreadable), True),
]

#: Changes that leave a failed row replayable.
FAILURE_FINE: list[Damage] = [
    _arguments("sent", "fuzz.a", lambda rng, pg: [json_value(rng, pg)]),
    _arguments("sent", "fuzz.b", lambda rng, pg: [json_value(rng, pg)], lambda rng, pg: {"y": json_value(rng, pg)}),
    _option("headers", lambda rng, pg: {f"x-{text_value(rng, pg)[:10]}": json_value(rng, pg)}, "sent"),
    _option("link", lambda rng, pg: good_tree(rng), "sent"),
    _option("priority", lambda rng, pg: rng.randint(0, 9), "sent"),
    _column("exc_message", lambda rng, pg: text_value(rng, pg), "sent"),
    _column("traceback", lambda rng, pg: "x" * rng.randint(0, 300_000), "sent"),
]


def test_replay_over_malformed_failed_rows(db: str, broker: RedisServer, app_of: Callable[[str, str], Celery]) -> None:
    postgres = db.startswith("postgresql")
    rng = random.Random(f"{SEED}-failed-{postgres}")
    client = redis.Redis.from_url(broker.url)
    try:
        app = app_of(broker.url, db)
        planned: list[tuple[dict[str, Any], str, str]] = []
        for index in range(VALID_FAILED):
            row = valid_failure(index, rng)
            if index % 2:
                planned.append((row, rng.choice(FAILURE_FINE)(row, rng, postgres), "valid, changed"))
            else:
                planned.append((row, "sent", "valid"))
        pool = [(damage, sqlite_only) for damage, sqlite_only in FAILURE_DAMAGE if not (sqlite_only and postgres)]
        for index in range(MALFORMED_FAILED):
            row = valid_failure(VALID_FAILED + index, rng)
            names = []
            for damage, _ in rng.sample(pool, rng.randint(1, 3)):
                damage(row, rng, postgres)
                names.append(getattr(damage, "__qualname__", "?"))
            if not postgres and rng.random() < 0.2:  # a time that does not parse does not matter to replay
                row["last_failed_at"] = _garbage_time(rng, postgres)
            planned.append((row, "invalid", ", ".join(names)))
        ids = insert(db, "celery_reliable_failed_task", FAILED_KINDS, [row for row, _, _ in planned])
        # When every failed row is replayed at once (it never raises)
        results = replay_many(app, FailureFilter(), queue=QUEUE, limit=10_000)
        # Then the damaged rows are refused, the valid ones sent, each once
        outcome: dict[int, ReplayResult | ReplayError] = {}
        for result in results:
            if isinstance(result, ReplayResult):
                outcome[result.failure_id] = result
        refused = [r for r in results if isinstance(r, ReplayError)]
        assert len(results) == len(planned) and len(refused) == len(planned) - len(outcome)
        wrong = [(row_id, what, verdict) for row_id, (_, verdict, what) in zip(ids, planned, strict=True)
                 if (row_id in outcome) != (verdict == "sent")]  # fmt: skip
        assert not wrong, f"seed {SEED}: {len(wrong)} rows replayed wrongly, e.g. {wrong[:5]}"
        states = dict(table(db, "SELECT id, status FROM celery_reliable_failed_task"))
        assert Counter(states.values()) == {"replayed": len(outcome), "failed": len(refused)}
        # and Redis holds one message per replay, each running its row's task and naming only registered ones
        registered = set(app.tasks)
        messages = all_messages(client)
        new_ids = {result.task_id: result for result in outcome.values() if isinstance(result, ReplayResult)}
        assert sorted(envelope["headers"]["id"] for _, envelope, _ in messages) == sorted(new_ids)
        for key, envelope, body in messages:
            result = new_ids[envelope["headers"]["id"]]
            assert key == QUEUE or key.startswith(f"{QUEUE}\x06\x16"), key
            assert envelope["headers"]["task"] == result.task_name
            assert {envelope["headers"]["task"], *named_tasks(body[2])} <= registered
        print(f"seed {SEED} ({'postgres' if postgres else 'sqlite'}): {len(outcome)} replayed, {len(refused)} refused")
    finally:
        client.close()
