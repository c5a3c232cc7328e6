"""The transactional outbox: ``outbox(session).send()`` in the caller's own transaction.

A commit sends at once from the same process (the post-commit fast path: the row is 'sent'
when commit() returns, no relay involved); a rollback sends nothing and leaves no row; a
producer killed between its commit and the send leaves a committed row that the relay sends
after ``reliable_outbox_grace``, exactly once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from celery_reliable import PublishError, outbox, publish_staged, relay_once
from celery_reliable.store.models import PendingMessage
from tests.apps.effects import Attempt
from tests.conftest import Scenario, make_scenario
from tests.harness import ROOT, wait_for
from tests.integration import test_publish
from tests.integration.test_publish import (
    AppFactory,
    dead_broker,
    effects,
    migrated,
    pending_rows,
    queued_ids,
    sql,
)

pytestmark = pytest.mark.integration

apps = test_publish.apps  # the fixture: producer apps, closed afterwards
bindings = test_publish.bindings  # the fixture: Redis binding keys deleted afterwards
queue = test_publish.queue  # the fixture: a per-test queue name, deleted afterwards


@pytest.fixture(
    params=[
        pytest.param(("postgres_db", "redis_url"), marks=[pytest.mark.postgres, pytest.mark.redis], id="pg-redis"),
        pytest.param(("postgres_db", "amqp_url"), marks=[pytest.mark.postgres, pytest.mark.rabbitmq], id="pg-amqp"),
        pytest.param(("mysql_db", "redis_url"), marks=[pytest.mark.mysql, pytest.mark.redis], id="mariadb-redis"),
        pytest.param(("sqlite_db", "redis_url"), marks=pytest.mark.redis, id="sqlite-redis"),
    ]
)
def outbox_scenario(
    request: pytest.FixtureRequest, tmp_path: Path, bindings: list[tuple[str, str]]
) -> Iterator[Scenario]:
    db_fixture, broker_fixture = request.param
    db_url = str(request.getfixturevalue(db_fixture))
    broker_url = str(request.getfixturevalue(broker_fixture))
    for scenario in make_scenario(request, broker_url, db_url, tmp_path):
        bindings.append((broker_url, scenario.queue))
        yield scenario


@pytest.fixture
def user_engine(outbox_scenario: Scenario) -> Iterator[Engine]:
    """The application's own engine (not the library's) on the same database."""
    engine = create_engine(outbox_scenario.db.url)
    yield engine
    engine.dispose()


def _attempt_keys(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return set(session.scalars(select(Attempt.key)))


def delivered(status: str) -> str:
    """A row's status with ``done`` read as ``sent``: the worker running beside the test may already
    have written the task's outcome (the delivery ledger) by the time the row is read."""
    return "sent" if status == "done" else status


def test_commit_sends_at_once_and_rollback_sends_nothing(
    outbox_scenario: Scenario, user_engine: Engine, apps: AppFactory
) -> None:
    scenario = outbox_scenario
    # a long grace: whatever is sent here was sent by the fast path, not by a relay
    app = apps(scenario.broker_url, scenario.db.url, scenario.queue, reliable_outbox_grace=300.0)
    scenario.worker()
    sent_ids: dict[str, str] = {}

    # Given a business write and an outbox message in one transaction
    with Session(user_engine) as session:
        session.add(Attempt(key="order-1", count=1))
        sent_ids["outbox-1"] = outbox(session, app).send("t.ok", ["outbox-1"])
        session.flush()
        assert pending_rows(scenario.db.url) == []  # not visible before the commit
        # When it commits
        started = time.monotonic()
        session.commit()
        commit_time = time.monotonic() - started
    # Then the message is sent by the time commit() returns
    rows = pending_rows(scenario.db.url)
    assert [(r.task_id, delivered(r.status), r.source, r.attempts) for r in rows] == [
        (sent_ids["outbox-1"], "sent", "outbox", 0)
    ]
    assert commit_time < 5

    # Several messages in one transaction (a name and a task object)
    with Session(user_engine) as session, session.begin():
        box = outbox(session, app)
        for i in range(3):
            sent_ids[f"outbox-batch-{i}"] = box.send("t.ok", [f"outbox-batch-{i}"])
        session.add(Attempt(key="order-batch", count=1))

    # A rollback: no row, no message, no business write
    with Session(user_engine) as session:
        session.add(Attempt(key="order-rolled-back", count=1))
        outbox(session, app).send("t.ok", ["outbox-rolled-back"])
        session.rollback()
        # the same session then commits another message: only that one goes out
        sent_ids["outbox-after-rollback"] = outbox(session, app).send("t.ok", ["outbox-after-rollback"])
        session.commit()
    # An exception inside session.begin(): rolled back too
    with pytest.raises(RuntimeError), Session(user_engine) as session, session.begin():
        outbox(session, app).send("t.ok", ["outbox-exception"])
        raise RuntimeError("business logic failed")
    # A session closed without commit
    with Session(user_engine) as session:
        outbox(session, app).send("t.ok", ["outbox-closed"])
    # Bad input is refused inside the transaction, before anything is written
    with Session(user_engine) as session:
        with pytest.raises(PublishError, match="cannot be stored as JSON"):
            outbox(session, app).send("t.ok", [object()])
        session.rollback()

    rows = pending_rows(scenario.db.url)
    assert sorted((r.task_id, delivered(r.status)) for r in rows) == sorted((tid, "sent") for tid in sent_ids.values())
    assert _attempt_keys(user_engine) == {"order-1", "order-batch"}
    # The worker runs each committed message once, and nothing else
    wait_for(lambda: len(effects(scenario)) == len(sent_ids), 30, what="outbox effects")
    scenario.wait_empty()
    time.sleep(0.5)
    assert effects(scenario) == {key: [tid] for key, tid in sent_ids.items()}
    assert relay_once(app).claimed == 0


CRASH_PRODUCER = """
import os, sys
from celery import Celery
from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session
from celery_reliable import outbox
from tests.apps.effects import Attempt

app = Celery("crash-producer", broker=os.environ["RT_BROKER"], set_as_current=False)
app.conf.update(
    reliable_database_url=os.environ["RT_DB"],
    task_default_queue=os.environ["RT_QUEUE"],
    reliable_outbox_grace=float(os.environ["RT_GRACE"]),
)
engine = create_engine(os.environ["RT_DB"])
with Session(engine) as session:
    # registered before the outbox's own hook, so it runs first: the commit is done, the send is not
    event.listen(session, "after_commit", lambda s: os.kill(os.getpid(), 9))
    session.add(Attempt(key=os.environ["RT_KEY"] + "-order", count=1))
    print(outbox(session, app).send("t.ok", [os.environ["RT_KEY"]]), flush=True)
    session.commit()
print("not killed", flush=True)
"""


@pytest.mark.fault
def test_producer_killed_between_commit_and_send_is_relayed_once(
    outbox_scenario: Scenario, user_engine: Engine, apps: AppFactory, tmp_path: Path
) -> None:
    scenario = outbox_scenario
    grace, key = 2.0, "outbox-crash"
    script = tmp_path / "producer.py"
    script.write_text(CRASH_PRODUCER)
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        RT_BROKER=scenario.broker_url,
        RT_DB=scenario.db.url,
        RT_QUEUE=scenario.queue,
        RT_GRACE=str(grace),
        RT_KEY=key,
    )
    # Given a producer SIGKILLed right after its commit, before the post-commit send
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr[-3000:]
    task_id = proc.stdout.strip()
    assert task_id and "not killed" not in proc.stdout
    # Then the commit stands: the business write and the outbox row, and nothing in the broker
    assert _attempt_keys(user_engine) == {f"{key}-order"}
    (row,) = pending_rows(scenario.db.url)
    assert (row.task_id, row.status, row.source, row.attempts) == (task_id, "pending", "outbox", 0)
    assert scenario.depth() == (0, 0)
    # A relay inside the grace period leaves it alone (a live producer may still be sending it)
    relay = apps(scenario.broker_url, scenario.db.url, scenario.queue)
    assert relay_once(relay).claimed == 0
    # After the grace the relay sends it, once
    wait = (row.next_attempt_at - row.created_at).total_seconds()
    assert grace - 1 <= wait <= grace + 1  # (MariaDB keeps whole seconds)
    time.sleep(max(0.0, (row.next_attempt_at - datetime.now(timezone.utc)).total_seconds()) + 0.3)
    stats = relay_once(relay)
    assert (stats.claimed, stats.sent) == (1, 1)
    assert relay_once(relay).claimed == 0
    scenario.worker()
    wait_for(lambda: effects(scenario).get(key), 30, what="the relayed outbox message ran")
    scenario.wait_empty()
    time.sleep(0.5)
    assert effects(scenario) == {key: [task_id]}
    # and the worker recorded the outcome: the row is done (the delivery ledger stops looking)
    wait_for(
        lambda: [(r.task_id, r.status) for r in pending_rows(scenario.db.url)] == [(task_id, "done")],
        10,
        what="the row marked done",
    )


SENDING_PRODUCER = """
import os
from celery import Celery
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from celery_reliable import outbox
from tests.apps.effects import Attempt

# the broker answers TCP but never replies: the post-commit send hangs after claiming its row
app = Celery("sending-producer", broker=os.environ["RT_BROKER"], set_as_current=False)
app.conf.update(reliable_database_url=os.environ["RT_DB"], task_default_queue=os.environ["RT_QUEUE"])
engine = create_engine(os.environ["RT_DB"])
with Session(engine) as session:
    session.add(Attempt(key=os.environ["RT_KEY"] + "-order", count=1))
    print(outbox(session, app).send("t.ok", [os.environ["RT_KEY"]]), flush=True)
    session.commit()
print("sent", flush=True)
"""


@contextmanager
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a broker hung mid-send); its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        server.close()


@pytest.mark.fault
@pytest.mark.redis
@pytest.mark.postgres
def test_producer_killed_during_its_post_commit_send_leaves_the_row_to_the_relay_in_seconds(
    apps: AppFactory, tmp_path: Path, redis_url: str, postgres_db: str, request: pytest.FixtureRequest
) -> None:
    scenarios = make_scenario(request, redis_url, postgres_db, tmp_path)
    scenario = next(scenarios)
    try:
        with silent_server() as port:
            script = tmp_path / "producer.py"
            script.write_text(SENDING_PRODUCER)
            env = dict(os.environ, PYTHONPATH=str(ROOT), RT_BROKER=f"redis://127.0.0.1:{port}/0",
                       RT_DB=scenario.db.url, RT_QUEUE=scenario.queue, RT_KEY="crash-sending")  # fmt: skip
            # Given a producer (library defaults) whose post-commit send hangs after claiming its row
            proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
            try:
                wait_for(lambda: [r.status for r in pending_rows(scenario.db.url)] == ["claimed"], 30,
                         what="the post-commit send holding its row")  # fmt: skip
                # When the producer is SIGKILLed in the middle of that send
                proc.kill()
                proc.wait(timeout=10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
        (row,) = pending_rows(scenario.db.url)
        held = (row.lease_expires_at - datetime.now(timezone.utc)).total_seconds()
        # Then the row is held only as long as the send could last (2 x publish_timeout + 1 = 11 s),
        # not the relay's lease (60 s), and the relay then sends it once
        assert 0 < held <= 11.5, held
        relay = apps(scenario.broker_url, scenario.db.url, scenario.queue)
        assert relay_once(relay).claimed == 0
        time.sleep(held + 0.3)
        assert (relay_once(relay).sent, relay_once(relay).claimed) == (1, 0)
        scenario.worker()
        wait_for(lambda: effects(scenario).get("crash-sending"), 30, what="the relayed message ran")
        scenario.wait_empty()
        assert effects(scenario) == {"crash-sending": [row.task_id]}
    finally:
        scenarios.close()


@pytest.mark.redis
def test_commit_while_broker_is_down_keeps_the_rows_for_the_relay(
    redis_url: str, sqlite_db: str, queue: str, apps: AppFactory
) -> None:
    db = migrated(sqlite_db)
    down = apps(dead_broker(redis_url), db, queue, reliable_outbox_grace=300.0, reliable_relay_backoff=5.0)
    engine = create_engine(db)
    try:
        # Given a commit whose post-commit send cannot reach the broker
        with Session(engine) as session:
            task_ids = [outbox(session, down).send("t.ok", [f"outbox-down-{i}"]) for i in range(3)]
            started = time.monotonic()
            session.commit()  # does not raise
            took = time.monotonic() - started
        assert took < 5
        now = datetime.now(timezone.utc)
        rows = pending_rows(db)
        assert [r.task_id for r in rows] == task_ids
        assert {(r.status, r.claim_token, r.source) for r in rows} == {("pending", None, "outbox")}
        assert all(r.next_attempt_at > now for r in rows)  # backed off, or still in the grace period
        # With a Connection the caller publishes after its own commit
        live = apps(redis_url, db, queue)
        with engine.begin() as conn:
            box = outbox(conn, live)
            conn_task_id = box.send("t.ok", ["outbox-connection"])
        (row_id,) = box.row_ids
        assert [r.task_id for r in pending_rows(db) if r.id == row_id] == [conn_task_id]
        assert publish_staged(live, [row_id]) == 1
        assert publish_staged(live, [row_id]) == 0  # already sent: not again
        assert queued_ids(redis_url, queue) == [conn_task_id]
        # When the rows are due, the relay sends them, once
        sql(db, update(PendingMessage).values(next_attempt_at=now - timedelta(seconds=1)))
        stats = relay_once(live)
        assert (stats.claimed, stats.sent) == (3, 3)
        assert sorted(queued_ids(redis_url, queue)) == sorted([conn_task_id, *task_ids])
        assert Counter(r.status for r in pending_rows(db)) == {"sent": 4}
    finally:
        engine.dispose()
