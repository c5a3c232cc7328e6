"""The pending table on SQLite, PostgreSQL and MariaDB: claims under fencing tokens, backoff, purge."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery
from sqlalchemy import update

from celery_reliable.message.prepare import prepare
from celery_reliable.store.claims import claim, mark_failed, mark_sent, mark_status, release
from celery_reliable.store.models import PendingMessage, PendingStatus
from celery_reliable.store.pending import add_pending, count_by_status, purge_sent
from tests.conftest import store_app
from tests.integration.test_publish import pending_rows, sql

pytestmark = pytest.mark.integration


@pytest.fixture
def app(any_db_url: str) -> Iterator[Celery]:
    yield from store_app(any_db_url, "pending-store")


def _add(app: Celery, count: int, delay: float = 0.0) -> list[int]:
    values = [prepare(app, "t.ok", [f"store-{i}"], None, None) for i in range(count)]
    return add_pending(app, values, source="publish_fallback", delay=delay)


def _url(app: Celery) -> str:
    return str(app.conf.reliable_database_url)


def _expire_leases(app: Celery) -> None:
    sql(_url(app), update(PendingMessage).values(lease_expires_at=datetime.now(timezone.utc) - timedelta(seconds=5)))


def test_stale_token_cannot_touch_rows_another_claim_took(app: Celery) -> None:
    ids = _add(app, 3)
    token_a, rows_a = claim(app, limit=10, lease=60)
    assert [r.id for r in rows_a] == ids
    assert all(r.status == PendingStatus.CLAIMED and r.claim_token == token_a for r in rows_a)
    # While the lease runs nobody else gets them
    assert claim(app, limit=10, lease=60)[1] == []
    assert claim(app, limit=10, lease=60, ids=ids)[1] == []
    # After it ran out, another claim takes them under a new token
    _expire_leases(app)
    token_b, rows_b = claim(app, limit=10, lease=60)
    assert [r.id for r in rows_b] == ids and token_b != token_a
    # and the stale holder changes nothing
    assert mark_sent(app, token_a, ids) == 0
    assert mark_status(app, token_a, ids, PendingStatus.INVALID, "stale") == 0
    assert release(app, token_a, ids) == 0
    assert mark_failed(app, token_a, [(i, "stale") for i in ids], max_attempts=1, base=1, cap=1) == (0, 0)
    rows = pending_rows(_url(app))
    assert [(r.status, r.claim_token, r.attempts, r.last_error) for r in rows] == [("claimed", token_b, 0, "")] * 3
    # The holder of the live token finishes them
    assert mark_sent(app, token_b, ids) == 3
    rows = pending_rows(_url(app))
    assert [(r.status, r.claim_token, r.lease_expires_at) for r in rows] == [("sent", None, None)] * 3
    assert all(r.sent_at is not None for r in rows)
    # sent rows are never claimed again, by a relay or by the post-commit fast path
    _expire_leases(app)
    assert claim(app, limit=10, lease=60)[1] == []
    assert claim(app, limit=10, lease=60, ids=ids)[1] == []


def test_claim_takes_due_rows_in_id_order_up_to_the_limit(app: Celery) -> None:
    due = _add(app, 5)
    later = _add(app, 2, delay=3600)  # e.g. outbox rows inside their grace period
    token, rows = claim(app, limit=3, lease=60)
    assert [r.id for r in rows] == due[:3]
    _token2, rows2 = claim(app, limit=10, lease=60)
    assert [r.id for r in rows2] == due[3:]
    assert claim(app, limit=10, lease=60)[1] == []
    # the fast path claims named rows even before they are due, but only those
    _token3, rows3 = claim(app, limit=10, lease=60, ids=[later[0], due[0]])
    assert [r.id for r in rows3] == [later[0]]
    assert release(app, token, [r.id for r in rows]) == 3
    assert count_by_status(app) == {"pending": 4, "claimed": 3}
    # released rows keep their attempts and due time and are claimable at once
    assert [r.id for r in claim(app, limit=10, lease=60)[1]] == due[:3]


def test_mark_failed_backs_off_and_marks_dead(app: Celery) -> None:
    ids = _add(app, 2)
    base, cap = 4.0, 10.0
    seen = []
    for attempt in range(1, 4):
        _expire_leases(app)
        sql(_url(app), update(PendingMessage).values(next_attempt_at=datetime.now(timezone.utc)))
        token, rows = claim(app, limit=10, lease=60)
        assert [r.id for r in rows] == ids
        before = datetime.now(timezone.utc)
        rescheduled, dead = mark_failed(
            app,
            token,
            [(ids[0], f"boom {attempt}" + "x" * 20_000), (ids[1], "nope")],
            max_attempts=3,
            base=base,
            cap=cap,
        )
        after = datetime.now(timezone.utc)
        rows = {r.id: r for r in pending_rows(_url(app))}
        seen.append((rescheduled, dead, rows[ids[0]].status, rows[ids[0]].attempts))
        if attempt < 3:
            longest = min(cap, base * 2**attempt)
            for row in rows.values():
                # full jitter, never below base / 10 (a second of slack for MariaDB's whole seconds)
                assert before + timedelta(seconds=base / 10 - 1) <= row.next_attempt_at
                assert row.next_attempt_at <= after + timedelta(seconds=longest)
                assert row.claim_token is None and row.lease_expires_at is None
        assert rows[ids[0]].last_error.startswith(f"boom {attempt}")
        assert len(rows[ids[0]].last_error) == 10_000
        assert rows[ids[1]].last_error == "nope"
    assert seen == [(2, 0, "pending", 1), (2, 0, "pending", 2), (0, 2, "dead", 3)]
    assert count_by_status(app) == {"dead": 2}
    _expire_leases(app)
    assert claim(app, limit=10, lease=60)[1] == []


def test_purge_sent_deletes_only_old_sent_rows(app: Celery) -> None:
    ids = _add(app, 6)
    token, _rows = claim(app, limit=10, lease=60)
    assert mark_sent(app, token, ids[:4]) == 4
    assert mark_status(app, token, ids[4:5], PendingStatus.DEAD, "gave up") == 1
    assert release(app, token, ids[5:]) == 1
    old = datetime.now(timezone.utc) - timedelta(days=2)
    sql(_url(app), update(PendingMessage).where(PendingMessage.id.in_(ids[:2])).values(sent_at=old))
    assert purge_sent(app, older_than=3600, batch=1) == 2
    remaining = {r.id: r.status for r in pending_rows(_url(app))}
    assert remaining == {ids[2]: "sent", ids[3]: "sent", ids[4]: "dead", ids[5]: "pending"}
    assert purge_sent(app, older_than=3600) == 0
