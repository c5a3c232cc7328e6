"""Two relay processes at once over 10,000 pending rows: every row reaches the broker exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import create_engine, insert

from celery_reliable.message.prepare import prepare
from celery_reliable.store.models import PendingMessage, utcnow
from tests.harness import ROOT
from tests.integration import test_publish
from tests.integration.test_publish import migrated, pending_rows, queued_ids

pytestmark = pytest.mark.integration

queue = test_publish.queue  # the fixture: a per-test queue name, deleted afterwards

RELAY_SCRIPT = """
import json, os, sys, time
from celery import Celery
from celery_reliable import relay_once
from celery_reliable.store.engine import dispose
from celery_reliable.send.publisher import reset_publisher

app = Celery("relay-" + sys.argv[1], broker=os.environ["RT_BROKER"], set_as_current=False)
app.conf.update(
    reliable_database_url=os.environ["RT_DB"],
    task_default_queue=os.environ["RT_QUEUE"],
    reliable_relay_batch_size=int(os.environ["RT_BATCH"]),
    broker_connection_retry_on_startup=True,
)
deadline = time.monotonic() + 60
while not os.path.exists(os.environ["RT_GO"]):
    if time.monotonic() > deadline:
        sys.exit("never told to start")
    time.sleep(0.005)
total = {"claimed": 0, "sent": 0, "failed": 0, "invalid": 0, "expired": 0, "released": 0, "passes": 0}
for _ in range(100):
    stats = relay_once(app, time_limit=120)
    total["passes"] += 1
    for key in ("claimed", "sent", "failed", "invalid", "expired", "released"):
        total[key] += getattr(stats, key)
    if stats.claimed == 0:
        break
reset_publisher(app)
dispose(app)
print(json.dumps(total))
"""


def _insert_rows(db_url: str, count: int) -> list[str]:
    """``count`` due rows, made by the library's own prepare(); returns their task ids."""
    app = Celery("filler", broker="memory://", set_as_current=False)
    due = utcnow()
    values = [prepare(app, "t.ok", [f"concurrent-{i}"], None, None) for i in range(count)]
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            for start in range(0, count, 2000):
                chunk = values[start : start + 2000]
                conn.execute(insert(PendingMessage), [v.row("publish_fallback", due) for v in chunk])
    finally:
        engine.dispose()
        app.close()
    return [v.task_id for v in values]


@pytest.mark.parametrize(
    ("db_fixture", "broker_fixture", "count"),
    [
        pytest.param(
            "postgres_db", "redis_url", 10_000, marks=[pytest.mark.postgres, pytest.mark.redis], id="pg-redis"
        ),
        pytest.param("mysql_db", "redis_url", 10_000, marks=[pytest.mark.mysql, pytest.mark.redis], id="mariadb-redis"),
        pytest.param("sqlite_db", "redis_url", 10_000, marks=pytest.mark.redis, id="sqlite-redis"),
        pytest.param(
            "postgres_db", "amqp_url", 10_000, marks=[pytest.mark.postgres, pytest.mark.rabbitmq], id="pg-rabbitmq"
        ),
    ],
)
def test_two_relays_send_each_row_exactly_once(
    request: pytest.FixtureRequest, queue: str, tmp_path: Path, db_fixture: str, broker_fixture: str, count: int
) -> None:
    broker_url = str(request.getfixturevalue(broker_fixture))
    db = migrated(str(request.getfixturevalue(db_fixture)))
    task_ids = _insert_rows(db, count)
    script = tmp_path / "relay.py"
    script.write_text(RELAY_SCRIPT)
    go = tmp_path / "go"
    env = dict(
        os.environ, PYTHONPATH=str(ROOT), RT_BROKER=broker_url, RT_DB=db, RT_QUEUE=queue, RT_GO=str(go), RT_BATCH="250"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(n)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    try:
        time.sleep(1.5)  # both imported and waiting
        started = time.monotonic()
        go.touch()
        outputs = [proc.communicate(timeout=120) for proc in procs]
        elapsed = time.monotonic() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert [proc.returncode for proc in procs] == [0, 0], [err[-3000:] for _, err in outputs]
    totals = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    # Every row was sent by exactly one of the two relays, and both took part
    assert sum(t["sent"] for t in totals) == count, totals
    assert sum(t["claimed"] for t in totals) == count, totals
    assert all(t["claimed"] > 0 for t in totals), totals
    assert sum(t["failed"] + t["invalid"] + t["expired"] + t["released"] for t in totals) == 0, totals
    # The broker holds exactly one message per row, each under its row's task id
    ids = queued_ids(broker_url, queue)
    duplicates = {i: n for i, n in Counter(ids).items() if n > 1}
    assert len(ids) == count, f"{len(ids)} messages for {count} rows; duplicated ids: {list(duplicates.items())[:5]}"
    assert duplicates == {}
    assert set(ids) == set(task_ids)
    rows = pending_rows(db)
    assert Counter(r.status for r in rows) == {"sent": count}
    assert all(r.claim_token is None and r.attempts == 0 for r in rows)
    print(f"\n[two relays, {db_fixture}, {broker_fixture}] {count} rows in {elapsed:.1f}s: {totals}")
