"""The relay's batches on PostgreSQL: rows held by row locks and written once.

A relay that stalls past ``reliable_relay_lease`` marks nothing another relay took; a relay
killed in the middle of a batch leaves its rows due at once; a pass writes each row once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from celery_reliable import relay_once
from celery_reliable.store.batches import lock_rows
from celery_reliable.store.claims import claim_rows, mark_sent
from tests.harness import ROOT
from tests.integration import test_publish
from tests.integration.test_publish import AppFactory, migrated, pending_rows, queued_ids
from tests.integration.test_relay_concurrent import _insert_rows

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

queue = test_publish.queue  # the fixture: a per-test queue name, deleted afterwards
apps = test_publish.apps


def _updated_tuples(db_url: str, at_least: int) -> int:
    """Row versions written to the pending table so far (PostgreSQL's statistics, once settled).

    The counters reach the statistics a moment after each transaction: read until they reach
    ``at_least`` (bounded), then once more after they had time to move further.
    """
    engine = create_engine(db_url, isolation_level="AUTOCOMMIT")
    query = text("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'celery_reliable_pending_message'")
    try:
        with engine.connect() as conn:
            deadline = time.monotonic() + 15
            seen = 0
            while time.monotonic() < deadline:
                conn.execute(text("SELECT pg_stat_clear_snapshot()"))
                seen = int(conn.execute(query).scalar_one())
                if seen >= at_least:
                    break
                time.sleep(0.2)
            time.sleep(2.5)
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


def test_a_relay_pass_writes_each_row_once(postgres_db: str, redis_url: str, queue: str, apps: AppFactory) -> None:
    # Given 3,000 due rows
    db = migrated(postgres_db)
    task_ids = _insert_rows(db, 3000)
    app = apps(redis_url, db, queue, reliable_relay_batch_size=500)
    # When a relay pass sends them
    stats = relay_once(app)
    # Then every row was sent once, and PostgreSQL wrote one row version per row (a leased claim
    # writes two: the claim and the mark)
    assert (stats.claimed, stats.sent, stats.released) == (3000, 3000, 0)
    assert Counter(queued_ids(redis_url, queue)) == Counter(task_ids)
    assert Counter(r.status for r in pending_rows(db)) == {"sent": 3000}
    assert _updated_tuples(db, 3000) == 3000


def test_leased_claims_write_each_row_twice(postgres_db: str, redis_url: str, queue: str, apps: AppFactory) -> None:
    # The comparison the test above stands on: the same rows claimed under a lease and marked
    db = migrated(postgres_db)
    _insert_rows(db, 1000)
    app = apps(redis_url, db, queue)
    token, rows = claim_rows(app, limit=1000, lease=60)
    assert mark_sent(app, token, [r.id for r in rows]) == 1000
    assert _updated_tuples(db, 2000) == 2000


def test_a_stalled_relay_marks_nothing_another_relay_took(
    postgres_db: str, redis_url: str, queue: str, apps: AppFactory
) -> None:
    db = migrated(postgres_db)
    task_ids = _insert_rows(db, 40)
    stalled_app = apps(redis_url, db, queue)
    other_app = apps(redis_url, db, queue)
    # Given a relay holding 40 rows under a lease of 1 s
    held, rows = lock_rows(stalled_app, limit=100, lease=1.0)
    assert len(rows) == 40
    # While it holds them, another relay takes none of them
    assert relay_once(other_app).claimed == 0
    # When it stalls past its lease, the other relay sends them all
    time.sleep(2.0)
    stats = relay_once(other_app)
    assert (stats.claimed, stats.sent) == (40, 40)
    # And the stalled relay, resuming, marks nothing and raises nothing
    assert held.sent([r.id for r in rows]) == 0
    assert held.status([rows[0].id], "invalid", "late") == 0
    assert held.lost
    held.finish()
    assert Counter(queued_ids(redis_url, queue)) == Counter(task_ids)
    after = pending_rows(db)
    assert Counter(r.status for r in after) == {"sent": 40}
    assert all(r.last_error == "" for r in after)


def test_rows_locked_and_rows_leased_are_never_taken_twice(
    postgres_db: str, redis_url: str, queue: str, apps: AppFactory
) -> None:
    # A relay of an earlier release (leased claims) beside one that locks: each skips the other's rows
    db = migrated(postgres_db)
    _insert_rows(db, 30)
    app = apps(redis_url, db, queue)
    held, locked = lock_rows(app, limit=10, lease=60)
    token, leased = claim_rows(app, limit=100, lease=60)
    assert len(locked) == 10 and len(leased) == 20
    assert not {r.id for r in locked} & {r.id for r in leased}
    again, more = lock_rows(app, limit=100, lease=60)
    assert more == []
    again.finish()
    assert held.sent([r.id for r in locked]) == 10
    held.finish()
    assert mark_sent(app, token, [r.id for r in leased]) == 20
    assert Counter(r.status for r in pending_rows(db)) == {"sent": 30}


KILLED_RELAY = """
import os, sys, time
from celery import Celery
from celery_reliable.store.batches import lock_rows

app = Celery("killed", broker=os.environ["RT_BROKER"], set_as_current=False)
app.conf.update(reliable_database_url=os.environ["RT_DB"], task_default_queue=os.environ["RT_QUEUE"])
held, rows = lock_rows(app, limit=1000, lease=60)
print(len(rows), flush=True)
time.sleep(120)
"""


def test_a_killed_relays_rows_are_due_at_once(
    postgres_db: str, redis_url: str, queue: str, apps: AppFactory, tmp_path: Path
) -> None:
    db = migrated(postgres_db)
    task_ids = _insert_rows(db, 500)
    script = tmp_path / "killed.py"
    script.write_text(KILLED_RELAY)
    env = dict(os.environ, PYTHONPATH=str(ROOT), RT_BROKER=redis_url, RT_DB=db, RT_QUEUE=queue)
    # Given a relay process holding all 500 rows under the default 60 s lease
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "500"
        app = apps(redis_url, db, queue)
        assert relay_once(app).claimed == 0
        # When it is killed with SIGKILL in the middle of its batch
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    # Then its rows are due at once (not after the lease), and go out once each
    started = time.monotonic()
    sent = 0
    for _ in range(50):
        sent += relay_once(app).sent
        if sent >= 500:
            break
        time.sleep(0.1)
    assert sent == 500
    assert time.monotonic() - started < 10
    assert Counter(queued_ids(redis_url, queue)) == Counter(task_ids)
    assert Counter(r.status for r in pending_rows(db)) == {"sent": 500}
