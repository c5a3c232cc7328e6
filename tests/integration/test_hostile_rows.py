"""Stored rows are input: arguments that do not fit, messages that name other tasks or lists, cells
that do not decode.

Each test writes rows the way an attacker or a broken script would (raw SQL on a real database),
then runs the real relay, replay, CLI or Flower against real Redis, and checks what arrives in
Redis (read raw, per test queue) and what each row became.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from celery_reliable import BadMessageError, ReliableCelery, ReplayError, outbox, publish, relay_once, replay
from celery_reliable.send.publisher import reset_publisher
from celery_reliable.store.engine import dispose
from tests.conftest import REDIS_URL, unique_queue
from tests.harness import ROOT
from tests.integration.test_cli_ops import cli
from tests.integration.test_flower import FlowerProcess
from tests.integration.test_publish import dead_broker, migrated, pending_rows

pytestmark = [pytest.mark.integration, pytest.mark.redis]

REGISTERED = ("shop.ok", "shop.other", "shop.bound")


def shop(broker_url: str, db_url: str, queue: str, *, producer_only: bool = False, **conf: Any) -> Celery:
    """An app that registers ``shop.ok(n)``, ``shop.other(n)`` and the bound ``shop.bound(a, b=2)``
    (bodies never run here); ``producer_only``: no tasks at all (a pure producer)."""
    app = Celery(f"shop-{uuid.uuid4().hex[:6]}", broker=broker_url, set_as_current=False)
    app.conf.update(
        reliable_database_url=db_url,
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        reliable_publish_retries=0,
        reliable_publish_timeout=3.0,
        **conf,
    )
    if not producer_only:

        @app.task(name="shop.ok", shared=False)
        def ok(n: int) -> None:
            raise AssertionError("runs in a worker only")

        @app.task(name="shop.other", shared=False)
        def other(n: int) -> None:
            raise AssertionError("runs in a worker only")

        @app.task(name="shop.bound", bind=True, shared=False)
        def bound(self: Any, a: int, b: int = 2) -> None:
            raise AssertionError("runs in a worker only")

    return app


ShopFactory = Callable[..., Celery]


@pytest.fixture
def shops() -> Iterator[ShopFactory]:
    made: list[Celery] = []

    def factory(*args: Any, **kwargs: Any) -> Celery:
        made.append(shop(*args, **kwargs))
        return made[-1]

    yield factory
    for app in made:
        reset_publisher(app)
        dispose(app)
        app.close()


@pytest.fixture
def queue(request: pytest.FixtureRequest) -> Iterator[str]:
    """A queue name of this test; it and the keys named after it are deleted afterwards."""
    name = unique_queue(request)
    yield name
    conn = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [name, *[f"{name}-{suffix}" for suffix in ("elsewhere", "other", "string")]]
        conn.delete(*keys, *[f"_kombu.binding.{key}" for key in keys], f"{name}\x06\x169")
    finally:
        conn.close()


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(REDIS_URL)
    yield conn
    conn.close()


def messages(client: redis.Redis, *keys: str) -> list[dict[str, Any]]:
    """Every message in the lists ``keys``: {'key', 'task', 'id', 'args', 'kwargs', 'embed'}."""
    found = []
    for key in keys:
        if client.type(key) != b"list":
            continue
        for raw in reversed(client.lrange(key, 0, -1)):
            envelope = json.loads(raw)
            args, kwargs, embed = json.loads(base64.b64decode(envelope["body"]))
            headers = envelope["headers"]
            found.append({"key": key, "task": headers["task"], "id": headers["id"], "args": args,
                          "kwargs": kwargs, "embed": embed})  # fmt: skip
    return found


def run(db: str, statement: str, *params: Any) -> None:
    """Raw SQL (driver placeholders) on the test database, in its own transaction."""
    engine = create_engine(db)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(statement, tuple(params))
    finally:
        engine.dispose()


def statuses(db: str) -> dict[int, tuple[str, str]]:
    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT id, status, last_error FROM celery_reliable_pending_message")
            return {int(i): (str(s), str(e)) for i, s, e in rows}
    finally:
        engine.dispose()


def sig(name: str, **options: Any) -> dict[str, Any]:
    """A signature as Celery serializes one."""
    return {"task": name, "args": [], "kwargs": {}, "options": options, "subtask_type": None, "immutable": False}


# -- A: arguments that do not fit the task's signature ------------------------------------------


def test_publish_and_outbox_refuse_arguments_that_do_not_fit(
    sqlite_db: str, queue: str, shops: ShopFactory, client: redis.Redis
) -> None:
    db = migrated(sqlite_db)
    app = shops(REDIS_URL, db, queue)
    # Celery's own apply_async refuses these (Task.typing) ...
    with pytest.raises(TypeError):
        app.tasks["shop.ok"].delay(1, 2, 3, 4)
    # ... and so do publish() and the outbox, naming the task, the arguments and the signature
    with pytest.raises(BadMessageError) as refused:
        publish(app, "shop.ok", [1, 2, 3, 4])
    assert "'shop.ok'" in str(refused.value) and "[1, 2, 3, 4]" in str(refused.value) and "ok(n)" in str(refused.value)
    with pytest.raises(BadMessageError, match=r"kwargs=\{'m': 1\}"):
        publish(app, "shop.ok", [1], {"m": 1})
    with pytest.raises(BadMessageError, match=r"bound\(a, b=2\)"):
        publish(app, "shop.bound", [1, 2, 3])
    with pytest.raises(BadMessageError, match="args must be a list or a tuple"):
        publish(app, "shop.ok", "1")
    engine = create_engine(db)
    try:
        with Session(engine) as session, session.begin():
            with pytest.raises(BadMessageError, match=r"do not fit the signature of task 'shop\.ok'"):
                outbox(session, app).send("shop.ok", [1, 2])
    finally:
        engine.dispose()
    # arguments that fit are sent (a bound task's self is not an argument)
    sent = [publish(app, "shop.bound", [1]), publish(app, "shop.ok", kwargs={"n": 2})]
    # a pure producer does not know the signature: it cannot check (documented)
    producer = shops(REDIS_URL, db, queue, producer_only=True)
    unchecked = publish(producer, "shop.ok", [1, 2, 3, 4])
    assert [r.sent for r in (*sent, unchecked)] == [True, True, True]
    assert [(m["task"], m["id"]) for m in messages(client, queue)] == [
        ("shop.bound", sent[0].task_id), ("shop.ok", sent[1].task_id), ("shop.ok", unchecked.task_id)
    ]  # fmt: skip
    assert pending_rows(db) == []


def test_delay_with_publish_all_raises_what_celery_raises(sqlite_db: str, queue: str, client: redis.Redis) -> None:
    """With reliable_publish_all, delay() goes through publish(): the refusal is still a TypeError."""
    app = ReliableCelery(f"all-{uuid.uuid4().hex[:6]}", broker=REDIS_URL, set_as_current=False)
    app.conf.update(reliable_database_url=migrated(sqlite_db), task_default_queue=queue, reliable_publish_all=True)

    @app.task(name="shop.ok", shared=False)
    def ok(n: int) -> None:
        raise AssertionError("runs in a worker only")

    try:
        with pytest.raises(TypeError, match=r"do not fit the signature of task 'shop\.ok', ok\(n\)") as refused:
            ok.delay(1, 2, 3, 4)
        assert isinstance(refused.value, BadMessageError)
        with pytest.raises(TypeError):
            app.send_task("shop.ok", [1, 2])
        sent = ok.delay(5)
        assert [(m["id"], m["args"]) for m in messages(client, queue)] == [(sent.id, [5])]
        assert pending_rows(sqlite_db) == []
    finally:
        reset_publisher(app)
        dispose(app)
        app.close()


def test_relay_refuses_stored_arguments_that_do_not_fit(
    sqlite_db: str, queue: str, shops: ShopFactory, client: redis.Redis
) -> None:
    db = migrated(sqlite_db)
    # Given rows written by a pure producer (it cannot check), with and without a message built ahead
    producer = shops(dead_broker(REDIS_URL), db, queue, producer_only=True)
    written = [publish(producer, "shop.ok", args) for args in ([1, 2, 3, 4], [1], [5, 6], [2])]
    ids = [r.pending_id for r in written]
    assert all(row.message for row in pending_rows(db))
    run(db, "UPDATE celery_reliable_pending_message SET message = NULL WHERE id IN (?, ?)", ids[2], ids[3])
    # When a relay that registers shop.ok(n) sends them
    stats = relay_once(shops(REDIS_URL, db, queue))
    # Then the rows whose arguments do not fit are invalid with the reason; the others are sent
    found = statuses(db)
    assert [found[i][0] for i in ids] == ["invalid", "sent", "invalid", "sent"], found
    assert "do not fit the signature of task 'shop.ok', ok(n)" in found[ids[0]][1]
    assert "args=[5, 6]" in found[ids[2]][1]
    assert (stats.sent, stats.invalid) == (2, 2)
    assert sorted(m["id"] for m in messages(client, queue)) == sorted([written[1].task_id, written[3].task_id])


# -- B and C: a stored message must agree with its row ------------------------------------------


def edit_message(db: str, row_id: int, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite row ``row_id``'s stored message: ``change`` gets {'key', 'envelope', 'body'} to edit."""
    engine = create_engine(db)
    try:
        with engine.begin() as conn:
            stored = conn.exec_driver_sql(
                "SELECT message FROM celery_reliable_pending_message WHERE id = ?", (row_id,)
            ).scalar_one()
            key, _, raw = stored.partition("\n")
            envelope = json.loads(raw)
            parts = {"key": key, "envelope": envelope, "body": json.loads(base64.b64decode(envelope["body"]))}
            change(parts)
            envelope["body"] = base64.b64encode(json.dumps(parts["body"]).encode()).decode()
            message = f"{parts['key']}\n{json.dumps(envelope)}"
            conn.exec_driver_sql(
                "UPDATE celery_reliable_pending_message SET message = ? WHERE id = ?", (message, row_id)
            )
    finally:
        engine.dispose()


def set_headers(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda parts: parts["envelope"]["headers"].update(values)


def set_embed(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda parts: parts["body"][2].update(values)


EVIL = "evil.run"  # a task the relay's app does not register (a worker elsewhere might)

CHORD = {
    "task": "celery.chord", "args": [], "options": {}, "subtask_type": "chord", "immutable": False,
    "kwargs": {"header": {"task": "celery.group", "args": [], "options": {}, "subtask_type": "group",
                          "immutable": False, "kwargs": {"tasks": [sig("shop.ok"), sig(EVIL)]}},
               "body": sig("shop.ok")},
}  # fmt: skip


def test_stored_message_is_sent_only_if_it_agrees_with_its_row(
    sqlite_db: str, queue: str, shops: ShopFactory, client: redis.Redis
) -> None:
    db = migrated(sqlite_db)
    elsewhere, other_queue = f"{queue}-elsewhere", f"{queue}-other"
    update = "UPDATE celery_reliable_pending_message SET {} WHERE id = ?"

    def message(change: Callable[[dict[str, Any]], None]) -> Callable[[int], None]:
        return lambda row_id: edit_message(db, row_id, change)

    def column(assignment: str, *values: Any) -> Callable[[int], None]:
        return lambda row_id: run(db, update.format(assignment), *values, row_id)

    def both(*edits: Callable[[int], None]) -> Callable[[int], None]:
        return lambda row_id: [edit(row_id) for edit in edits] and None

    def columns_only(options: dict[str, Any]) -> Callable[[int], None]:
        """No message built ahead: the relay builds it from these options."""
        return column("message = NULL, options = ?", json.dumps(options))

    # name: (what is done to the row, what its last_error must say; "" = sent as it is)
    cases: dict[str, tuple[Callable[[int], None], str]] = {
        "untouched": (lambda row_id: None, ""),
        "task": (message(set_headers(task="shop.other")), "runs task 'shop.other', the row's task is 'shop.ok'"),
        "task and column": (
            both(message(set_headers(task=EVIL)), column("task_name = ?", EVIL)),
            f"task {EVIL!r} is not registered",
        ),
        "id": (message(set_headers(id="another-id")), "task id 'another-id'"),
        "callback": (message(set_embed(callbacks=[sig(EVIL)])), f"callbacks names task {EVIL!r}"),
        "errback in chain": (
            message(set_embed(chain=[sig("shop.ok", link_error=[sig(EVIL)])])),
            f"chain names task {EVIL!r}",
        ),
        "chord": (message(set_embed(chord=CHORD)), f"chord names task {EVIL!r}"),
        "protocol header in a callback": (
            message(set_embed(callbacks=[sig("shop.ok", headers={"task": EVIL})])),
            "sets Celery's own message headers ['task']",
        ),
        "list key": (message(lambda parts: parts.update(key=elsewhere)), f"list key {elsewhere!r} is not {queue!r}"),
        "queue option": (
            column("options = ?", json.dumps({"headers": {}, "queue": other_queue})),
            f"the row's queue is {other_queue!r}",
        ),
        "priority": (message(lambda parts: parts["envelope"]["properties"].update(priority=9)), "list key"),
        "arguments": (
            message(lambda parts: parts["body"].__setitem__(0, [1, 2, 3, 4])),
            "do not fit the signature of task 'shop.ok'",
        ),
        "not JSON": (column("message = ?", f"{queue}\n{{not json}}"), "corrupt"),
        "empty": (column("message = ''"), "corrupt"),
        "columns, untouched": (columns_only({"headers": {}}), ""),
        "link": (columns_only({"headers": {}, "link": [sig(EVIL)]}), f"options.link names task {EVIL!r}"),
        "link in a link": (
            columns_only({"headers": {}, "link_error": [sig("shop.ok", link=[sig(EVIL)])]}),
            f"options.link_error names task {EVIL!r}",
        ),
        "link by name": (columns_only({"headers": {}, "link": [EVIL]}), "is not a signature"),
        "protocol header": (columns_only({"headers": {"task": "shop.other"}}), "Celery's own message headers"),
    }
    # Given one row per case, written while the broker was down (messages built ahead), then edited
    down = shops(dead_broker(REDIS_URL), db, queue)
    row_ids, task_ids = {}, {}
    for index, (name, (edit, _)) in enumerate(cases.items()):
        result = publish(down, "shop.ok", [index])
        assert result.pending_id is not None
        row_ids[name], task_ids[name] = result.pending_id, result.task_id
        edit(result.pending_id)
    # When the relay sends them (it registers shop.*, not evil.run)
    relay = shops(REDIS_URL, db, queue)
    stats = relay_once(relay)
    # Then only the untouched rows are sent; every other row is invalid with its reason
    found = statuses(db)
    outcome = {name: found[row_ids[name]] for name in cases}
    assert {name: status for name, (status, _) in outcome.items()} == {
        name: ("invalid" if reason else "sent") for name, (_, reason) in cases.items()
    }, outcome
    for name, (_, reason) in cases.items():
        assert reason in outcome[name][1], (name, outcome[name][1])
    assert (stats.sent, stats.invalid) == (2, len(cases) - 2)
    # and Redis holds exactly their two messages, each naming only its own task, in its own list
    arrived = messages(client, queue, elsewhere, other_queue, f"{queue}\x06\x169")
    assert sorted((m["key"], m["task"], m["id"]) for m in arrived) == sorted(
        (queue, "shop.ok", task_ids[name]) for name in ("untouched", "columns, untouched")
    )
    assert EVIL not in json.dumps(arrived)
    # A person resends a refused row: its message is built again from its columns (checked too)
    resent = cli(relay, "pending", "resend", str(row_ids["list key"]), str(row_ids["link"]), "--yes")
    assert resent.exit_code == 1, resent.output  # the row naming evil.run is refused again
    found = statuses(db)
    assert (found[row_ids["list key"]][0], found[row_ids["link"]][0]) == ("sent", "invalid")
    assert [m["id"] for m in messages(client, queue, elsewhere)][-1] == task_ids["list key"]
    assert len(messages(client, elsewhere)) == 0


# -- B: replay sends only what the app may send -------------------------------------------------


def add_failure(db: str, task: str = "shop.ok", args: Any = (1,), options: Any = None, **columns: Any) -> int:
    """A failed row written with raw SQL (JSON given as Python values, or as raw text with ``raw_*``)."""
    values: dict[str, Any] = {
        "task_id": uuid.uuid4().hex, "task_name": task, "reason": "exception", "status": "failed",
        "args": json.dumps(list(args) if isinstance(args, tuple) else args), "kwargs": "{}",
        "options": json.dumps(options if options is not None else {"headers": {}}), "raw_message": None,
        "exc_type": "ValueError", "exc_message": "boom", "traceback": "", "attempts": 1, "hostname": "h",
        "first_failed_at": "2026-01-01 00:00:00.000000", "last_failed_at": "2026-01-01 00:00:00.000000",
        "replay_count": 0,
    }  # fmt: skip
    values.update({key.removeprefix("raw_"): value for key, value in columns.items()})
    names = ", ".join(values)
    run(db, f"INSERT INTO celery_reliable_failed_task ({names}) VALUES ({', '.join('?' * len(values))})",
        *values.values())  # fmt: skip
    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT max(id) FROM celery_reliable_failed_task").scalar_one())
    finally:
        engine.dispose()


def test_replay_refuses_rows_that_would_run_another_task(
    sqlite_db: str, queue: str, shops: ShopFactory, client: redis.Redis
) -> None:
    db = migrated(sqlite_db)
    app = shops(REDIS_URL, db, queue)
    chain = {"task": "celery.chain", "args": [], "options": {}, "subtask_type": "chain", "immutable": False,
             "kwargs": {"tasks": [sig("shop.ok"), sig(EVIL)]}}  # fmt: skip
    refused = {
        "task header": (add_failure(db, options={"headers": {"task": "shop.other"}}), "Celery's own message headers"),
        "id header": (add_failure(db, options={"headers": {"id": "x"}}), "Celery's own message headers"),
        "link": (add_failure(db, options={"link": [sig(EVIL)]}), f"names task {EVIL!r}"),
        "chain in a link": (add_failure(db, options={"link_error": [chain]}), f"names task {EVIL!r}"),
        "link not a list": (add_failure(db, options={"link": sig("shop.ok")}), "not a list of signatures"),
        "header in a link": (
            add_failure(db, options={"link": [sig("shop.ok", headers={"task": EVIL})]}),
            "Celery's own message headers",
        ),
        "arguments": (add_failure(db, args=(1, 2, 3, 4)), "do not fit the signature of task 'shop.ok', ok(n)"),
        "args a mapping": (add_failure(db, args={"n": 1}), "stored args are not a list"),
        "unregistered": (add_failure(db, task=EVIL), "is not registered"),
        "unreadable args": (add_failure(db, raw_args="[not json"), "not readable JSON"),
        "unreadable options": (add_failure(db, raw_options="{"), "not readable JSON"),
        "priority": (add_failure(db, options={"priority": "high"}), "priority must be an integer"),
    }
    for name, (failure_id, reason) in refused.items():
        with pytest.raises(ReplayError) as error:
            replay(app, failure_id, queue=queue)
        assert reason in str(error.value), (name, str(error.value))
    # edited arguments are checked too; fitting ones are sent
    fixed_id = refused["arguments"][0]
    with pytest.raises(ReplayError, match=r"edited arguments args=\[1, 2\]"):
        replay(app, fixed_id, args=[1, 2], queue=queue)
    fixed = replay(app, fixed_id, args=[5], queue=queue)
    good = replay(
        app, add_failure(db, options={"headers": {"tenant": "acme"}, "link": [sig("shop.other")]}), queue=queue
    )
    arrived = messages(client, queue)
    assert [(m["task"], m["id"], m["args"]) for m in arrived] == [
        ("shop.ok", fixed.task_id, [5]), ("shop.ok", good.task_id, [1])
    ]  # fmt: skip
    assert [c["task"] for c in arrived[1]["embed"]["callbacks"]] == ["shop.other"]
    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            states = dict(conn.exec_driver_sql("SELECT id, status FROM celery_reliable_failed_task").all())
    finally:
        engine.dispose()
    assert [states[failure_id] for failure_id, _ in refused.values()] == [
        "replayed" if failure_id == fixed_id else "failed" for failure_id, _ in refused.values()
    ]


# -- E: cells that do not decode (SQLite lets anyone write anything anywhere) --------------------

PENDING_COLUMNS = {
    "task_id": None, "task_name": "shop.ok", "args": "[1]", "kwargs": "{}", "options": '{"headers": {}}',
    "eta": None, "expires_at": None, "source": "outbox", "status": "pending", "attempts": 0,
    "next_attempt_at": "2000-01-01 00:00:00.000000", "last_error": "", "created_at": "2026-01-01 00:00:00.000000",
    "message": None,
}  # fmt: skip


def add_pending_raw(db: str, **values: Any) -> int:
    row = {**PENDING_COLUMNS, "task_id": uuid.uuid4().hex, **values}
    run(db, f"INSERT INTO celery_reliable_pending_message ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
        *row.values())  # fmt: skip
    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT max(id) FROM celery_reliable_pending_message").scalar_one())
    finally:
        engine.dispose()


def test_cells_that_do_not_decode_make_their_row_invalid_and_every_reader_shows_them(
    sqlite_db: str, queue: str, shops: ShopFactory, client: redis.Redis, tmp_path: Path
) -> None:
    db = migrated(sqlite_db)
    wrong_type = f"{queue}-string"
    client.set(wrong_type, "not a list")
    try:
        rows = {
            "good": (add_pending_raw(db), "sent", ""),
            "args": (add_pending_raw(db, args="[not json"), "invalid", "args: the stored cell is not readable JSON"),
            "kwargs": (add_pending_raw(db, kwargs='{"a":'), "invalid", "kwargs: the stored cell is not readable"),
            "options": (add_pending_raw(db, options="nope"), "invalid", "options: the stored cell is not readable"),
            "eta": (add_pending_raw(db, eta="garbage"), "invalid", "eta is not a readable time: 'garbage'"),
            "expires": (add_pending_raw(db, expires_at="soon"), "invalid", "expires_at is not a readable time"),
            "task name": (add_pending_raw(db, task_name=b"\xff\x00"), "invalid", "task_name"),
            "task id": (add_pending_raw(db, task_id=b"\x00"), "invalid", "task_id"),
            "message": (add_pending_raw(db, message=b"\x01\x02"), "invalid", "the stored message is not text"),
            "written at": (add_pending_raw(db, created_at="yesterday"), "sent", ""),
            # a count that is not a number, on a row whose send fails: charged from zero
            "attempts": (
                add_pending_raw(db, attempts="many", options=json.dumps({"headers": {}, "queue": wrong_type})),
                "pending", "WRONGTYPE",
            ),
            "good 2": (add_pending_raw(db, args="[2]"), "sent", ""),
        }  # fmt: skip
        app = shops(REDIS_URL, db, queue)
        # When the relay runs (the CLI's `reliable relay`, then a pass from code)
        result = cli(app, "relay")
        assert result.exit_code == 0, result.output
        relay_once(app)
        # Then only the rows with bad cells are invalid, with the reason; the rest flowed
        found = statuses(db)
        for name, (row_id, status, reason) in rows.items():
            assert found[row_id][0] == status and reason in found[row_id][1], (name, found[row_id])
        assert {row.id: row.attempts for row in pending_rows(db)}[rows["attempts"][0]] == 1
        assert sorted(m["args"] for m in messages(client, queue)) == [[1], [1], [2]]
        # and failed rows with bad cells
        failures = {
            "args": add_failure(db, raw_args="[bad"),
            "options": add_failure(db, raw_options="{"),
            "time": add_failure(db, raw_last_failed_at="garbage"),
            "name": add_failure(db, task=b"\xfe"),
            "good": add_failure(db),
        }
        for name in ("args", "options", "name"):
            with pytest.raises(ReplayError):
                replay(app, failures[name], queue=queue, dry_run=True)
        for name in ("time", "good"):  # a time that does not parse does not stop a replay
            assert replay(app, failures[name], queue=queue, dry_run=True).sent is False
        # Then every reader shows them: the CLI ...
        for command in (
            ["pending", "list"], ["pending", "list", "--json"], ["pending", "list", "--status", "invalid"],
            ["failed", "list"], ["failed", "list", "--json"], ["status", "--json"],
            *[["pending", "show", str(row_id)] for row_id, _, _ in rows.values()],
            *[["pending", "show", str(row_id), "--json"] for row_id, _, _ in rows.values()],
            *[["failed", "show", str(failure_id)] for failure_id in failures.values()],
            *[["failed", "show", str(failure_id), "--json"] for failure_id in failures.values()],
        ):  # fmt: skip
            shown = cli(app, *command)
            # (`status` exits 1 when rows await a person: here the invalid ones)
            assert shown.exit_code == (1 if command[0] == "status" else 0), (command, shown.output)
        assert "__unreadable__" in cli(app, "pending", "show", str(rows["args"][0])).output
        assert "unreadable: 'yesterday'" in cli(app, "pending", "show", str(rows["written at"][0])).output
        assert "__unreadable__" in cli(app, "failed", "show", str(failures["options"])).output
        # ... and the Flower page and its API
        env = dict(os.environ, PYTHONPATH=str(ROOT), RELIABLE_TEST_BROKER=REDIS_URL, RELIABLE_TEST_QUEUE=queue,
                   RELIABLE_TEST_DB=db, FLOWER_UNAUTHENTICATED_API="true")  # fmt: skip
        flower = FlowerProcess(env, tmp_path / "flower.log").start()
        try:
            flower.wait_ready()
            page = flower.request("GET", "/reliability?pending_status=all")
            assert page.status == 200, page.body[:2000]
            for row_id, _, _ in rows.values():
                assert f'id="pending-{row_id}"' in page.body
            for failure_id in failures.values():
                assert f'id="failure-{failure_id}"' in page.body
            assert "__unreadable__" in page.body
            for path in ("/api/reliable/pending?pending_status=all", "/api/reliable/failures", "/api/reliable/summary"):
                answer = flower.request("GET", path)
                assert answer.status == 200, (path, answer.body[:500])
        finally:
            flower.stop()
    finally:
        client.delete(wrong_type)
