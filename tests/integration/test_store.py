"""The store on SQLite, PostgreSQL and MariaDB: migrations, failed rows, processed ids, replay claims."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from celery import Celery
from sqlalchemy import create_engine, inspect
from sqlalchemy.orm import Session

from celery_reliable import FailureFilter, StoreError, upgrade
from celery_reliable.store.engine import dispose, get_engine
from celery_reliable.store.failures import (
    FailureRecord,
    claim_for_replay,
    count_failures,
    finish_replay,
    get_failure,
    get_failure_by_task_id,
    list_failures,
    purge_failures,
    record_failure,
)
from celery_reliable.store.migrate import (
    HEAD_REVISION,
    VERSION_TABLE,
    current_revision,
    downgrade,
    head_revision,
    stored_revision,
)
from celery_reliable.store.models import Base
from celery_reliable.store.processed import (
    is_processed,
    mark_processed,
    mark_processed_in,
    mark_processed_many,
    purge_processed,
)
from tests.conftest import store_app

pytestmark = pytest.mark.integration


@pytest.fixture
def app(any_db_url: str) -> Iterator[Celery]:
    yield from store_app(any_db_url)


def _record(task_id: str, **kw: object) -> FailureRecord:
    values: dict = {
        "task_id": task_id,
        "task_name": "t.x",
        "reason": "exception",
        "args": [1, "two", {"when": datetime(2026, 1, 2, tzinfo=timezone.utc)}],
        "kwargs": {"k": [1, 2]},
        "options": {"routing_key": "q"},
        "exc_type": "ValueError",
        "exc_message": "boom",
        "traceback": "Traceback...",
        "attempts": 3,
        "hostname": "w@h",
    }
    values.update(kw)
    return FailureRecord(**values)


def test_migrations_give_exactly_the_models(any_db_url: str) -> None:
    engine = create_engine(any_db_url)
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
            diff = [d for d in compare_metadata(context, Base.metadata) if VERSION_TABLE not in repr(d)]
        assert diff == []
        names = set(inspect(engine).get_table_names())
        assert {"celery_reliable_failed_task", "celery_reliable_processed_task", VERSION_TABLE} <= names
        downgrade(engine, "base")
        assert not {"celery_reliable_failed_task", "celery_reliable_processed_task"} & set(
            inspect(engine).get_table_names()
        )
        upgrade(engine)  # and back up again
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_the_worker_check_reads_the_revision_alembic_reads(any_db_url: str) -> None:
    # The worker's start-up check reads the version table without Alembic: the same answers
    engine = create_engine(any_db_url)
    try:
        assert HEAD_REVISION == head_revision()
        downgrade(engine, "base")
        assert stored_revision(engine) == current_revision(engine)
        upgrade(engine, "0001")
        assert stored_revision(engine) == current_revision(engine) == "0001"
        upgrade(engine)
        assert stored_revision(engine) == current_revision(engine) == HEAD_REVISION
    finally:
        engine.dispose()


def test_record_is_idempotent_on_task_id(app: Celery) -> None:
    first = record_failure(app, _record("a", attempts=2))
    second = record_failure(app, _record("a", attempts=4, exc_message="boom again"))
    assert first == second
    row = get_failure(app, first)
    assert row is not None
    assert (row.attempts, row.exc_message, row.status) == (4, "boom again", "failed")
    assert row.args[2] == {"when": {"__type__": "datetime", "__value__": "2026-01-02T00:00:00+00:00"}}
    assert row.first_failed_at.tzinfo is not None
    assert count_failures(app) == 1


def test_unserializable_arguments_are_kept_as_repr(app: Celery) -> None:
    row_id = record_failure(app, _record("b", args=[object()]))
    row = get_failure(app, row_id)
    assert row is not None and "__unserializable_repr__" in row.args


def test_filters_and_purge(app: Celery) -> None:
    for i in range(5):
        record_failure(app, _record(f"f{i}", task_name="t.a" if i % 2 else "t.b", exc_type=f"E{i % 2}"))
    assert count_failures(app, FailureFilter(task_name="t.a")) == 2
    assert count_failures(app, FailureFilter(exc_type="E0")) == 3
    assert count_failures(app, FailureFilter(since=datetime.now(timezone.utc) + timedelta(hours=1))) == 0
    assert [r.task_id for r in list_failures(app, limit=2)] == ["f4", "f3"]
    assert purge_failures(app, FailureFilter(task_name="t.b")) == 3
    assert count_failures(app) == 2
    assert get_failure_by_task_id(app, "f1") is not None


def test_only_one_concurrent_replay_claims_a_row(app: Celery) -> None:
    row_id = record_failure(app, _record("c"))
    winners: list[bool] = []
    barrier = threading.Barrier(8)

    def claim(n: int) -> None:
        barrier.wait(timeout=10)
        winners.append(claim_for_replay(app, row_id, f"new-{n}"))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(winners) == [False] * 7 + [True]
    finish_replay(app, row_id, sent=True)
    row = get_failure(app, row_id)
    assert row is not None and (row.status, row.replay_count) == ("replayed", 1)
    assert not claim_for_replay(app, row_id, "again")


def test_processed_ids(app: Celery) -> None:
    assert not is_processed(app, "p1")
    assert mark_processed(app, "p1", "t.x") is True
    assert mark_processed(app, "p1", "t.x") is False
    assert is_processed(app, "p1")
    with Session(get_engine(app)) as session, session.begin():
        mark_processed_in(session, "p2", "t.x")
    assert is_processed(app, "p2")
    assert purge_processed(app, older_than=3600) == 0
    assert purge_processed(app, older_than=0) == 2
    assert not is_processed(app, "p1")


def test_processed_ids_in_one_statement(app: Celery) -> None:
    # Given one id already recorded
    assert mark_processed(app, "m0", "t.x")
    now = datetime.now(timezone.utc)
    # When many are recorded at once, that one among them, with odd ids and a long name
    odd = ["m1", "m,2", 'm"3', "m'4", "{m5}"]
    mark_processed_many(app, [(task_id, "t." + "y" * 300, now) for task_id in ["m0", *odd]])
    # Then all are recorded, the known one left as it was
    assert all(is_processed(app, task_id) for task_id in ["m0", *odd])
    assert not is_processed(app, "m6")
    mark_processed_many(app, [])
    assert purge_processed(app, older_than=0) == 6


def test_processed_lookup_from_more_threads_than_held_connections(app: Celery) -> None:
    from celery_reliable.store.engine import MAX_HELD, _handle

    # Given one recorded id, When more threads than a process holds connections for look up at once
    assert mark_processed(app, "t1", "t.x")
    answers: list[tuple[bool, bool]] = []
    barrier = threading.Barrier(MAX_HELD + 4)

    def lookup() -> None:
        barrier.wait(timeout=30)
        answers.append((is_processed(app, "t1"), is_processed(app, "t2")))

    threads = [threading.Thread(target=lookup) for _ in range(MAX_HELD + 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # Then every answer is right and the process holds no more than MAX_HELD connections
    assert answers == [(True, False)] * (MAX_HELD + 4)
    assert len(_handle(app).holding) <= MAX_HELD


def test_unmigrated_database_is_a_clear_store_error(any_db_url: str) -> None:
    app = Celery("store", broker="memory://", set_as_current=False)
    app.conf.reliable_database_url = any_db_url
    try:
        with pytest.raises(StoreError, match="reliable db upgrade"):
            record_failure(app, _record("z"))
    finally:
        dispose(app)


@pytest.mark.postgres
def test_processed_lookup_survives_a_dropped_connection(postgres_db: str) -> None:
    # Given a pooled autocommit connection and a held one, that the server then terminates
    app = Celery("store", broker="memory://", set_as_current=False)
    app.conf.reliable_database_url = postgres_db
    upgrade(app)
    try:
        assert mark_processed(app, "d1", "t.x")
        assert not is_processed(app, "d0")  # the lookup's held connection is open, its statement prepared
        admin = create_engine(postgres_db, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            dbname = postgres_db.rsplit("/", 1)[1]
            killed = conn.exec_driver_sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %(db)s AND pid <> pg_backend_pid()",
                {"db": dbname},
            ).scalar_one()
        admin.dispose()
        assert killed >= 1
        # When the next lookup runs, Then it reconnects once and answers
        assert is_processed(app, "d1")
        assert mark_processed(app, "d2", "t.x")
    finally:
        dispose(app)


def test_an_outcome_marks_sent_and_reopened_rows_done_but_not_a_later_unsent_message(app: Celery) -> None:
    """A client's retry kept as a pending row after the task completed is another message: the
    outcome (written late by the worker) must not swallow it; a sent or reopened row is done."""
    from sqlalchemy import update

    from celery_reliable.store.engine import get_sessionmaker
    from celery_reliable.store.ledger import mark_done
    from celery_reliable.store.models import PendingMessage, PendingStatus
    from celery_reliable.store.pending import PendingValues, add_pending

    def values(task_id: str) -> PendingValues:
        return PendingValues(task_id, "t.x", [1], {}, {"routing_key": "q"}, None, None)

    sent, reopened, retry = add_pending(app, [values("a"), values("b"), values("a")], source="outbox")
    with get_sessionmaker(app).begin() as session:
        session.execute(update(PendingMessage).where(PendingMessage.id == sent).values(status="sent", tracked=True))
        session.execute(update(PendingMessage).where(PendingMessage.id == reopened).values(tracked=True))
    assert mark_done(app, ["a", "b"]) == 2
    with get_sessionmaker(app)() as session:
        status = {row.id: row.status for row in session.query(PendingMessage)}
    assert status == {sent: PendingStatus.DONE, reopened: PendingStatus.DONE, retry: PendingStatus.PENDING}


_FORK_SCRIPT = r"""
import os, sqlite3, sys, threading, time
from sqlalchemy import text
from celery_reliable.store.engine import make_engine

path, guarded = sys.argv[1], sys.argv[2] == "library"
holding = threading.Event()

def hold():
    if guarded:  # a write transaction on the library's engine, in a thread of the parent
        with make_engine(f"sqlite:///{path}").begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
            holding.set()
            time.sleep(1.0)
    else:  # the same on a plain sqlite3 connection
        conn = sqlite3.connect(path, timeout=30)
        conn.execute("INSERT INTO t VALUES (1)")
        holding.set()
        time.sleep(1.0)
        conn.commit()
        conn.close()

thread = threading.Thread(target=hold)
thread.start()
holding.wait(10)
pid = os.fork()  # as a prefork worker replaces a pool process while a thread of it writes
if pid == 0:
    started = time.monotonic()
    try:
        conn = sqlite3.connect(path, timeout=2)
        conn.execute("INSERT INTO t VALUES (2)")
        conn.commit()
        print("wrote", flush=True)
        os._exit(0)
    except sqlite3.OperationalError as exc:
        print(f"refused after {time.monotonic() - started:.1f} s: {exc}", flush=True)
        os._exit(1)
thread.join()
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_process_forked_while_a_thread_writes_to_sqlite_can_write(tmp_path: Path) -> None:
    """A child forked while the parent holds a SQLite write lock inherits the parent's lock
    bookkeeping and is refused every write; the library's engines make the fork wait for it."""
    import sqlite3
    import subprocess
    import sys

    path = tmp_path / "fork.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.commit()
    conn.close()

    def run(kind: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _FORK_SCRIPT, str(path), kind], capture_output=True, text=True, timeout=60
        )

    plain = run("plain")  # the hazard itself, without the library
    assert plain.returncode == 1 and "database is locked" in plain.stdout, (plain.stdout, plain.stderr)
    guarded = run("library")
    assert (guarded.returncode, guarded.stdout.strip()) == (0, "wrote"), guarded.stderr
