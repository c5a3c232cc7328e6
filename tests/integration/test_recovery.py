"""Recovery in seconds (Redis): a killed worker's messages run again within seconds, at the default
visibility timeout (600 s); a worker that is merely slow keeps its messages."""

from __future__ import annotations

import time

import pytest
import redis

from celery_reliable.broker import redis_liveness as live
from tests.conftest import Scenario
from tests.harness import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def _client(scenario: Scenario) -> redis.Redis:
    return redis.Redis.from_url(scenario.broker_url)


def _alive(scenario: Scenario) -> set[str]:
    client = _client(scenario)
    try:
        return {m.decode() for m in client.zrange(live.ALIVE, 0, -1)}
    finally:
        client.close()


def test_a_killed_workers_messages_run_again_within_seconds(redis_sqlite_scenario: Scenario) -> None:
    scenario = redis_sqlite_scenario
    # Given two workers at the library's defaults (visibility timeout 600 s), each running slow tasks
    first = scenario.worker("w1", concurrency=2)
    scenario.worker("w2", concurrency=2)
    wait_for(lambda: len(_alive(scenario)) >= 2, 20, what="both workers' heartbeats")
    keys = [f"slow-{i}" for i in range(8)]
    for key in keys:
        scenario.send("t.slow", key, 3.0, task_id=key)
    wait_for(lambda: first.output().count("received") >= 2, 20, what="the first worker holding messages")
    # When the first worker (main process and pool) is SIGKILLed
    first.kill()
    killed_at = time.monotonic()
    # Then every message runs, the killed worker's included, long before the visibility timeout
    wait_for(lambda: all(scenario.db.counts().effect(k) >= 1 for k in keys), 60, what="every slow task done")
    took = time.monotonic() - killed_at
    scenario.wait_empty(20)
    counts = scenario.db.counts()
    assert [counts.effect(k) for k in keys] == [1] * len(keys)  # killed mid-sleep: no effect, then exactly one
    assert scenario.db.failed_rows() == []
    # the killed worker's 2 held messages ran again after it died; others waited in the queue behind
    assert took < 30, took
    assert "is gone" in scenario.workers[1].output()


def test_a_worker_running_a_long_task_keeps_its_message(redis_sqlite_scenario: Scenario) -> None:
    scenario = redis_sqlite_scenario
    # Given a worker running a task for 12 s (12 heartbeats) and another, idle, worker watching
    busy = scenario.worker("w1", concurrency=1)
    scenario.send("t.slow", "long-1", 12.0, task_id="long-1")
    wait_for(lambda: "long-1" in busy.output() and "received" in busy.output(), 20, what="the long task started")
    watcher = scenario.worker("w2", concurrency=1)
    wait_for(lambda: len(_alive(scenario)) >= 2, 20, what="both workers' heartbeats")
    # Then it runs once: its message is never given back while its worker is alive
    wait_for(lambda: scenario.db.counts().effect("long-1") >= 1, 40, what="the long task done")
    scenario.wait_empty(20)
    assert scenario.db.counts().effect("long-1") == 1
    assert "long-1" not in watcher.output()
    assert "is gone" not in watcher.output()


def test_several_workers_noticing_at_once_give_each_message_back_once(redis_sqlite_scenario: Scenario) -> None:
    scenario = redis_sqlite_scenario
    # Given a worker holding two messages and three live workers that all look for lost ones
    doomed = scenario.worker("w0", concurrency=2)
    # (slow on their first run: still held however long the watchers take to start on a busy machine)
    scenario.send("t.slow_first", "held-1", 120.0, task_id="held-1")
    scenario.send("t.slow_first", "held-2", 120.0, task_id="held-2")
    wait_for(lambda: doomed.output().count("received") >= 2, 20, what="the doomed worker holding both")
    watchers = [scenario.worker(f"w{i}", concurrency=1) for i in (1, 2, 3)]
    wait_for(lambda: len(_alive(scenario)) >= 4, 20, what="four heartbeats")
    assert scenario.db.counts().effect("held-1") + scenario.db.counts().effect("held-2") == 0
    # When it is killed
    doomed.kill()
    # Then each of its messages runs exactly once more, whichever watcher gave it back
    wait_for(lambda: all(scenario.db.counts().effect(k) >= 1 for k in ("held-1", "held-2")), 40, what="both ran")
    time.sleep(3)  # a second give-back would have queued a second run by now
    scenario.wait_empty(20)
    counts = scenario.db.counts()
    assert (counts.effect("held-1"), counts.effect("held-2")) == (1, 1)
    gave_back = sum("is gone" in w.output() for w in watchers)
    assert gave_back == 1


def test_a_killed_workers_scheduled_retry_comes_back_in_seconds(redis_sqlite_scenario: Scenario) -> None:
    scenario = redis_sqlite_scenario
    # Given a worker holding a retry due in 10 s (kombu keeps such a message in `unacked` meanwhile)
    holder = scenario.worker("w1", concurrency=1)
    scenario.send("t.retry_later", "later-kill-1", 10.0, task_id="later-kill-1")
    received = "t.retry_later[later-kill-1] received"
    wait_for(lambda: holder.output().count(received) >= 2, 20, what="the retry received and held")
    other = scenario.worker("w2", concurrency=1)
    wait_for(lambda: len(_alive(scenario)) >= 2, 20, what="both workers' heartbeats")
    # When the holder is SIGKILLed before the retry is due
    holder.kill()
    killed_at = time.monotonic()
    # Then the other worker gets the retry within seconds and runs it when it is due, once
    wait_for(lambda: received in other.output(), 15, what="the retry given to the live worker")
    assert time.monotonic() - killed_at < 10
    wait_for(lambda: scenario.db.counts().effect("later-kill-1") >= 1, 30, what="the retry ran")
    scenario.wait_empty(20)
    assert scenario.db.counts().effect("later-kill-1") == 1
