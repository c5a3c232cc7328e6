"""docs/partitioning.md, run as written: the pending table partitioned by day keeps every guarantee.

The SQL blocks of the page (marked ``<!-- partition-sql: NAME -->``) are applied to a freshly
migrated PostgreSQL database; rows are then written through the library's own paths (the outbox,
publish() with a dead broker, the pending insert), sent by the relay to a real Redis, retired a
day at a time, purged, and migrated again. Every count is exact.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
import redis
from celery import Celery
from sqlalchemy import create_engine, update
from sqlalchemy.orm import Session

from celery_reliable import outbox, publish, relay_once, upgrade
from celery_reliable.message.prepare import prepare
from celery_reliable.ops.doctor import Status, run_checks
from celery_reliable.send.publisher import reset_publisher
from celery_reliable.store.engine import dispose
from celery_reliable.store.ledger import mark_done
from celery_reliable.store.migrate import HEAD_REVISION, current_revision, downgrade, head_revision, stored_revision
from celery_reliable.store.models import PendingMessage, utcnow
from celery_reliable.store.pending import insert_rows, purge_sent
from tests.conftest import REDIS_URL, key_prefix
from tests.harness import ROOT
from tests.integration.test_publish import dead_broker, pending_rows

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

TABLE = "celery_reliable_pending_message"
QUEUE = "part"
#: The partition named in the page's examples of the check and the retire statements.
EXAMPLE = f"{TABLE}_p20261201"


def recipe() -> dict[str, str]:
    """The page's SQL blocks by marker name."""
    page = (ROOT / "docs" / "partitioning.md").read_text()
    blocks = dict(re.findall(r"<!-- partition-sql: ([\w-]+) -->\n```sql\n(.*?)```", page, re.S))
    assert sorted(blocks) == ["check", "convert", "daily", "functions", "repair-default", "retire"]
    return blocks


def partition(day: date) -> str:
    return f"{TABLE}_p{day:%Y%m%d}"


def at_noon(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc)


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from key_prefix(REDIS_URL, "rt-part")


class Env:
    """The database, the Redis key prefix and the apps of one test (closed at the end)."""

    def __init__(self, db: str, prefix: str) -> None:
        self.db = db
        self.prefix = prefix
        self.made: list[Celery] = []
        self.psql = psycopg.connect(db.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)

    def app(self, broker: str = REDIS_URL, **conf: Any) -> Celery:
        app = Celery(f"part-{uuid.uuid4().hex[:6]}", broker=broker, set_as_current=False)
        app.conf.update(
            broker_transport_options={"global_keyprefix": self.prefix},
            reliable_database_url=self.db,
            task_default_queue=QUEUE,
            broker_connection_retry_on_startup=True,
            reliable_publish_retries=0,
            reliable_publish_timeout=3.0,
            reliable_outbox_grace=0.0,
            **conf,
        )

        def ok(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("runs in a worker only")

        app.task(name="t.ok", shared=False)(ok)
        self.made.append(app)
        return app

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        """Run one statement or a script (no parameters: PostgreSQL's simple protocol)."""
        with self.psql.cursor() as cur:
            cur.execute(statement.encode())
            rows: list[tuple[Any, ...]] = []
            while True:  # a script: the rows of its last statement that returned any
                if cur.description is not None:
                    rows = list(cur.fetchall())
                if not cur.nextset():
                    return rows

    def partitions(self) -> set[str]:
        query = f"SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = '{TABLE}'::regclass"
        return {str(name) for (name,) in self.sql(query)}

    def per_partition(self) -> dict[str, int]:
        rows = self.sql(f"SELECT tableoid::regclass::text, count(*) FROM {TABLE} GROUP BY 1")
        return {str(name): int(n) for name, n in rows}

    def queued_ids(self) -> list[str]:
        """Task ids of the messages in the queue, newest first (read with LRANGE: none consumed)."""
        client = redis.Redis.from_url(REDIS_URL)
        try:
            raw = client.lrange(f"{self.prefix}{QUEUE}", 0, -1)
        finally:
            client.close()
        return [json.loads(item)["headers"]["id"] for item in raw]

    def close(self) -> None:
        for app in self.made:
            reset_publisher(app)
            dispose(app)
            app.close()
        self.psql.close()


@pytest.fixture
def env(postgres_db: str, prefix: str) -> Iterator[Env]:
    made = Env(postgres_db, prefix)
    try:
        yield made
    finally:
        made.close()


def index_definitions(env: Env) -> dict[str, str]:
    rows = env.sql(f"SELECT indexname, indexdef FROM pg_indexes WHERE tablename = '{TABLE}'")
    return {str(name): str(sql).replace(" ONLY ", " ") for name, sql in rows}


def set_created(env: Env, ids: list[int], when: datetime) -> None:
    """Move rows to another day (PostgreSQL moves a row between partitions on UPDATE)."""
    engine = create_engine(env.db)
    try:
        with engine.begin() as conn:
            conn.execute(update(PendingMessage).where(PendingMessage.id.in_(ids)).values(created_at=when))
    finally:
        engine.dispose()


def insert_dated(env: Env, app: Celery, label: str, count: int, when: datetime, **values: Any) -> list[str]:
    """``count`` due rows dated ``when``, through the library's own insert; their task ids."""
    prepared = [prepare(app, "t.ok", [f"{label}-{i}"]) for i in range(count)]
    engine = create_engine(env.db)
    try:
        with engine.begin() as conn:
            rows = [{**v.row("publish_fallback", utcnow()), "created_at": when, **values} for v in prepared]
            insert_rows(conn, rows)
    finally:
        engine.dispose()
    return [v.task_id for v in prepared]


def test_the_documented_partitioning_keeps_every_message(env: Env) -> None:
    blocks = recipe()
    today = utcnow().date()
    yesterday, tomorrow = today - timedelta(days=1), today + timedelta(days=1)
    # days that are over for sure (the retire function refuses a day that ended less than an hour ago):
    # one retired, one held back by open and tracked rows, one by an open row only
    day_done, day_held, day_open = (today - timedelta(days=n) for n in (2, 3, 4))
    upgrade(env.db)
    producer = env.app()
    down = env.app(dead_broker(REDIS_URL))

    # Given rows written before the conversion (one of them sent already)
    before = [publish(down, "t.ok", [f"before-{i}"]) for i in range(5)]
    assert [r.sent for r in before] == [False] * 5
    relay_once(env.app(), max_batches=1, batch_size=1)
    assert sorted(Counter(r.status for r in pending_rows(env.db)).items()) == [("pending", 4), ("sent", 1)]
    indexes = index_definitions(env)

    # When the page's functions and conversion run
    env.sql(blocks["functions"])
    env.sql(blocks["convert"])

    # Then the table is partitioned by day, with the same columns, indexes and sequence
    assert env.sql(f"SELECT relkind FROM pg_class WHERE relname = '{TABLE}'") == [("p",)]
    daily = {partition(today + timedelta(days=n)) for n in range(-7, 8)}
    assert env.partitions() == daily | {f"{TABLE}_default", f"{TABLE}_history"}
    after = index_definitions(env)
    pk = f"pk_{TABLE}"
    new_pk = f"CREATE UNIQUE INDEX {pk} ON public.{TABLE} USING btree (id, created_at)"
    assert after.pop(pk) == new_pk
    assert indexes.pop(pk) == f"CREATE UNIQUE INDEX {pk} ON public.{TABLE} USING btree (id)"
    assert after == indexes
    assert env.per_partition() == {partition(today): 5}
    assert env.sql(f"SELECT pg_get_serial_sequence('{TABLE}', 'id')") == [(f"public.{TABLE}_id_seq",)]
    assert env.sql(blocks["daily"]) == [(0,)]  # today to a week ahead exist already
    # the schema checks still pass: the worker's start-up check and the doctor's
    assert stored_revision(env.db) == HEAD_REVISION
    schema = [r for r in run_checks(producer).results if r.check.startswith("db.")]
    assert [(r.check, r.status) for r in schema] == [("db.schema", Status.PASS)]

    # Given rows written through every path: publish() with a dead broker, the outbox staged on a
    # Connection (left to the relay) and on a Session (sent at its commit), and the pending insert
    published = [publish(down, "t.ok", [f"published-{i}"]) for i in range(30)]
    assert [r.sent for r in published] == [False] * 30
    engine = create_engine(env.db)
    try:
        with engine.begin() as conn:
            staged = outbox(conn, producer).send_many([("t.ok", [f"staged-{i}"]) for i in range(30)])
        with Session(engine) as session:
            box = outbox(session, producer)
            fast = [box.send("t.ok", [f"fast-{i}"]) for i in range(10)]
            session.commit()
    finally:
        engine.dispose()
    queued = env.queued_ids()  # sent at the commit, by the post-commit claim
    assert len(queued) == 11 and set(queued) == set(fast) | {before[0].task_id}
    dated = insert_dated(env, producer, "dated", 20, at_noon(day_done))
    old = insert_dated(env, producer, "old", 3, at_noon(today - timedelta(days=30)))
    # and moved between days (UPDATE moves rows between partitions)
    set_created(env, [r.pending_id for r in published[:10]], at_noon(day_done))
    set_created(env, [r.pending_id for r in published[10:20]], at_noon(day_held))
    by_task = {r.task_id: r.id for r in pending_rows(env.db)}
    set_created(env, [by_task[t] for t in staged[:10]], at_noon(day_held))
    assert env.per_partition() == {
        partition(today): 5 + 10 + 20 + 10,
        partition(day_done): 10 + 20,
        partition(day_held): 10 + 10,
        f"{TABLE}_history": 3,
    }
    new_ids = [by_task[t] for t in [r.task_id for r in published] + staged + fast + dated + old]
    assert min(new_ids) > max(r.pending_id for r in before)  # the sequence went on above the copied ids
    assert len(set(by_task.values())) == len(by_task) == 5 + 30 + 30 + 10 + 20 + 3

    # When the relay runs
    stats = relay_once(env.app())
    # Then every row went to Redis once, and every row is sent
    assert (stats.claimed, stats.sent, stats.failed, stats.invalid) == (4 + 30 + 30 + 20 + 3, 87, 0, 0)
    queued = env.queued_ids()
    assert len(queued) == len(set(queued)) == 1 + 10 + 87
    assert set(queued) == set(by_task)
    rows = pending_rows(env.db)
    assert Counter(r.status for r in rows) == {"sent": 98}

    # Given a second batch of 2,000 rows over four days, two relays at once
    second = (
        insert_dated(env, producer, "second-today", 400, utcnow())
        + insert_dated(env, producer, "second-yesterday", 400, at_noon(yesterday))
        + insert_dated(env, producer, "second-done", 700, at_noon(day_done))
        + insert_dated(env, producer, "second-tomorrow", 500, at_noon(tomorrow))
    )
    relays = [env.app(reliable_relay_batch_size=50), env.app(reliable_relay_batch_size=50)]
    gate = threading.Barrier(2)
    totals: list[Any] = [None, None]

    def run(n: int) -> None:
        gate.wait(timeout=30)
        totals[n] = relay_once(relays[n], time_limit=120)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not any(thread.is_alive() for thread in threads)
    # Then no message was sent twice
    assert sum(t.claimed for t in totals) == sum(t.sent for t in totals) == 2000, totals
    assert all(t.claimed > 0 for t in totals), totals  # both took part
    queued = env.queued_ids()
    assert len(queued) == len(set(queued)) == 98 + 2000
    assert set(queued) == set(by_task) | set(second)
    assert Counter(r.status for r in pending_rows(env.db)) == {"sent": 2098}

    # Given the tasks' outcomes recorded (the worker's path) for all rows of day_done and some of day_held
    rows = pending_rows(env.db)
    day_of = {r.task_id: r.created_at.date() for r in rows}
    tracked = Counter((day_of[r.task_id], r.tracked) for r in rows)
    # (messages from publish() and the outbox carry the ledger header: tracked; the plain inserts do not)
    assert tracked == {
        (today - timedelta(days=30), False): 3,
        (day_held, True): 10 + 10,
        (day_done, True): 10,
        (day_done, False): 20 + 700,
        (today, True): 5 + 10 + 20 + 10,
        (today, False): 400,
        (yesterday, False): 400,
        (tomorrow, False): 500,
    }
    assert mark_done(producer, [t for t, d in day_of.items() if d == day_done]) == 30 + 700
    assert mark_done(producer, [t for t, d in day_of.items() if d == day_held][:15]) == 15
    # and an open row two days ago and three days ago (a backlog not due yet)
    later = utcnow() + timedelta(hours=1)
    insert_dated(env, producer, "open", 1, at_noon(day_held), next_attempt_at=later)
    insert_dated(env, producer, "open", 1, at_noon(day_open), next_attempt_at=later)

    # Then the check query finds nothing in day_done's partition and the open rows elsewhere
    def check(day: date) -> list[tuple[Any, ...]]:
        return sorted(env.sql(blocks["check"].replace(EXAMPLE, partition(day))))

    assert check(day_done) == []
    assert check(day_held) == [("pending", False, 1), ("sent", True, 5)]
    assert check(day_open) == [("pending", False, 1)]

    # and the retire statement drops day_done's partition, and refuses the others
    def retire(name: str) -> list[tuple[Any, ...]]:
        return env.sql(blocks["retire"].replace(EXAMPLE, name))

    with pytest.raises(psycopg.Error, match=r"holds 6 row\(s\) the cleanup would keep"):
        retire(partition(day_held))
    with pytest.raises(psycopg.Error, match="holds 1 row"):
        retire(partition(day_open))
    with pytest.raises(psycopg.Error, match="may still receive rows"):
        retire(partition(today))
    with pytest.raises(psycopg.Error, match="may still receive rows"):
        retire(f"{TABLE}_default")
    assert retire(partition(day_done)) == [(30 + 700,)]
    assert partition(day_done) not in env.per_partition()
    assert env.sql(f"SELECT to_regclass('{partition(day_done)}')") == [(None,)]
    with pytest.raises(psycopg.Error, match="when a default partition exists"):  # why the page detaches plainly
        env.sql(f"ALTER TABLE {TABLE} DETACH PARTITION {partition(day_open)} CONCURRENTLY")

    # When the cleanup deletes finished rows: done ones, and sent ones the ledger does not track
    assert purge_sent(producer, 0.0, batch=100) == 3 + 400 + 400 + 500 + 15  # untracked sent + done
    remaining = Counter((r.created_at.date(), r.status, r.tracked) for r in pending_rows(env.db))
    assert remaining == {
        (day_held, "sent", True): 5,
        (day_held, "pending", False): 1,
        (day_open, "pending", False): 1,
        (today, "sent", True): 45,
    }

    # When a later migration alters the table (0005 down and up again: columns and an index)
    downgrade(env.db, "0004")
    assert env.sql(f"SELECT count(*) FROM information_schema.columns WHERE table_name = '{partition(today)}' "
                   "AND column_name IN ('tracked', 'done_at')") == [(0,)]  # fmt: skip
    upgrade(env.db)
    # Then every partition has the columns and the index again, and the library writes and sends
    for name in sorted(env.partitions()):
        columns = env.sql(f"SELECT count(*) FROM information_schema.columns WHERE table_name = '{name}' "
                          "AND column_name IN ('tracked', 'done_at')")  # fmt: skip
        assert columns == [(2,)], name
        sent_at = env.sql(f"SELECT indexdef FROM pg_indexes WHERE tablename = '{name}' AND indexdef LIKE '%(sent_at)%'")
        assert [d.split(" WHERE ")[1] for (d,) in sent_at] == [after[f"ix_{TABLE}_sent_at"].split(" WHERE ")[1]]
    assert index_definitions(env) == after | {pk: new_pk}
    assert current_revision(env.db) == head_revision() == HEAD_REVISION  # what `db current` compares
    last = publish(down, "t.ok", ["after-migration"])
    assert relay_once(env.app()).sent == 1
    assert env.queued_ids()[0] == last.task_id

    # Given a row whose day has no partition: it lands in the DEFAULT partition, and the repair moves it
    far = today + timedelta(days=20)
    insert_dated(env, producer, "far", 1, at_noon(far), next_attempt_at=later)
    assert env.per_partition()[f"{TABLE}_default"] == 1
    env.sql(blocks["repair-default"])
    counts = env.per_partition()
    assert f"{TABLE}_default" not in counts and counts[partition(far)] == 1
    assert env.sql(f"SELECT count(*) FROM {TABLE}_default") == [(0,)]
