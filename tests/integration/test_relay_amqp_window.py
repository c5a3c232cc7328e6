"""The relay's windowed publishing to RabbitMQ: a nack, or a connection that dies, in the middle of a batch.

A batch is written a window at a time and its confirms read as they come; whatever happens in
between, a row is marked sent only when RabbitMQ confirmed its message.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue
from sqlalchemy import update

from celery_reliable import relay_once
from celery_reliable.broker.amqp_confirms import Confirms
from celery_reliable.send import batch
from celery_reliable.send.publisher import get_publisher
from celery_reliable.store.models import PendingMessage, utcnow
from tests.integration import test_publish
from tests.integration.test_publish import AppFactory, migrated, pending_rows, queued_ids
from tests.integration.test_relay_concurrent import _insert_rows

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.postgres]

apps = test_publish.apps  # the fixtures: apps closed afterwards, a queue of this test deleted afterwards
queue = test_publish.queue

ROWS = 3000
BATCH = 2000


@pytest.fixture
def exchange(amqp_url: str, queue: str) -> Iterator[str]:
    """The exchange Celery declares for the test's queue (named like it), deleted afterwards."""
    yield queue
    try:
        with Connection(amqp_url, connect_timeout=5) as conn:
            conn.channel().exchange_delete(queue)
    except Exception as exc:
        print(f"cleanup of exchange {queue}: {exc!r}")


def _by_status(db: str) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for row in pending_rows(db):
        found.setdefault(row.status, []).append(row)
    return found


def _windows_written(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the windows the relay writes (each a list entry: its size in bytes)."""
    sizes: list[int] = []
    write = Confirms.write

    def counted(self: Confirms, channel: Any, timeout: float | None) -> None:
        if self.unwritten:
            sizes.append(self.unwritten_bytes)
        write(self, channel, timeout)

    monkeypatch.setattr(Confirms, "write", counted)
    return sizes


def test_nacks_in_the_middle_of_a_windowed_batch_leave_exactly_the_refused_rows_unsent(
    amqp_url: str, postgres_db: str, queue: str, exchange: str, apps: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 3,000 due rows and a queue that takes 1,234 messages and refuses (nacks) the rest
    db = migrated(postgres_db)
    ids = _insert_rows(db, ROWS)
    limit = 1234
    arguments = {"x-max-length": limit, "x-overflow": "reject-publish"}
    declared = Queue(queue, Exchange(queue), routing_key=queue, queue_arguments=arguments)
    app = apps(amqp_url, db, queue, tasks=("t.ok",), task_queues=[declared], reliable_relay_batch_size=BATCH)
    monkeypatch.setattr(batch, "WINDOW_BYTES", 64 * 1024)  # several windows per batch, nacks among them
    windows = _windows_written(monkeypatch)
    # When a relay pass sends them
    stats = relay_once(app)
    # Then the batch went out in several windows, the pass stopped at the nacks
    assert len(windows) >= 4, windows
    assert stats.broker_down and stats.sent == limit, stats
    # and exactly the confirmed rows are sent: one per message in the queue, the same task ids
    rows = _by_status(db)
    sent = {row.task_id for row in rows["sent"]}
    queued = queued_ids(amqp_url, queue)
    assert len(queued) == len(set(queued)) == limit
    assert sent == set(queued) and sent <= set(ids)
    # the nacked ones count a failed try; none is lost: every other row is due again
    failed = [row for row in rows.get("pending", []) if row.attempts == 1]
    assert stats.failed == len(failed) == BATCH - limit
    assert all("MessageNacked" in (row.last_error or "") for row in failed)
    assert Counter(row.status for row in pending_rows(db)) == {"sent": limit, "pending": ROWS - limit}


def _close_own_connection(port: int) -> None:
    """Close the relay's own RabbitMQ connection (named after its client address) from the server."""
    name = f"127.0.0.1:{port} -> 127.0.0.1:5672"
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "name"], capture_output=True, text=True, timeout=60
    )
    pids = [line.split("\t")[0] for line in listed.stdout.splitlines() if line.endswith("\t" + name)]
    assert len(pids) == 1, listed.stdout
    done = subprocess.run(
        ["rabbitmqctl", "close_connection", pids[0], "closed by the test"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_a_connection_closed_in_the_middle_of_a_windowed_batch_marks_only_confirmed_rows_sent(
    amqp_url: str, postgres_db: str, queue: str, exchange: str, apps: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert shutil.which("rabbitmqctl"), "rabbitmqctl closes the relay's connection: install RabbitMQ"
    # Given 3,000 due rows and a relay whose connection RabbitMQ closes before its second window
    db = migrated(postgres_db)
    ids = _insert_rows(db, ROWS)
    app = apps(amqp_url, db, queue, tasks=("t.ok",), reliable_relay_batch_size=BATCH)
    monkeypatch.setattr(batch, "WINDOW_BYTES", 64 * 1024)
    publisher = get_publisher(app)
    write = Confirms.write
    windows: list[int] = []

    def write_then_close(self: Confirms, channel: Any, timeout: float | None) -> None:
        if self.unwritten:
            windows.append(self.unwritten_bytes)
        if len(windows) == 2 and self.unwritten:  # the second window goes to a connection closed meanwhile
            _close_own_connection(publisher.connection.connection.transport.sock.getsockname()[1])
        write(self, channel, timeout)

    monkeypatch.setattr(Confirms, "write", write_then_close)
    # When a relay pass sends them
    stats = relay_once(app)
    # Then the pass stopped with the broker down, at the second window of the first batch
    assert stats.broker_down and len(windows) == 2, (stats, windows)
    # (the second window's messages were handed to a closed connection: not confirmed, they failed)
    assert stats.failed > 0 and stats.sent + stats.failed + stats.released == ROWS, stats
    rows = _by_status(db)
    sent = {row.task_id for row in rows.get("sent", [])}
    queued = queued_ids(amqp_url, queue)
    # every row marked sent has its message in the queue, once (a message whose confirm was lost
    # with the connection may be there too: its row is due again, and is sent again, same task id)
    assert len(queued) == len(set(queued)) and set(queued) <= set(ids)
    assert sent <= set(queued) and len(sent) == stats.sent
    # nothing written after the close counts as sent, and no row is lost: each is sent or due again
    assert len(sent) < ROWS
    assert Counter(row.status for row in pending_rows(db)) == +Counter(sent=len(sent), pending=ROWS - len(sent))
    # And a later pass (on a new connection) sends the rest
    due_now = update(PendingMessage).where(PendingMessage.status == "pending").values(next_attempt_at=utcnow())
    test_publish.sql(db, due_now)
    monkeypatch.setattr(Confirms, "write", write)
    for _ in range(5):
        if not relay_once(app).claimed:
            break
    assert Counter(row.status for row in pending_rows(db)) == {"sent": ROWS}
    assert set(queued_ids(amqp_url, queue)) == set(ids)
