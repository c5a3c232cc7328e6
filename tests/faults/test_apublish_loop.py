"""``apublish()`` never holds the event loop: while it sends, and while it retries a killed broker.

A private redis-server takes 20 messages from an asyncio producer; then it is SIGKILLed and 10
more are published: each is tried 1 + 3 times with backoff and kept in the pending table. A
ticker on the loop measures the longest gap between its wake-ups through both phases. For
contrast the same outage is met by ``publish()`` called on the loop (what an asyncio app without
``apublish()`` would do): the loop stands still for the whole of it. Then the server is started
again on the same port and data, the relay sends the kept messages, and a real worker runs each
of the 30 exactly once, under the id ``apublish()`` returned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from celery_reliable import PublishResult, apublish, publish, relay_once
from tests.faults.conftest import private_redis_scenario
from tests.harness import RedisServer, wait_for
from tests.integration.test_asyncio import MAX_STALL, Ticker
from tests.integration.test_publish import close_app, effects, make_app, pending_rows

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]


def test_apublish_keeps_the_loop_running_while_it_sends_and_while_the_broker_is_dead(
    request: pytest.FixtureRequest, redis_servers: Callable[..., RedisServer], postgres_db: str, tmp_path: Path
) -> None:
    server = redis_servers(persistent=True)
    scenarios = private_redis_scenario(request, server, postgres_db, tmp_path)
    scenario = next(scenarios)
    app = make_app(
        server.url, scenario.db.url, scenario.queue,
        reliable_publish_retries=3, reliable_publish_retry_backoff=1.0, reliable_publish_timeout=2.0,
    )  # fmt: skip
    try:
        # Given a live broker: 20 messages, 5 at a time
        async def live() -> list[PublishResult]:
            results: list[PublishResult] = []
            for start in range(0, 20, 5):
                batch = range(start, start + 5)
                results += await asyncio.gather(*(apublish(app, "t.ok", [f"live-{i}"]) for i in batch))
            return results

        up = Ticker()
        sent = asyncio.run(up.around(live()))
        assert [r.sent for r in sent] == [True] * 20
        assert up.max_gap < MAX_STALL, up.max_gap

        # When the broker is SIGKILLed: 10 more, each retried with backoff, then kept
        server.kill()

        async def dead() -> tuple[list[PublishResult], float]:
            started = time.monotonic()
            results = await asyncio.gather(*(apublish(app, "t.ok", [f"dead-{i}"]) for i in range(10)))
            return list(results), time.monotonic() - started

        down = Ticker()
        kept, took = asyncio.run(down.around(dead()))
        assert [(r.sent, r.pending_id is not None) for r in kept] == [(False, True)] * 10
        # Then the loop ticked all along: no gap near the time the retries took
        assert down.max_gap < MAX_STALL, (down.max_gap, took)
        assert down.max_gap < took / 4, (down.max_gap, took)  # retried with waits of about a second
        assert down.ticks > took / 0.05  # woke at least every 50 ms on average

        # For contrast: publish() called on the loop holds it for its whole outage handling
        async def blocking() -> tuple[PublishResult, float]:
            started = time.monotonic()
            result = publish(app, "t.ok", ["blocking"])
            return result, time.monotonic() - started

        held = Ticker()
        blocked, blocked_took = asyncio.run(held.around(blocking()))
        assert blocked.sent is False
        assert held.max_gap >= 0.9 * blocked_took

        # And nothing is lost: the broker comes back, the relay sends the kept 11, a worker runs all 31 once
        server.start()
        stats = relay_once(app)
        assert (stats.claimed, stats.sent, stats.failed) == (11, 11, 0)
        scenario.worker()
        expected = {f"live-{i}": [r.task_id] for i, r in enumerate(sent)}
        expected.update({f"dead-{i}": [r.task_id] for i, r in enumerate(kept)})
        expected["blocking"] = [blocked.task_id]
        wait_for(lambda: len(effects(scenario)) == 31, 60, what="31 effects")
        scenario.wait_empty()
        time.sleep(0.5)  # a late duplicate would show now
        assert effects(scenario) == expected
        assert sorted(r.source for r in pending_rows(scenario.db.url)) == ["publish_fallback"] * 11
    finally:
        close_app(app)
        scenarios.close()
