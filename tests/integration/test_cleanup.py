"""The cleanup of sent pending rows and processed ids: what it deletes, that it never waits on a
row another transaction holds, and that a run bounded in time leaves the rest to the next run."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery
from sqlalchemy import create_engine, insert, select, update

from celery_reliable.config import reset_settings
from celery_reliable.message.prepare import prepare
from celery_reliable.store.models import PendingMessage, PendingStatus, ProcessedTask
from celery_reliable.store.pending import add_pending, purge_sent
from celery_reliable.store.processed import is_processed, purge_processed
from tests.conftest import store_app
from tests.integration.test_publish import pending_rows, sql

pytestmark = pytest.mark.integration

OLD = datetime.now(timezone.utc) - timedelta(days=2)


@pytest.fixture
def app(any_db_url: str) -> Iterator[Celery]:
    yield from store_app(any_db_url, "cleanup")


@pytest.fixture
def pg_app(postgres_db: str) -> Iterator[Celery]:
    yield from store_app(postgres_db, "cleanup")


def _rows(app: Celery, count: int, **values: object) -> list[int]:
    """``count`` pending rows, then set to ``values``."""
    ids = add_pending(app, [prepare(app, "t.ok", [i], None, None) for i in range(count)], source="outbox")
    if values:
        sql(
            str(app.conf.reliable_database_url), update(PendingMessage).where(PendingMessage.id.in_(ids)).values(values)
        )
    return ids


def _table(app: Celery) -> Counter[tuple[str, bool, bool]]:
    """(status, tracked, sent long ago) of every row, counted."""
    return Counter(
        (r.status, r.tracked, r.sent_at is not None and r.sent_at < OLD + timedelta(hours=1))
        for r in pending_rows(str(app.conf.reliable_database_url))
    )


def test_cleanup_skips_a_held_row_and_keeps_open_and_tracked_rows(pg_app: Celery) -> None:
    url = str(pg_app.conf.reliable_database_url)
    # Given old rows the cleanup deletes: sent untracked, and done (tracked or not)
    sent = _rows(pg_app, 10, status=PendingStatus.SENT, sent_at=OLD)
    _rows(pg_app, 3, status=PendingStatus.DONE, tracked=True, sent_at=OLD)
    # and rows it keeps: tracked sent ones waiting for their outcome, recent ones, open and dead ones
    _rows(pg_app, 4, status=PendingStatus.SENT, tracked=True, sent_at=OLD)
    _rows(pg_app, 2, status=PendingStatus.SENT, sent_at=datetime.now(timezone.utc))
    _rows(pg_app, 5)
    _rows(pg_app, 2, status=PendingStatus.CLAIMED, claim_token="relay", lease_expires_at=OLD + timedelta(days=3))
    _rows(pg_app, 1, status=PendingStatus.DEAD)
    # and one of the old sent rows held by another transaction (as a worker marking it done does)
    engine = create_engine(url)
    try:
        with engine.connect() as holder:
            transaction = holder.begin()
            holder.execute(select(PendingMessage.id).where(PendingMessage.id == sent[4]).with_for_update())
            # When the cleanup runs, in batches of 3, while the row is held
            removed: list[int] = []
            runner = threading.Thread(target=lambda: removed.append(purge_sent(pg_app, 3600, batch=3)), daemon=True)
            runner.start()
            runner.join(timeout=30)
            # Then it did not wait for the row: it deleted the other 12 and left that one
            assert not runner.is_alive(), "the cleanup waited for a row another transaction holds"
            assert removed == [12]
            transaction.rollback()
    finally:
        engine.dispose()
    assert _table(pg_app) == {
        ("sent", False, True): 1,  # the held one
        ("sent", True, True): 4,
        ("sent", False, False): 2,
        ("pending", False, False): 5,
        ("claimed", False, False): 2,
        ("dead", False, False): 1,
    }
    # and the next run deletes the row once nobody holds it
    assert purge_sent(pg_app, 3600, batch=3) == 1
    assert purge_sent(pg_app, 3600, batch=3) == 0
    assert sum(_table(pg_app).values()) == 14


def test_a_run_bounded_in_time_leaves_the_rest_to_the_next(app: Celery) -> None:
    # Given 23 old sent rows, all sent at the same time (more than one batch of ties), and rows kept
    _rows(app, 23, status=PendingStatus.SENT, sent_at=OLD)
    _rows(app, 2, status=PendingStatus.SENT, tracked=True, sent_at=OLD)
    _rows(app, 3)
    # When each run may start no batch after the first (a time limit already reached)
    runs = [purge_sent(app, 3600, batch=5, time_limit=0) for _ in range(7)]
    # Then each run deleted one batch, the next ones went on, and all 23 went
    assert runs == [5, 5, 5, 5, 3, 0, 0]
    assert _table(app) == {("sent", True, True): 2, ("pending", False, False): 3}
    # (without a limit one run deletes them all)
    _rows(app, 12, status=PendingStatus.DONE, sent_at=OLD)
    assert purge_sent(app, 3600, batch=5) == 12


def test_a_row_skipped_by_a_run_that_went_on_later_is_deleted_by_a_run_from_the_start(pg_app: Celery) -> None:
    url = str(pg_app.conf.reliable_database_url)
    # Given the oldest sent row held by another transaction, and 6 others
    [held] = _rows(pg_app, 1, status=PendingStatus.SENT, sent_at=OLD - timedelta(hours=1))
    _rows(pg_app, 6, status=PendingStatus.SENT, sent_at=OLD)
    engine = create_engine(url)
    try:
        with engine.connect() as holder, holder.begin():
            holder.execute(select(PendingMessage.id).where(PendingMessage.id == held).with_for_update())
            # When runs of one batch of 3 each go on where the last stopped
            runs = [purge_sent(pg_app, 3600, batch=3, time_limit=0) for _ in range(3)]
    finally:
        engine.dispose()
    # Then they deleted the others and reached the end; the run after starts again at the beginning
    assert runs == [3, 3, 0]
    assert purge_sent(pg_app, 3600, batch=3, time_limit=0) == 1
    assert _table(pg_app) == {}


def test_processed_ids_are_purged_oldest_first_within_the_time_bound(app: Celery) -> None:
    now = datetime.now(timezone.utc)
    # Given 12 old ids, 8 of them completed at the same time (more than one batch of ties), and 2 recent ones
    old = [(f"old-{i}", OLD - timedelta(seconds=max(0, i - 7))) for i in range(12)]
    rows = [{"task_id": t, "task_name": "t", "completed_at": at} for t, at in [*old, ("new-0", now), ("new-1", now)]]
    engine = create_engine(str(app.conf.reliable_database_url))
    try:
        with engine.begin() as conn:
            conn.execute(insert(ProcessedTask), rows)
    finally:
        engine.dispose()
    # When runs delete one batch of 4 each
    runs = [purge_processed(app, 3600, batch=4, time_limit=0) for _ in range(5)]
    # Then the 12 old ids went over three runs, the recent ones stay
    assert runs == [4, 4, 4, 0, 0]
    assert [is_processed(app, f"new-{i}") for i in range(2)] == [True, True]
    assert not any(is_processed(app, task_id) for task_id, _ in old)


def test_the_beat_task_purges_both_tables(app: Celery) -> None:
    # Given old and recent processed ids and sent rows, and a time limit already reached
    app.conf.update(reliable_cleanup_time_limit=0, reliable_idempotency_retention=3600)
    reset_settings(app)
    now = datetime.now(timezone.utc)
    engine = create_engine(str(app.conf.reliable_database_url))
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(ProcessedTask),
                [{"task_id": f"p{i}", "task_name": "t", "completed_at": OLD if i < 3 else now} for i in range(5)],
            )
    finally:
        engine.dispose()
    _rows(app, 4, status=PendingStatus.SENT, sent_at=OLD)
    _rows(app, 1, status=PendingStatus.SENT, sent_at=now)
    # When the cleanup task runs: each table gets its first batch (the default batch holds them all)
    cleanup = app.tasks["celery_reliable.cleanup"]
    assert cleanup.apply().get() == 7
    # Then only the recent ones are left, and a run with nothing to do returns None
    assert cleanup.apply().get() is None
    assert _table(app) == {("sent", False, False): 1}
    assert [is_processed(app, f"p{i}") for i in range(5)] == [False, False, False, True, True]
