"""The status API and the operator commands (``celery -A proj reliable status|failed|pending|relay``).

Rows are written straight into a real database with a separate engine, commands run in-process
through click's runner with the context Celery's own CLI builds (and, once per command group,
through the real ``celery`` entry point), and what they did is read back from the database and,
for sends, raw from the Redis list of a per-test queue.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import pytest
import redis
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result
from kombu import Connection
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from celery_reliable import summary, upgrade
from celery_reliable.ops.cli import reliable
from celery_reliable.ops.cli.options import json_value, paced, parse_when
from celery_reliable.send.publisher import reset_publisher
from celery_reliable.store.engine import dispose
from celery_reliable.store.models import FailedTask, PendingMessage, ProcessedTask
from tests.conftest import drop_queue, unique_queue
from tests.harness import reliable_cli

pytestmark = pytest.mark.integration


def now() -> datetime:
    """The time now (not at collection: the suite runs for minutes)."""
    return datetime.now(timezone.utc)


def make_app(db_url: str, broker: str = "memory://", queue: str = "celery", **conf: Any) -> Celery:
    """An operator's app: the task names ``t.a`` and ``t.b`` registered (bodies never run here)."""
    app = Celery(f"ops-{uuid.uuid4().hex[:6]}", broker=broker, set_as_current=False)
    app.conf.update(
        reliable_database_url=db_url,
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        **conf,
    )
    for name in ("t.a", "t.b"):

        def body(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("runs in a worker only")

        app.task(name=name, shared=False)(body)
    return app


@pytest.fixture
def db(request: pytest.FixtureRequest) -> str:
    """A migrated database: SQLite, or the one named by indirect parametrization."""
    kind = getattr(request, "param", "sqlite")
    url = str(request.getfixturevalue(f"{kind}_db"))
    upgrade(url)
    return url


#: Run a test on each supported database (the default is SQLite alone).
ON_EVERY_DATABASE = pytest.mark.parametrize(
    "db",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), pytest.param("mysql", marks=pytest.mark.mysql)],
    indirect=True,
)


def failed(task: str = "t.a", exc: str = "ValueError", status: str = "failed", age: float = 0, **kw: Any) -> FailedTask:
    when = now() - timedelta(seconds=age)
    values: dict[str, Any] = {
        "task_id": uuid.uuid4().hex,
        "task_name": task,
        "reason": "exception",
        "status": status,
        "args": [1, "x"],
        "kwargs": {"k": 2},
        "options": {"routing_key": "orig"},
        "exc_type": exc,
        "exc_message": f"{exc}: boom",
        "traceback": "Traceback (most recent call last):\n  boom",
        "attempts": 3,
        "first_failed_at": when,
        "last_failed_at": when,
        **kw,
    }
    return FailedTask(**values)


def pending(status: str = "pending", age: float = 0, task: str = "t.a", **kw: Any) -> PendingMessage:
    when = now() - timedelta(seconds=age)
    values: dict[str, Any] = {
        "task_id": uuid.uuid4().hex,
        "task_name": task,
        "args": [7],
        "kwargs": {"p": "q"},
        "options": {},
        "source": "publish_fallback",
        "status": status,
        "attempts": 0,
        "next_attempt_at": when,
        "created_at": when,
        **kw,
    }
    return PendingMessage(**values)


def seed(db_url: str, *rows: Any) -> list[int]:
    """Insert ``rows``; returns their ids (or task ids, for processed rows)."""
    engine = create_engine(db_url)
    try:
        with Session(engine) as session, session.begin():
            session.add_all(rows)
            session.flush()
            return [getattr(r, "id", None) or r.task_id for r in rows]
    finally:
        engine.dispose()


# -- summary() -----------------------------------------------------------------------------------


def test_summary_counts_every_table(any_db_url: str) -> None:
    # Given an empty database, then rows in every state
    upgrade(any_db_url)
    app = make_app(any_db_url, reliable_relay_interval=5.0)
    try:
        empty = summary(app)
        assert empty.pending == dict.fromkeys(("pending", "claimed", "sent", "done", "dead", "expired", "invalid"), 0)
        assert (empty.oldest_pending_age, empty.failed_by_task, empty.failed_by_exception) == (None, {}, {})
        assert (empty.replayed, empty.processed_ids, empty.attention) == (0, 0, [])
        seed(
            any_db_url,
            failed("t.a", "ValueError"), failed("t.a", "ValueError"), failed("t.b", "KeyError"),
            failed("t.a", "KeyError", status="replayed"), failed("t.b", "OSError", status="replaying"),
            pending(age=1000), pending(age=10), pending("claimed", age=20), pending("dead", age=5000),
            *[pending("sent", age=9000) for _ in range(4)], pending("done", age=9000), pending("expired"),
            ProcessedTask(task_id="p1", task_name="t.a"), ProcessedTask(task_id="p2", task_name="t.a"),
        )  # fmt: skip
        # When it is summarised
        s = summary(app)
    finally:
        dispose(app)
    # Then each count is exact, and the oldest age is that of the oldest unsent row (not the sent ones)
    assert s.pending == {"pending": 2, "claimed": 1, "sent": 4, "done": 1, "dead": 1, "expired": 1, "invalid": 0}
    assert s.oldest_pending_age is not None and 999 <= s.oldest_pending_age < 1100
    assert s.failed_by_task == {"t.a": 2, "t.b": 1}
    assert s.failed_by_exception == {"ValueError": 2, "KeyError": 1}
    assert s.failed_by_status == {"failed": 3, "replaying": 1, "replayed": 1}
    assert (s.replayed, s.processed_ids) == (1, 2)
    text = "\n".join(s.attention)
    assert len(s.attention) == 4, text
    assert "3 failed task(s)" in text and "1 pending message(s) are dead" in text
    assert "are expired" in text and re.search(r"is 1\d\d\d s old", text)


def test_summary_backlog_depends_on_the_relay_interval(db: str) -> None:
    # Given one unsent row 100 s old
    seed(db, pending(age=100))
    fast, slow = make_app(db, reliable_relay_interval=5.0), make_app(db, reliable_relay_interval=30.0)
    try:
        # Then it is a backlog for a 5 s relay (threshold 60 s) but not for a 30 s one (300 s)
        assert [r for r in summary(fast).attention if "oldest unsent" in r]
        assert summary(slow).attention == []
    finally:
        dispose(fast)
        dispose(slow)


# -- the commands, in-process --------------------------------------------------------------------


def cli(app: Celery, *args: str, input: str | None = None) -> Result:
    """Run ``celery -A app reliable ARGS`` in-process, with the context Celery's CLI gives commands."""
    obj = CLIContext(app=app, no_color=True, workdir=None)
    return CliRunner().invoke(reliable, list(args), obj=obj, input=input, catch_exceptions=False)


def failed_rows(db_url: str) -> list[dict[str, Any]]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(FailedTask.__table__).order_by(FailedTask.id)).mappings()]
    finally:
        engine.dispose()


def pending_rows(db_url: str) -> list[dict[str, Any]]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            table = PendingMessage.__table__
            return [dict(r) for r in conn.execute(select(table).order_by(PendingMessage.id)).mappings()]
    finally:
        engine.dispose()


def queued(broker_url: str, queue: str) -> list[dict[str, Any]]:
    """Messages waiting in a queue, oldest first, left in place.

    Redis: read with LRANGE. RabbitMQ: fetched without ack, given back when the channel closes.
    """
    found = []
    if broker_url.startswith("redis"):
        client = redis.Redis.from_url(broker_url, socket_connect_timeout=3)
        try:
            raw = list(reversed(client.lrange(queue, 0, -1)))
        finally:
            client.close()
        for item in raw:
            message = json.loads(item)
            body = message["body"]
            if message["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args, kwargs, _embed = json.loads(body)
            found.append(
                {"id": message["headers"]["id"], "headers": message["headers"], "args": args, "kwargs": kwargs}
            )
        return found
    with Connection(broker_url, connect_timeout=5) as conn:
        channel = conn.channel()
        try:
            for _ in range(1000):
                got = channel.basic_get(queue=queue, no_ack=False)
                if got is None:
                    break
                args, kwargs, _embed = json.loads(got.body)
                found.append({"id": got.headers["id"], "headers": got.headers, "args": args, "kwargs": kwargs})
        finally:
            channel.close()
    return found


@pytest.fixture
def app(db: str) -> Iterator[Celery]:
    """An operator app on the SQLite database; the broker is never used."""
    made = make_app(db)
    yield made
    dispose(made)


@pytest.fixture
def sender(request: pytest.FixtureRequest, db: str) -> Iterator[Celery]:
    """An operator app on real Redis (or RabbitMQ, by indirect parametrization) with a queue of this test."""
    kind = getattr(request, "param", "redis")
    broker_url = str(request.getfixturevalue("redis_url" if kind == "redis" else "amqp_url"))
    queue = unique_queue(request)
    made = make_app(db, broker_url, queue)
    yield made
    reset_publisher(made)
    dispose(made)
    made.close()
    drop_queue(broker_url, queue)
    if kind == "redis":
        client = redis.Redis.from_url(broker_url)
        try:
            client.delete(f"_kombu.binding.{queue}")
        finally:
            client.close()


def test_status_exit_code_says_whether_a_person_must_act(app: Celery, db: str) -> None:
    # Given a healthy database
    healthy = cli(app, "status")
    assert healthy.exit_code == 0, healthy.output
    assert "OK: nothing needs a person" in healthy.stdout
    # When a failure is stored and a pending row is dead
    seed(db, failed("t.b", "KeyError"), pending("dead"), pending("sent"))
    # Then status exits 1 and says why, in the table and in JSON
    sick = cli(app, "status")
    assert sick.exit_code == 1
    assert "NEEDS ATTENTION" in sick.stdout and "1 failed task(s)" in sick.stdout
    assert re.search(r"^t\.b\s+1$", sick.stdout, re.M) and re.search(r"^KeyError\s+1$", sick.stdout, re.M)
    data = json.loads(cli(app, "status", "--json").stdout)
    assert (data["healthy"], data["pending"]["dead"], data["pending"]["sent"]) == (False, 1, 1)
    assert data["failed_by_task"] == {"t.b": 1} and len(data["attention"]) == 2


def test_failed_list_filters_and_show(app: Celery, db: str) -> None:
    # Given failures of two tasks and two exceptions, one two days old, one replayed
    a1, a2, b1, old, done = seed(
        db, failed("t.a", "ValueError"), failed("t.a", "KeyError"), failed("t.b", "ValueError"),
        failed("t.b", "OSError", age=2 * 86400), failed("t.a", "ValueError", status="replayed"),
    )  # fmt: skip

    def ids(*args: str) -> list[int]:
        result = cli(app, "failed", "list", "--json", *args)
        assert result.exit_code == 0, result.output
        return [row["id"] for row in json.loads(result.stdout)]

    # Then each filter selects exactly its rows, newest first
    assert ids() == [done, old, b1, a2, a1]
    assert ids("--task", "t.a") == [done, a2, a1]
    assert ids("--exception", "ValueError", "--status", "failed") == [b1, a1]
    assert ids("--since", "1d") == [done, b1, a2, a1]
    assert ids("--until", "1d") == [old]
    assert ids("--until", (now() - timedelta(days=1)).isoformat(), "--task", "t.b") == [old]
    assert ids("--limit", "2") == [done, old]
    # The table is aligned and the detail shows arguments and traceback
    listing = cli(app, "failed", "list", "--task", "t.b").stdout.splitlines()
    assert listing[0].split()[:4] == ["id", "status", "task", "exception"]
    assert [line.split()[0] for line in listing[1:-1]] == [str(old), str(b1)]
    assert listing[-1] == "showing 1-2 of 2 failed tasks, newest first"
    shown = cli(app, "failed", "show", str(a2))
    assert shown.exit_code == 0 and '[1, "x"]' in shown.stdout and "Traceback (most recent" in shown.stdout
    assert json.loads(cli(app, "failed", "show", str(a2), "--json").stdout)["exc_type"] == "KeyError"
    # Bad input is a clear error
    unknown = cli(app, "failed", "show", "99999")
    assert unknown.exit_code == 1 and "no failed task with id 99999" in unknown.stderr
    bad_time = cli(app, "failed", "list", "--since", "yesterday")
    assert bad_time.exit_code == 2 and "neither an ISO date/time" in bad_time.stderr


def test_replay_refuses_bad_input_and_changes_nothing(app: Celery, db: str) -> None:
    # Given two stored failures
    first, _second = seed(db, failed("t.a"), failed("t.a"))
    before = failed_rows(db)
    # When a replay is asked for with bad input, or refused at the prompt
    cases = {
        ("failed", "replay", str(first), "--args", "[1, 2", "--yes"): (2, "not valid JSON"),
        ("failed", "replay", str(first), "--args", '{"a": 1}', "--yes"): (2, "must be a JSON array"),
        ("failed", "replay", str(first), "--kwargs", "[1]", "--yes"): (2, "must be a JSON object"),
        ("failed", "replay", "--all", "--args", "[1]", "--yes"): (2, "exactly one failure ID"),
        ("failed", "replay", "424242", "--yes"): (1, "no failed task with id 424242"),
        ("failed", "replay", "--task", "t.aa", "--yes"): (2, "did you mean 't.a'"),
        ("failed", "replay"): (2, "say which rows"),
        ("failed", "purge", "--all", "--yes", "--since", "noon"): (2, "neither an ISO"),
    }
    for args, (code, message) in cases.items():
        result = cli(app, *args)
        assert (result.exit_code, message in result.stderr) == (code, True), (args, result.output)
    refused = cli(app, "failed", "replay", "--all", input="n\n")
    assert refused.exit_code == 1 and "Replay 2 failed task(s)?" in refused.stderr
    refused = cli(app, "failed", "purge", "--all", input="n\n")
    assert refused.exit_code == 1 and "Delete 2 failed task row(s)" in refused.stderr
    # Then not one row changed
    assert failed_rows(db) == before


@ON_EVERY_DATABASE
def test_replay_one_filtered_and_all_through_redis(sender: Celery, db: str, redis_url: str) -> None:
    queue = sender.conf.task_default_queue
    # Given four failures waiting and one already replayed
    a1, a2, a3, b1, _done = seed(
        db, failed("t.a"), failed("t.a"), failed("t.a"), failed("t.b", kwargs={"n": 1}),
        failed("t.a", status="replayed"),
    )  # fmt: skip
    before = failed_rows(db)
    # When everything is replayed with --dry-run: nothing is sent or changed
    dry = cli(sender, "failed", "replay", "--all", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert [r["id"] for r in json.loads(dry.stdout)] == [a1, a2, a3, b1]
    assert (failed_rows(db), queued(redis_url, queue)) == (before, [])
    # When one is replayed with edited arguments
    one = cli(sender, "failed", "replay", str(a1), "--args", '[42, "fixed"]', "--kwargs", '{"z": 1}', "--yes")
    assert one.exit_code == 0, one.output
    [message] = queued(redis_url, queue)
    assert (message["args"], message["kwargs"], message["headers"]["task"]) == ([42, "fixed"], {"z": 1}, "t.a")
    assert message["headers"]["x_reliable_replay_of"] == a1
    # When a filtered set is replayed at 2 per second, then all the rest
    started = time.monotonic()
    some = cli(sender, "failed", "replay", "--task", "t.a", "--rate", "2", "--yes", "--json")
    assert some.exit_code == 0, some.output
    assert time.monotonic() - started >= 0.45  # two rows: one wait of 0.5 s between them
    assert [r["id"] for r in json.loads(some.stdout)] == [a2, a3] and "replaying" in some.stderr  # progress bar
    rest = cli(sender, "failed", "replay", "--all", "--yes")
    assert rest.exit_code == 0 and "replayed 1 of 1 failed task(s)" in rest.stdout
    # Then each row went out once, with the id recorded on its row
    rows = {r["id"]: r for r in failed_rows(db)}
    messages = queued(redis_url, queue)
    assert [m["id"] for m in messages] == [rows[i]["replay_task_id"] for i in (a1, a2, a3, b1)]
    assert [m["args"] for m in messages[1:]] == [[1, "x"]] * 3 and messages[3]["kwargs"] == {"n": 1}
    assert {rows[i]["status"] for i in (a1, a2, a3, b1)} == {"replayed"}
    # And a row already replayed is refused with the reason
    again = cli(sender, "failed", "replay", str(a1), "--yes")
    assert again.exit_code == 1 and "already replayed" in again.stderr
    assert len(queued(redis_url, queue)) == 4


def test_export_round_trips_and_purge(app: Celery, db: str, tmp_path: Path) -> None:
    # Given three failures, two of t.a
    a1, a2, b1 = seed(db, failed("t.a", args=[{"deep": [1, 2.5, None]}]), failed("t.a"), failed("t.b"))
    # When t.a is exported as JSON lines, to stdout and to a file
    out = cli(app, "failed", "export", "--task", "t.a")
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    target = tmp_path / "failed.jsonl"
    to_file = cli(app, "failed", "export", "--output", str(target))
    assert to_file.exit_code == 0 and "exported 3 failed task row(s)" in to_file.stderr
    # Then every line is one row, oldest first, with the stored values
    stored = {r["id"]: r for r in failed_rows(db)}
    assert [line["id"] for line in lines] == [a1, a2]
    for line in lines:
        row = stored[line["id"]]
        for key in ("task_id", "task_name", "args", "kwargs", "options", "traceback", "exc_type", "attempts"):
            assert line[key] == row[key], key
        assert datetime.fromisoformat(line["last_failed_at"]) == row["last_failed_at"].replace(tzinfo=timezone.utc)
    assert [json.loads(x)["id"] for x in target.read_text().splitlines()] == [a1, a2, b1]
    # When t.a is purged: a dry run first, then for real
    dry = cli(app, "failed", "purge", "--task", "t.a", "--dry-run")
    assert dry.exit_code == 0 and "would delete 2" in dry.stdout and len(failed_rows(db)) == 3
    done = cli(app, "failed", "purge", "--task", "t.a", "--json", input="y\n")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["deleted"] == 2 and "Delete 2 failed task row(s)" in done.stderr
    assert [r["id"] for r in failed_rows(db)] == [b1]


@ON_EVERY_DATABASE
def test_pending_list_resend_and_drop(sender: Celery, db: str, redis_url: str) -> None:
    queue = sender.conf.task_default_queue
    later = now() + timedelta(hours=1)
    # Given a row backing off, a dead one, a sent one and an expired one
    waiting, dead, sent, expired = seed(
        db, pending(next_attempt_at=later, attempts=3), pending("dead", attempts=20, args=[8]),
        pending("sent"), pending("expired"),
    )  # fmt: skip
    before = pending_rows(db)
    assert [r["id"] for r in json.loads(cli(sender, "pending", "list", "--status", "dead", "--json").stdout)] == [dead]
    listing = cli(sender, "pending", "list", "--status", "all").stdout.splitlines()
    assert listing[0].split()[:3] == ["id", "status", "task"] and len(listing) == 6
    assert [line.split()[0] for line in listing[1:-1]] == [str(expired), str(sent), str(dead), str(waiting)]
    # When a resend is refused, dry-run, or names an unknown id: nothing changes
    assert cli(sender, "pending", "resend", str(waiting), str(dead), input="n\n").exit_code == 1
    assert "would resend 2" in cli(sender, "pending", "resend", "--all", "--dry-run").stdout
    unknown = cli(sender, "pending", "resend", str(waiting), "999999", "--yes")
    assert unknown.exit_code == 1 and "no pending message with id 999999" in unknown.stderr
    assert (pending_rows(db), queued(redis_url, queue)) == (before, [])
    # When the waiting and the dead row are resent (and the sent one named too)
    done = cli(sender, "pending", "resend", str(waiting), str(dead), str(sent), "--yes", "--json")
    assert done.exit_code == 0, done.output
    assert (json.loads(done.stdout)["sent"], json.loads(done.stdout)["skipped"]) == (2, 1)
    # Then both are in Redis under their original task ids, and marked sent
    rows = {r["id"]: r for r in pending_rows(db)}
    messages = queued(redis_url, queue)
    assert [m["id"] for m in messages] == [rows[waiting]["task_id"], rows[dead]["task_id"]]
    assert [m["args"] for m in messages] == [[7], [8]]
    assert [rows[i]["status"] for i in (waiting, dead, sent, expired)] == ["sent", "sent", "sent", "expired"]
    # When the expired row is dropped (refused first)
    assert cli(sender, "pending", "drop", "--status", "expired", input="n\n").exit_code == 1
    assert len(pending_rows(db)) == 4
    dropped = cli(sender, "pending", "drop", "--status", "expired", "--yes")
    assert dropped.exit_code == 0 and "deleted 1 pending row(s)" in dropped.stdout
    assert [r["id"] for r in pending_rows(db)] == [waiting, dead, sent]
    # And a row of a task the app does not know cannot be resent: it stays invalid, with the reason
    [gone] = seed(db, pending("invalid", task="t.gone"))
    assert cli(sender, "pending", "resend", "--task", "t.gone", "--yes").exit_code == 2
    refused = cli(sender, "pending", "resend", str(gone), "--yes")
    assert refused.exit_code == 1 and re.search(r"^invalid\s+1$", refused.stdout, re.M), refused.output
    assert "not registered" in pending_rows(db)[-1]["last_error"] and len(queued(redis_url, queue)) == 2
    # And a row a running relay holds is left to it by resend and by drop
    [held] = seed(db, pending("claimed", claim_token="t" * 36, lease_expires_at=now() + timedelta(minutes=5)))
    left = cli(sender, "pending", "resend", str(held), "--yes")
    assert left.exit_code == 1 and "held by a running relay" in left.stdout
    kept = cli(sender, "pending", "drop", str(held), "--yes")
    assert kept.exit_code == 0 and "deleted 0 pending row(s); kept 1 held by a relay" in kept.stdout
    assert pending_rows(db)[-1]["status"] == "claimed" and len(queued(redis_url, queue)) == 2


def test_relay_command_sends_due_rows(sender: Celery, db: str, redis_url: str) -> None:
    # Given two due rows and one not due yet
    later = pending(next_attempt_at=now() + timedelta(hours=1))
    first, second, _later = seed(db, pending(age=5), pending(age=1), later)
    # When one relay pass runs by hand
    result = cli(sender, "relay", "--json")
    # Then it sent the due rows, with their ids
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert (stats["claimed"], stats["sent"], stats["broker_down"]) == (2, 2, False)
    rows = {r["id"]: r for r in pending_rows(db)}
    assert [m["id"] for m in queued(redis_url, sender.conf.task_default_queue)] == [
        rows[first]["task_id"],
        rows[second]["task_id"],
    ]
    table_out = cli(sender, "relay")
    assert table_out.exit_code == 0 and re.search(r"^sent\s+0$", table_out.stdout, re.M)


@pytest.mark.postgres
def test_no_output_shows_the_database_password(postgres_db: str) -> None:
    # Given a database URL with a password (the server trusts local connections and ignores it)
    secret = "S3cret-pw-9f"
    url = postgres_db.replace("postgres@", f"postgres:{secret}@", 1)
    upgrade(url)
    failure, row = seed(url, failed("t.a"), pending("dead"))
    app, down = make_app(url), make_app(url.replace(":5432/", ":1/"))
    try:
        # When every read command runs, and commands against a database that does not answer
        results = [
            cli(app, *args)
            for args in (
                ("status",),
                ("status", "--json"),
                ("failed", "list"),
                ("failed", "show", str(failure)),
                ("failed", "export"),
                ("failed", "replay", "--all", "--dry-run"),
                ("failed", "show", "999"),
                ("pending", "list", "--json"),
                ("pending", "show", str(row)),
                ("pending", "drop", "999", "--yes"),
            )
        ] + [cli(down, *args) for args in (("status",), ("failed", "list"), ("pending", "resend", "--all", "--yes"))]
    finally:
        dispose(app)
        dispose(down)
    # Then it never appears, and the masked URL does
    assert [r.exit_code for r in results] == [1, 1, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 1]
    assert all(secret not in r.output for r in results)
    assert "postgresql+psycopg://postgres:**@127.0.0.1:5432/" in results[0].stdout
    assert all("celery_reliable database postgresql+psycopg://postgres:**@" in r.stderr for r in results[-3:])


def test_commands_through_the_celery_entry_point(sender: Celery, db: str, redis_url: str, tmp_path: Path) -> None:
    queue = sender.conf.task_default_queue
    (tmp_path / "cliproj.py").write_text(
        "from celery import Celery\n"
        f"app = Celery('cliproj', broker={redis_url!r})\n"
        f"app.conf.update(reliable_database_url={db!r}, task_default_queue={queue!r})\n"
        "@app.task(name='t.a')\n"
        "def a(*args, **kwargs):\n"
        "    pass\n"
    )

    def celery(*args: str) -> subprocess.CompletedProcess[str]:
        return reliable_cli(tmp_path, "cliproj", *args)

    # Given a stored failure, a dead pending row and a due one
    failure, dead, due = seed(db, failed("t.a"), pending("dead", args=[1]), pending(args=[2]))
    # Then each command group works from the real command line
    status = celery("status")
    assert status.returncode == 1 and "NEEDS ATTENTION" in status.stdout, status.stderr
    replayed = celery("failed", "replay", str(failure), "--yes", "--json")
    assert replayed.returncode == 0, replayed.stderr
    resent = celery("pending", "resend", str(dead), "--yes")
    assert resent.returncode == 0, resent.stderr
    relayed = celery("relay", "--json")
    assert relayed.returncode == 0 and json.loads(relayed.stdout)["sent"] == 1, relayed.stderr
    listed = celery("failed", "list", "--json")
    assert [r["status"] for r in json.loads(listed.stdout)] == ["replayed"]
    # And the broker got the replay (new id) and both pending rows (original ids), once each
    rows = {r["id"]: r for r in pending_rows(db)}
    new_id = json.loads(replayed.stdout)[0]["task_id"]
    assert [m["id"] for m in queued(redis_url, queue)] == [new_id, rows[dead]["task_id"], rows[due]["task_id"]]
    assert celery("status").returncode == 0


@pytest.mark.rabbitmq
@pytest.mark.parametrize("sender", ["rabbitmq"], indirect=True)
def test_replay_and_resend_through_rabbitmq(sender: Celery, db: str, amqp_url: str) -> None:
    queue = sender.conf.task_default_queue
    # Given a stored failure, a replay that died after claiming its row, and a dead pending row
    failure, stuck, dead = seed(
        db, failed("t.a", args=[3]), failed("t.b", status="replaying", replay_task_id="resumed-1"),
        pending("dead", attempts=20, args=[9]),
    )  # fmt: skip
    # When each is sent again (the stuck replay resumed under the id it had claimed)
    replayed = cli(sender, "failed", "replay", str(failure), "--yes", "--json")
    assert replayed.exit_code == 0, replayed.output
    without_resume = cli(sender, "failed", "replay", str(stuck), "--yes")
    assert without_resume.exit_code == 1 and "resume" in without_resume.stderr
    assert cli(sender, "failed", "replay", str(stuck), "--resume", "--yes").exit_code == 0
    resent = cli(sender, "pending", "resend", str(dead), "--yes", "--json")
    assert resent.exit_code == 0 and json.loads(resent.stdout)["sent"] == 1, resent.output
    # Then RabbitMQ holds the three messages, with the ids their rows name
    rows = {r["id"]: r for r in failed_rows(db)}
    messages = queued(amqp_url, queue)
    assert [m["id"] for m in messages] == [
        json.loads(replayed.stdout)[0]["task_id"], "resumed-1", pending_rows(db)[0]["task_id"],
    ]  # fmt: skip
    assert [m["args"] for m in messages] == [[3], [1, "x"], [9]]
    assert (rows[failure]["status"], rows[stuck]["status"], pending_rows(db)[0]["status"]) == (
        "replayed", "replayed", "sent",
    )  # fmt: skip


# -- pure option parsing ---------------------------------------------------------------------------


def test_time_window_values() -> None:
    assert parse_when("2026-01-31T12:00", "--since") == datetime(2026, 1, 31, 12, tzinfo=timezone.utc)
    assert parse_when("2026-01-31T14:00+02:00", "--since") == datetime(2026, 1, 31, 12, tzinfo=timezone.utc)
    ago = parse_when("90m", "--since")
    assert ago is not None and abs((datetime.now(timezone.utc) - ago).total_seconds() - 5400) < 5
    with pytest.raises(click.BadParameter, match="neither an ISO date/time"):
        parse_when("3 days", "--since")


def test_json_values_and_pacing() -> None:
    assert json_value('[1, {"a": null}]', "--args", list) == [1, {"a": None}]
    with pytest.raises(click.BadParameter, match="must be a JSON object"):
        json_value("[]", "--kwargs", dict)
    started = time.monotonic()
    assert list(paced(range(3), 20.0)) == [0, 1, 2]
    assert 0.09 <= time.monotonic() - started < 1.0
