"""``send_many()`` and the staged rows of the outbox, on every database with a real Redis.

Rows wait in memory until their transaction needs them, then go in with one statement: these
tests check that this keeps every guarantee of ``send()``: the rows commit with the caller's
data, a rollback (of the transaction, or of a savepoint) drops them and their sends, bad input
in one message stages nothing, and each committed message is published once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery, signature
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from celery_reliable import BadMessageError, outbox, publish_staged
from celery_reliable.store.models import PendingMessage
from tests.apps.effects import Attempt
from tests.integration import test_publish
from tests.integration.test_publish import AppFactory, migrated, pending_rows, queued_ids

pytestmark = [pytest.mark.integration, pytest.mark.redis]

apps = test_publish.apps  # the fixture: producer apps, closed afterwards
queue = test_publish.queue  # the fixture: a per-test queue name, deleted afterwards


@pytest.fixture
def db(any_db_url: str) -> str:
    return migrated(any_db_url)


@pytest.fixture
def user_engine(db: str) -> Iterator[Engine]:
    """The application's own engine, with its own table next to the pending table."""
    engine = create_engine(db)
    Attempt.__table__.create(engine, checkfirst=True)
    yield engine
    engine.dispose()


@pytest.fixture
def app(apps: AppFactory, redis_url: str, db: str, queue: str) -> Celery:
    # a long grace: what reaches Redis here was sent by the post-commit send, not by a relay
    return apps(redis_url, db, queue, tasks=("t.ok",), reliable_outbox_grace=300.0)


def _keys(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return set(session.scalars(select(Attempt.key)))


def test_send_many_commits_with_the_callers_data_and_sends_each_once(
    app: Celery, user_engine: Engine, db: str, redis_url: str, queue: str
) -> None:
    # Given a business write, send() and send_many() (tuples and a signature) in one transaction
    with Session(user_engine) as session:
        session.add(Attempt(key="order-1", count=1))
        box = outbox(session, app)
        first = box.send("t.ok", ["one"])
        many = box.send_many(
            [
                ("t.ok", ["two"]),
                ("t.ok", ["three"], {"note": "x"}),
                ("t.ok", [], {}, {"headers": {"x-note": "4"}}),
                signature("t.ok", args=("five",), app=app),
            ]
        )
        # the rows are in the transaction: a query through the session sees them
        assert session.scalar(select(func.count()).select_from(PendingMessage)) == 5
        assert pending_rows(db) == []  # and nobody else does before the commit
        session.commit()
    # Then the ids come back in order, each row commits with the business write
    expected = [first, *many]
    assert len(set(expected)) == 5
    rows = pending_rows(db)
    assert [r.task_id for r in rows] == expected
    assert [r.args for r in rows] == [["one"], ["two"], ["three"], [], ["five"]]
    assert {(r.status, r.source) for r in rows} == {("sent", "outbox")}
    assert sorted(box.row_ids) == [r.id for r in rows]
    assert _keys(user_engine) == {"order-1"}
    # and the post-commit send published each message once
    assert sorted(queued_ids(redis_url, queue)) == sorted(expected)


def test_rollback_and_rolled_back_savepoints_send_nothing(
    app: Celery, user_engine: Engine, db: str, redis_url: str, queue: str
) -> None:
    # A rollback: no row, no message
    with Session(user_engine) as session:
        session.add(Attempt(key="rolled-back", count=1))
        outbox(session, app).send_many([("t.ok", ["rolled-back"])] * 3)
        session.rollback()
    # Savepoints: what a rolled-back savepoint staged goes, inserted yet or not; a released one stays
    with Session(user_engine) as session:
        box = outbox(session, app)
        kept = box.send_many([("t.ok", ["before"]), ("t.ok", ["before-2"])])
        with pytest.raises(RuntimeError), session.begin_nested():
            box.send_many([("t.ok", ["in-savepoint"])])
            session.flush()  # inserted inside the savepoint
            box.send("t.ok", ["in-savepoint-held"])  # still held
            raise RuntimeError("rolls the savepoint back")
        with session.begin_nested():
            kept += box.send_many([("t.ok", ["released"])])
            with pytest.raises(RuntimeError), session.begin_nested():
                box.send("t.ok", ["inner"])
                raise RuntimeError("rolls the inner savepoint back")
        kept.append(box.send("t.ok", ["after"]))
        session.commit()
    assert [r.task_id for r in pending_rows(db)] == kept
    assert {r.status for r in pending_rows(db)} == {"sent"}
    assert sorted(box.row_ids) == [r.id for r in pending_rows(db)]
    assert sorted(queued_ids(redis_url, queue)) == sorted(kept)
    assert _keys(user_engine) == set()


def test_bad_input_in_one_message_stages_nothing(
    app: Celery, user_engine: Engine, db: str, redis_url: str, queue: str
) -> None:
    with Session(user_engine) as session:
        box = outbox(session, app)
        with pytest.raises(BadMessageError, match="cannot be stored as JSON"):
            box.send_many([("t.ok", ["fine"]), ("t.ok", [object()])])
        with pytest.raises(BadMessageError, match="not registered"):
            box.send_many([("t.ok", ["fine"]), ("t.unknown", [])])
        with pytest.raises(BadMessageError, match="tuple"):
            box.send_many([("t.ok", ["fine"]), "t.ok"])
        assert box.send_many([]) == []
        session.add(Attempt(key="committed", count=1))
        session.commit()
    assert pending_rows(db) == []
    assert queued_ids(redis_url, queue) == []
    assert _keys(user_engine) == {"committed"}


def test_connection_rows_commit_with_it_and_are_sent_after(
    app: Celery, user_engine: Engine, db: str, redis_url: str, queue: str
) -> None:
    # Given a Connection's transaction with a rolled-back savepoint
    with user_engine.begin() as conn:
        box = outbox(conn, app)
        task_ids = box.send_many([("t.ok", [i]) for i in range(4)])
        savepoint = conn.begin_nested()
        box.send_many([("t.ok", ["dropped"])])
        savepoint.rollback()
        task_ids.append(box.send("t.ok", ["last"]))
    # Then the rows committed, their ids are on the outbox, and publish_staged sends each once
    rows = pending_rows(db)
    assert [r.task_id for r in rows] == task_ids
    assert box.row_ids == [r.id for r in rows]
    assert publish_staged(app, box.row_ids) == 5
    assert publish_staged(app, box.row_ids) == 0
    assert sorted(queued_ids(redis_url, queue)) == sorted(task_ids)
    # and a rollback leaves nothing
    with user_engine.connect() as conn:
        outbox(conn, app).send_many([("t.ok", ["rolled-back"])])
        conn.rollback()
    assert len(pending_rows(db)) == 5
