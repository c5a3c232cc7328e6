"""The chaos scenarios: each takes a fresh :class:`~tests.chaos.harness.Run`, makes messages
flow, breaks something, and returns the counted :class:`~tests.chaos.harness.Result`.

Sizes and timings are small on purpose (two cores): every scenario finishes in well under a
minute, and every loop is bounded in rounds and seconds.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

from tests.chaos.harness import Result, Run, bounded
from tests.harness import wait_for


def _interleave(main: list[list[Any]], extra: list[list[Any]]) -> list[list[Any]]:
    """``extra`` spread evenly through ``main``."""
    if not extra:
        return main
    step = max(1, len(main) // (len(extra) + 1))
    out = list(main)
    for i, message in enumerate(extra):
        out.insert(min(len(out), (i + 1) * step + i), message)
    return out


def _committed_at_least(run: Run, n: int, timeout: float = 60) -> None:
    wait_for(lambda: run.snapshot()["committed"] >= n, timeout, interval=0.1, what=f"{n} rows committed")


def _sleep(run: Run, seconds: float) -> None:
    """Sleep, restarting a worker that exits by itself meanwhile."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        run.supervise()
        time.sleep(min(0.25, max(0.0, end - time.monotonic())))


def worker_kill(run: Run, kills: int = 3) -> Result:
    """The whole worker (main process and pool) SIGKILLed while a task runs, a few times."""
    worker = run.worker()
    producer = run.producer(run.messages(45, "chaos.idem", 0.3), interval=0.1)
    for _ in bounded(kills, 90)():
        running = run.wait_in_flight(tag="-m-")
        worker = run.kill_worker(worker, running)
        _sleep(run, 1.0)
    producer.wait(120)
    return run.finish()


def fetch_kill(run: Run, count: int = 1200, kills: int = 6) -> Result:
    """A backlog of short tasks drained as fast as the worker can while the whole worker is
    SIGKILLed at random moments: with kombu's fetch (BRPOP, then the unacked record in a second
    round trip) a kill between the two takes a message out of Redis for good."""
    run.produce(run.messages(count, "chaos.idem", 0.0))
    worker = run.worker()
    rng = random.Random()
    for _ in bounded(kills, 90)():
        _sleep(run, rng.uniform(0.3, 1.2))
        if run.broker.ready_count(run.queue) == 0:
            break
        worker = run.kill_worker(worker)
    return run.finish()


def child_kill(run: Run, kills: int = 3, poison: int = 2) -> Result:
    """A pool process SIGKILLed in the middle of a task, a few times; plus tasks that kill their
    pool process on every attempt."""
    run.worker()
    messages = _interleave(run.messages(30, "chaos.idem", 0.5), run.messages(poison, "chaos.kill_always", tag="k"))
    producer = run.producer(messages, interval=0.1)
    for _ in bounded(kills, 90)():
        for _attempt in bounded(50, 30)():
            pids = {pid for w in run.workers if w.alive() for pid in w.pool_pids()}
            mine = [(key, pid) for key, pid in run.wait_in_flight(tag="-m-", within=0.4) if pid in pids]
            if mine:
                os.kill(mine[0][1], signal.SIGKILL)  # a pool process of this run's worker only
                run.targeted.add(mine[0][0])
                run.result.faults += 1
                break
            time.sleep(0.1)
        _sleep(run, 1.5)
    producer.wait(120)
    return run.finish(poison=poison)


def broker_outage(run: Run, outage: float = 5.0) -> Result:
    """Every connection to the broker cut (producer and workers) for a few seconds while
    messages are published, then restored."""
    run.worker()
    if run.mode == "reliable":
        run.beat()
    producer = run.producer(run.messages(50, "chaos.idem", 0.1), interval=0.1)
    _committed_at_least(run, 15)
    run.broker.cut()
    run.result.faults += 1
    _sleep(run, outage)
    run.broker.restore()
    producer.wait(180)
    return run.finish()


def broker_crash(run: Run, down: float = 2.0) -> Result:
    """The private redis-server SIGKILLed with a backlog queued, restarted on the same port and
    data directory (with AOF ``always`` the backlog survives; without persistence it is gone)."""
    run.worker(concurrency=1)
    if run.mode == "reliable":
        run.beat()
    producer = run.producer(run.messages(50, "chaos.idem", 0.2), interval=0.05)
    _committed_at_least(run, 30)
    run.broker.crash()
    run.result.faults += 1
    time.sleep(down)
    run.broker.restart()
    producer.wait(180)
    return run.finish()


def broker_flush(run: Run) -> Result:
    """``FLUSHALL`` on the broker while messages are queued, held by the worker and on their way
    (an operator's mistake, an eviction, a failover to an empty replica): Redis drops what it had
    accepted, and nothing in it will run those messages."""
    run.worker(concurrency=1)
    if run.mode == "reliable":
        run.beat()
    producer = run.producer(run.messages(50, "chaos.idem", 0.2), interval=0.05)
    _committed_at_least(run, 30)
    run.broker.flushall()
    run.result.faults += 1
    producer.wait(180)
    return run.finish()


def sentinel_failover(run: Run) -> Result:
    """Redis behind Sentinel (a primary, a replica, a sentinel; no persistence): the replica is cut
    off from the primary and misses every write that follows while messages flow, then the primary
    is SIGKILLed and the sentinel promotes the replica, which lacks the last writes (asynchronous
    replication: what a failover does when the replica lags). Clients use ``sentinel://`` URLs."""
    sentinels = run.broker.sentinels
    assert sentinels is not None
    run.worker(concurrency=1)
    if run.mode == "reliable":
        run.beat()
    producer = run.producer(run.messages(50, "chaos.idem", 0.2), interval=0.05)
    _committed_at_least(run, 15)
    sentinels.lag_replica()
    _committed_at_least(run, 35)
    sentinels.fail_primary()
    run.result.faults += 1
    sentinels.wait_promoted()
    producer.wait(180)
    return run.finish()


def slow_worker(run: Run, pause: float = 8.0) -> Result:
    """A worker that is slow, not dead: its tasks run for 12 s, and its main process is stopped
    (SIGSTOP) for ``pause`` seconds, longer than three heartbeats, as a stop-the-world pause or a
    starved CPU would, while a second worker watches and takes other work. Nothing it holds may be
    given to another worker: every task starts exactly once (tasks are not idempotent)."""
    slow = run.worker("w1")
    run.produce(run.messages(2, "chaos.work", 12.0, tag="s"), name="p1")
    wait_for(lambda: len(run.in_flight(tag="-s-", within=12.0)) == 2, 30, interval=0.1, what="both slow tasks running")
    run.worker("w2")
    assert slow.proc is not None
    os.kill(slow.proc.pid, signal.SIGSTOP)  # the main process only: its pool keeps running
    run.result.faults += 1
    try:
        producer = run.producer(run.messages(20, "chaos.work", 0.1), interval=0.1, name="p2")
        time.sleep(pause)
    finally:
        os.kill(slow.proc.pid, signal.SIGCONT)
    producer.wait(120)
    return run.finish()


def producer_kill(run: Run, producers: int = 3, each: int = 6, kill_at: int = 3) -> Result:
    """Producers SIGKILLed after committing a row and before its message left."""
    run.worker()
    if run.mode == "reliable":
        run.beat()
    for i in range(producers):
        code = run.produce(run.messages(each, "chaos.idem", tag=f"p{i}"), kill_at=kill_at, name=f"p{i}")
        assert code == -signal.SIGKILL, f"producer {i} exited with {code}, expected to be killed"
        run.result.faults += 1
    return run.finish()


def db_down(run: Run, poison: int = 4, outage: float = 6.0) -> Result:
    """The database (a private PostgreSQL cluster) stopped while final failures are being stored
    and while pending messages wait for the relay, then started again."""
    run.worker()
    if run.mode == "reliable":
        run.beat()
    first = _interleave(run.messages(12, "chaos.idem", 0.1), run.messages(poison, "chaos.poison", tag="x"))
    run.produce(first, name="p1")
    wait_for(lambda: run.in_flight(tag="-x-") or run.snapshot()["stored"], 20, interval=0.05, what="poison running")
    run.broker.cut()  # the next messages cannot be sent: kept as pending (or lost, plain)
    run.result.faults += 1
    run.produce(run.messages(8, "chaos.idem", 0.1, tag="q"), name="p2")
    run.db.stop()  # failures cannot be stored, effects cannot be written, the relay cannot claim
    run.result.faults += 1
    run.broker.restore()
    started = time.monotonic()
    if run.mode == "reliable":
        run.relay_pass("relay-db-down")  # raises inside, keeps every row pending
    _sleep(run, max(0.0, outage - (time.monotonic() - started)))
    run.db.start()
    return run.finish(poison=poison)


def flaky_poison(run: Run, poison: int = 5) -> Result:
    """About 30% of attempts fail with a transient error; a few messages fail on every attempt."""
    run.worker()
    messages = _interleave(run.messages(45, "chaos.flaky", 0.02), run.messages(poison, "chaos.poison", tag="x"))
    run.produce(messages)
    return run.finish(poison=poison)


def two_relays(run: Run) -> Result:
    """Two beats scheduling the relay every second, two workers running it, and two more
    processes running relay passes, all at once, on messages the producers (publish() and the
    outbox) could not send: the producers' broker is cut before they connect, so no send is
    left in doubt and every message goes through the pending table. Tasks are not idempotent: a
    message relayed twice would show as a duplicate effect."""
    run.broker.cut()  # refused before any byte is sent: every message is kept pending
    run.result.faults += 1
    run.worker("w1")
    run.worker("w2")
    run.beat("b1")
    run.beat("b2")
    p1 = run.producer(run.messages(30, "chaos.work", 0.05, tag="a"), interval=0.05, name="p1", publishing="publish")
    # fewer here: on RabbitMQ a post-commit send to a refusing broker waits out reliable_publish_timeout
    p2 = run.producer(run.messages(12, "chaos.work", 0.05, tag="b"), interval=0.05, name="p2", publishing="outbox")
    relays = [run.relay_process(f"relay-{n}", passes=12, pause=0.5) for n in "ab"]
    p1.wait(180)
    p2.wait(180)
    for relay in relays:
        relay.wait(90)
    run.broker.restore()
    return run.finish()


#: name -> (function, Run options, which (mode, publishing) pairs, brokers)
Scenario = tuple[Callable[..., Result], dict[str, Any], list[tuple[str, str]], tuple[str, ...]]
PLAIN = [("plain_default", "apply_async"), ("plain_tuned", "apply_async")]
BOTH = ("redis", "rabbitmq")
SCENARIOS: dict[str, Scenario] = {
    "worker_kill": (worker_kill, {}, [("reliable", "publish"), *PLAIN], BOTH),
    "fetch_kill": (fetch_kill, {}, [("reliable", "publish"), *PLAIN], ("redis",)),
    # ReliableTask with reliable_redis_atomic_fetch off: what kombu's fetch alone loses
    "fetch_kill_kombu": (fetch_kill, {"env": {"CHAOS_ATOMIC_FETCH": "0"}}, [("reliable", "publish")], ("redis",)),
    "child_kill": (child_kill, {}, [("reliable", "publish"), *PLAIN], BOTH),
    "broker_outage": (broker_outage, {"proxy": True}, [("reliable", "publish"), ("reliable", "outbox"), *PLAIN], BOTH),
    "broker_crash_aof": (broker_crash, {"persistent": True}, [("reliable", "publish"), *PLAIN], ("redis",)),
    # publish() sends directly (no ledger row): what Redis drops is lost; the outbox's rows resend it
    "broker_crash_nopersist": (
        broker_crash,
        {"persistent": False},
        [("reliable", "publish"), ("reliable", "outbox"), *PLAIN],
        ("redis",),
    ),
    "sentinel_failover": (
        sentinel_failover,
        {"persistent": False, "sentinel": True},
        [("reliable", "outbox"), *PLAIN],
        ("redis",),
    ),
    "broker_flush": (broker_flush, {"persistent": False}, [("reliable", "outbox"), *PLAIN], ("redis",)),
    # the library's default visibility timeout (600 s; plain Celery: kombu's hour): a dead worker's
    # messages come back from its lapsed heartbeat, not from the timeout
    "worker_kill_default_vt": (
        worker_kill,
        {"env": {"CHAOS_VT": "default"}},
        [("reliable", "publish"), *PLAIN],
        ("redis",),
    ),
    # the same without the heartbeats: the dead worker's messages wait out the 600 s timeout
    "worker_kill_default_vt_noheartbeat": (
        worker_kill,
        {"env": {"CHAOS_VT": "default", "CHAOS_HEARTBEAT": "off"}},
        [("reliable", "publish")],
        ("redis",),
    ),
    "slow_worker": (slow_worker, {"env": {"CHAOS_VT": "default"}}, [("reliable", "publish")], ("redis",)),
    "producer_kill": (producer_kill, {}, [("reliable", "outbox"), ("reliable", "publish"), PLAIN[0]], BOTH),
    "db_down": (db_down, {"proxy": True, "private_db": True}, [("reliable", "publish"), *PLAIN], BOTH),
    "flaky_poison": (flaky_poison, {}, [("reliable", "publish"), *PLAIN], BOTH),
    "two_relays": (two_relays, {"proxy": True, "workers_direct": True}, [("reliable", "publish+outbox")], BOTH),
}
