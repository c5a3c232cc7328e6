"""An asyncio application: ``apublish()`` and ``outbox(async_session)`` against real services.

Every coroutine runs under a :class:`Ticker`, a task that wakes every 2 ms and keeps the longest
gap between two wake-ups: how long the event loop was held. Counts are exact: messages in the
Redis queue (read raw), pending rows by status (read with an engine of its own), effects a real
worker wrote.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from celery_reliable import AsyncOutbox, BadMessageError, PublishError, apublish, outbox, relay_once
from tests.apps.effects import Attempt
from tests.conftest import Scenario, make_scenario
from tests.harness import ROOT, free_port, wait_for
from tests.integration import test_publish
from tests.integration.test_publish import AppFactory, dead_broker, effects, migrated, pending_rows, queued_ids

pytestmark = pytest.mark.integration

apps = test_publish.apps  # the fixture: producer apps, closed afterwards
bindings = test_publish.bindings  # the fixture: Redis binding keys deleted afterwards
queue = test_publish.queue  # the fixture: a per-test queue name, deleted afterwards

_T = TypeVar("_T")

#: The longest the loop may be held: far below one broker timeout (3 s here) and the retry waits
#: of tests/faults/test_apublish_loop.py (seconds); room for a busy 2-core machine, where the
#: loop's thread waits for the GIL and the CPU behind the pool's threads (a few ms typically,
#: up to ~0.2 s seen under load).
MAX_STALL = 0.5


class Ticker:
    """Wakes every 2 ms on the running loop and keeps the longest gap between two wake-ups."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self.ticks = 0
        self._stop = asyncio.Event()

    async def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            await asyncio.sleep(0.002)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            self.ticks += 1
            last = now

    async def around(self, work: Awaitable[_T]) -> _T:
        """``work``, awaited while ticking."""
        task = asyncio.create_task(self._run())
        await asyncio.sleep(0)  # the ticker starts before the work does
        try:
            return await work
        finally:
            self._stop.set()
            await task


def run_ticking(work: Callable[[], Awaitable[_T]]) -> tuple[_T, Ticker]:
    """Run ``work()`` in a new event loop under a :class:`Ticker`."""
    ticker = Ticker()
    result = asyncio.run(ticker.around(work()))
    return result, ticker


def async_url(db_url: str) -> str:
    """The URL of the application's async engine on the test database."""
    if db_url.startswith("sqlite:"):
        return db_url.replace("sqlite:", "sqlite+aiosqlite:", 1)
    assert db_url.startswith("postgresql+psycopg:"), db_url  # psycopg 3 speaks both
    return db_url


@pytest.fixture(
    params=[
        pytest.param("postgres_db", marks=[pytest.mark.postgres, pytest.mark.redis], id="psycopg-async"),
        pytest.param("sqlite_db", marks=pytest.mark.redis, id="aiosqlite"),
    ]
)
def async_scenario(request: pytest.FixtureRequest, redis_url: str, tmp_path: Path) -> Iterator[Scenario]:
    """Real Redis, and PostgreSQL (psycopg 3 async) or a SQLite file (aiosqlite) in turn."""
    db_url = str(request.getfixturevalue(request.param))
    for scenario in make_scenario(request, redis_url, db_url, tmp_path):
        request.getfixturevalue("bindings").append((redis_url, scenario.queue))
        yield scenario


def _statuses(db_url: str) -> list[tuple[str, str, str]]:
    return [(r.task_id, r.source, r.status) for r in pending_rows(db_url)]


# -- apublish() --------------------------------------------------------------------------------


def test_apublish_sends_or_keeps_like_publish_without_holding_the_loop(
    async_scenario: Scenario, apps: AppFactory
) -> None:
    scenario = async_scenario
    app = apps(scenario.broker_url, scenario.db.url, scenario.queue)
    down = apps(
        dead_broker(scenario.broker_url), scenario.db.url, scenario.queue,
        reliable_publish_retries=2, reliable_publish_retry_backoff=0.2,
    )  # fmt: skip
    nowhere = apps(
        dead_broker(scenario.broker_url), f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none",
        scenario.queue, reliable_publish_retries=0,
    )  # fmt: skip

    async def work() -> dict[str, Any]:
        # Given a live broker: 40 messages published at once, one with the caller's own id
        sent = await asyncio.gather(*(apublish(app, "t.ok", [f"a-{i}"]) for i in range(39)))
        sent.append(await apublish(app, "t.ok", kwargs={"key": "a-own"}, task_id="own-async-id"))
        # a dead broker: retried with asyncio.sleep, then kept in the pending table
        kept = await asyncio.gather(*(apublish(down, "t.ok", [f"k-{i}"]) for i in range(5)))
        # bad input: refused before anything is sent or stored, as publish() refuses it
        refused = []
        for args in ([object()], "not-a-list"):
            with pytest.raises(BadMessageError) as info:
                await apublish(app, "t.ok", args)
            refused.append(str(info.value))
        # neither the broker nor the database: the caller is told
        with pytest.raises(PublishError, match="neither sent"):
            await apublish(nowhere, "t.ok", ["lost"])
        return {"sent": sent, "kept": kept, "refused": refused}

    found, ticker = run_ticking(work)
    # Then every message is where publish() would have put it
    sent, kept = found["sent"], found["kept"]
    assert [(r.sent, r.pending_id, r.error) for r in sent] == [(True, None, None)] * 40
    assert sent[-1].task_id == "own-async-id"
    assert sorted(queued_ids(scenario.broker_url, scenario.queue)) == sorted(r.task_id for r in sent)
    assert [(r.sent, r.pending) for r in kept] == [(False, True)] * 5
    assert all("OperationalError" in (r.error or "") for r in kept)
    assert sorted(_statuses(scenario.db.url)) == sorted((r.task_id, "publish_fallback", "pending") for r in kept)
    assert "cannot be stored as JSON" in found["refused"][0]
    assert "args must be a list or a tuple" in found["refused"][1]
    # and the loop was never held longer than MAX_STALL while 5 x 3 sends failed and were retried
    assert ticker.max_gap < MAX_STALL, ticker.max_gap
    # The relay sends the kept ones, with the ids apublish() returned
    stats = relay_once(app)
    assert (stats.claimed, stats.sent) == (5, 5)
    assert sorted(queued_ids(scenario.broker_url, scenario.queue)) == sorted(r.task_id for r in sent + kept)


@pytest.mark.rabbitmq
def test_a_cancelled_apublish_still_ends_with_its_message_sent_or_kept(
    async_scenario: Scenario, apps: AppFactory
) -> None:
    """A client gone or a timeout around ``apublish()``: the message is not dropped with the call."""
    scenario = async_scenario
    app = apps(scenario.broker_url, scenario.db.url, scenario.queue)
    down = apps(
        dead_broker(scenario.broker_url), scenario.db.url, scenario.queue,
        reliable_publish_retries=3, reliable_publish_retry_backoff=2.0,
    )  # fmt: skip

    async def work() -> None:
        # a dead broker: cancelled during its first try or the wait after it (tries take seconds)
        for i in range(3):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(apublish(down, "t.ok", [i], task_id=f"gone-{i}"), 0.05 + 0.3 * i)
        # a live broker: cancelled as soon as its first try is handed to the pool
        for i in range(10):
            task = asyncio.create_task(apublish(app, "t.ok", [i], task_id=f"live-{i}"))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run_ticking(work)
    # Then (once the pool has finished what the calls left) each message is in exactly one place
    live = {f"live-{i}" for i in range(10)}
    gone = {f"gone-{i}" for i in range(3)}

    def placed() -> bool:
        return len(pending_rows(scenario.db.url)) + len(queued_ids(scenario.broker_url, scenario.queue)) >= 13

    wait_for(placed, 30, what="the cancelled calls' messages to be sent or kept")
    time.sleep(0.3)  # anything still on its way would show now
    queued = queued_ids(scenario.broker_url, scenario.queue)
    kept = [(r.task_id, r.source, r.status) for r in pending_rows(scenario.db.url)]
    assert sorted(queued + [task_id for task_id, _, _ in kept]) == sorted(live | gone)
    assert {(task_id, source, status) for task_id, source, status in kept if task_id in gone} == {
        (task_id, "publish_fallback", "pending") for task_id in gone
    }
    # and the relay sends what was kept: every message in the queue once
    relay_once(app)
    assert sorted(queued_ids(scenario.broker_url, scenario.queue)) == sorted(live | gone)


def test_apublish_on_rabbitmq_is_confirmed(amqp_url: str, sqlite_db: str, queue: str, apps: AppFactory) -> None:
    db = migrated(sqlite_db)
    app = apps(amqp_url, db, queue)

    async def work() -> list[Any]:
        return list(await asyncio.gather(*(apublish(app, "t.ok", [f"r-{i}"]) for i in range(20))))

    results, ticker = run_ticking(work)
    # every one confirmed by the broker (publisher confirms, from the pool's threads), none kept
    assert [(r.sent, r.pending_id) for r in results] == [(True, None)] * 20
    assert sorted(queued_ids(amqp_url, queue)) == sorted(r.task_id for r in results)
    assert pending_rows(db) == []
    assert ticker.max_gap < MAX_STALL, ticker.max_gap


# -- outbox(async_session) ---------------------------------------------------------------------


async def _outbox_cases(engine: AsyncEngine, app: Any) -> dict[str, Any]:
    """Commits, rollbacks, a savepoint, an exception and bad input; returns the sent task ids."""
    sent: dict[str, str] = {}
    counts: list[int] = []
    # A business write and a message in one transaction; nothing visible before the commit
    async with AsyncSession(engine) as session:
        session.add(Attempt(key="order-1", count=1))
        box = outbox(session, app)
        assert isinstance(box, AsyncOutbox)
        sent["aout-1"] = box.send("t.ok", ["aout-1"])
        await session.flush()
        visible_before_commit = len(await asyncio.to_thread(pending_rows, str(app.conf.reliable_database_url)))
        await session.commit()
        counts.append(await box.published())
    # Several messages inside session.begin()
    async with AsyncSession(engine) as session, session.begin():
        box = outbox(session, app)
        for i in range(3):
            sent[f"aout-batch-{i}"] = box.send("t.ok", [f"aout-batch-{i}"])
        session.add(Attempt(key="order-batch", count=1))
    counts.append(await box.published())
    # A rollback: nothing; then the same session commits another message, only that one goes out
    async with AsyncSession(engine) as session:
        session.add(Attempt(key="order-rolled-back", count=1))
        box = outbox(session, app)
        box.send("t.ok", ["aout-rolled-back"])
        await session.flush()
        await session.rollback()
        sent["aout-after-rollback"] = box.send("t.ok", ["aout-after-rollback"])
        await session.commit()
        counts.append(await box.published())
    # A savepoint rolled back drops what was staged in it, and only that
    async with AsyncSession(engine) as session:
        box = outbox(session, app)
        sent["aout-outer"] = box.send("t.ok", ["aout-outer"])
        nested = await session.begin_nested()
        box.send("t.ok", ["aout-savepoint"])
        await session.flush()
        await nested.rollback()
        await session.commit()
        counts.append(await box.published())
    # A session closed after a flush, then used again: only what its new transaction staged goes out
    session = AsyncSession(engine)
    box = outbox(session, app)
    box.send("t.ok", ["aout-closed-flushed"])
    await session.flush()
    await session.close()
    sent["aout-reused"] = box.send("t.ok", ["aout-reused"])
    await session.commit()
    counts.append(await box.published())
    await session.close()
    # An exception inside session.begin(), and a session closed without commit: nothing
    with pytest.raises(RuntimeError):
        async with AsyncSession(engine) as session, session.begin():
            outbox(session, app).send("t.ok", ["aout-exception"])
            raise RuntimeError("business logic failed")
    async with AsyncSession(engine) as session:
        outbox(session, app).send("t.ok", ["aout-closed"])
    # Bad input is refused at send(), before anything is staged
    async with AsyncSession(engine) as session:
        with pytest.raises(PublishError, match="cannot be stored as JSON"):
            outbox(session, app).send("t.ok", [object()])
        await session.commit()
    return {"sent": sent, "counts": counts, "visible_before_commit": visible_before_commit}


def test_async_outbox_sends_after_commit_and_nothing_after_a_rollback(
    async_scenario: Scenario, apps: AppFactory
) -> None:
    scenario = async_scenario
    # a long grace: whatever is sent here was sent by the post-commit send, not by a relay
    app = apps(scenario.broker_url, scenario.db.url, scenario.queue, reliable_outbox_grace=300.0)

    async def work() -> dict[str, Any]:
        engine = create_async_engine(async_url(scenario.db.url))
        try:
            return await _outbox_cases(engine, app)
        finally:
            await engine.dispose()

    found, ticker = run_ticking(work)
    sent: dict[str, str] = found["sent"]
    assert found["visible_before_commit"] == 0
    assert found["counts"] == [1, 3, 1, 1, 1]
    assert sorted(_statuses(scenario.db.url)) == sorted((tid, "outbox", "sent") for tid in sent.values())
    assert sorted(queued_ids(scenario.broker_url, scenario.queue)) == sorted(sent.values())
    with scenario.db.engine.connect() as conn:
        assert set(conn.scalars(select(Attempt.key))) == {"order-1", "order-batch"}
    assert ticker.max_gap < MAX_STALL, ticker.max_gap
    assert relay_once(app).claimed == 0


# -- a real worker runs them -------------------------------------------------------------------


def test_an_asyncio_app_publishes_and_a_worker_runs_each_message_once(
    async_scenario: Scenario, apps: AppFactory
) -> None:
    scenario = async_scenario
    app = apps(scenario.broker_url, scenario.db.url, scenario.queue, reliable_outbox_grace=300.0)
    scenario.worker()

    async def handler(engine: AsyncEngine, i: int) -> tuple[str, str]:
        """A request handler: a business write with its message, and a notification sent directly."""
        async with AsyncSession(engine) as session, session.begin():
            session.add(Attempt(key=f"order-{i}", count=1))
            box = outbox(session, app)
            staged = box.send("t.ok", [f"outbox-{i}"])
        await box.published()
        direct = await apublish(app, "t.ok", [f"direct-{i}"])
        return staged, direct.task_id

    async def work() -> list[tuple[str, str]]:
        engine = create_async_engine(async_url(scenario.db.url))
        try:
            return await asyncio.gather(*(handler(engine, i) for i in range(15)))
        finally:
            await engine.dispose()

    ids, ticker = run_ticking(work)
    expected = {f"outbox-{i}": [staged] for i, (staged, _direct) in enumerate(ids)}
    expected.update({f"direct-{i}": [direct] for i, (_staged, direct) in enumerate(ids)})
    wait_for(lambda: len(effects(scenario)) == 30, 60, what="30 effects")
    scenario.wait_empty()
    time.sleep(0.5)  # a late duplicate would show now
    assert effects(scenario) == expected
    assert ticker.max_gap < MAX_STALL, ticker.max_gap
    # the outbox rows are tracked until their task's outcome: the worker marks them done
    wait_for(lambda: sorted(r.status for r in pending_rows(scenario.db.url)) == ["done"] * 15, 20, what="15 rows done")


CRASH_PRODUCER = """
import asyncio, os
from celery import Celery
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from celery_reliable import outbox
from tests.apps.effects import Attempt

app = Celery("async-crash-producer", broker=os.environ["RT_BROKER"], set_as_current=False)
app.conf.update(
    reliable_database_url=os.environ["RT_DB"],
    task_default_queue=os.environ["RT_QUEUE"],
    reliable_outbox_grace=float(os.environ["RT_GRACE"]),
)

async def main():
    engine = create_async_engine(os.environ["RT_ASYNC_DB"])
    async with AsyncSession(engine) as session:
        # registered before the outbox's own hook, so it runs first: the commit is done, the send is not
        event.listen(session.sync_session, "after_commit", lambda s: os.kill(os.getpid(), 9))
        session.add(Attempt(key=os.environ["RT_KEY"] + "-order", count=1))
        print(outbox(session, app).send("t.ok", [os.environ["RT_KEY"]]), flush=True)
        await session.commit()
    print("not killed", flush=True)

asyncio.run(main())
"""


@pytest.mark.fault
def test_async_producer_killed_between_commit_and_send_is_relayed_once(
    async_scenario: Scenario, apps: AppFactory, tmp_path: Path
) -> None:
    scenario = async_scenario
    grace, key = 2.0, "aout-crash"
    script = tmp_path / "producer.py"
    script.write_text(CRASH_PRODUCER)
    env = dict(
        os.environ, PYTHONPATH=str(ROOT), RT_BROKER=scenario.broker_url, RT_DB=scenario.db.url,
        RT_ASYNC_DB=async_url(scenario.db.url), RT_QUEUE=scenario.queue, RT_GRACE=str(grace), RT_KEY=key,
    )  # fmt: skip
    # Given an asyncio producer SIGKILLed right after its commit, before the post-commit send
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr[-3000:]
    task_id = proc.stdout.strip()
    assert task_id and "not killed" not in proc.stdout
    # Then the commit stands: the business write and the outbox row, and nothing in the broker
    with scenario.db.engine.connect() as conn:
        assert set(conn.scalars(select(Attempt.key))) == {f"{key}-order"}
    (row,) = pending_rows(scenario.db.url)
    assert (row.task_id, row.status, row.source, row.attempts) == (task_id, "pending", "outbox", 0)
    assert scenario.depth() == (0, 0)
    # A relay inside the grace period leaves it alone; after it, the relay sends it, once
    relay = apps(scenario.broker_url, scenario.db.url, scenario.queue)
    assert relay_once(relay).claimed == 0
    time.sleep(max(0.0, (row.next_attempt_at - datetime.now(timezone.utc)).total_seconds()) + 0.3)
    stats = relay_once(relay)
    assert (stats.claimed, stats.sent) == (1, 1)
    assert relay_once(relay).claimed == 0
    scenario.worker()
    wait_for(lambda: effects(scenario).get(key), 30, what="the relayed outbox message ran")
    scenario.wait_empty()
    time.sleep(0.5)
    assert effects(scenario) == {key: [task_id]}
    wait_for(lambda: _statuses(scenario.db.url) == [(task_id, "outbox", "done")], 10, what="the row marked done")
