"""Publishing cost of celery_reliable against plain Celery, on Redis, RabbitMQ and PostgreSQL.

    python -m bench.bench_publish [--n 20000] [--n-amqp 10000] [--n-single 2000] [--n-outbox 500]
                                  [--runs 3] [--batch 500] [--claim-sizes 1000,10000,100000]
                                  [--batch-sizes 100,500,2000,5000] [--n-relays 20000]
                                  [--relay-counts 1,2,4] [--sections redis,amqp,...]

Sections (all in one run, each against plain Celery on the same broker):

    1  relay drain PostgreSQL -> Redis: N pending rows sent by ``relay_once``, against a loop of
       ``apply_async`` over the same N messages
    2  relay drain PostgreSQL -> RabbitMQ with publisher confirms, against a loop of
       ``apply_async`` with ``confirm_publish`` (one confirm awaited per message)
    3  ``publish()`` on a healthy broker against ``apply_async``: Redis; RabbitMQ (publish()
       confirms each message: against apply_async with and without ``confirm_publish``)
    4  outbox: time from ``session.commit()`` to the message in Redis (a consumer thread BRPOPs
       the queue), post-commit fast path; plain "commit, then apply_async" for reference
    5  relay claim cost against the size of the pending table (all due; or sent rows kept for
       ``reliable_pending_retention`` plus a due backlog; up to 1M rows, filled in PostgreSQL
       itself) and against the batch size, and EXPLAIN (ANALYZE, BUFFERS) of the claim
    6  relay drain rate to Redis against the batch size
    7  where the relay's time goes: its steps one after another, timed, then under cProfile
    8  scale out: 1, 2 and 4 relay processes at once draining one table of N pending rows into
       Redis (each process its own app and engine, started together), against one relay and an
       ``apply_async`` loop; every message checked to be in Redis exactly once (``bench.scale_out``)

Everything runs on 127.0.0.1: a PostgreSQL database created and dropped here (next to
``--pg-url``), Redis db ``--redis-db`` with every key under a unique prefix (kombu's
``global_keyprefix``; deleted at the end, the server is never flushed or reconfigured), and a
RabbitMQ queue (and its exchange) of a unique name, deleted at the end. Every loop is bounded in
count and time.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.orm import Session, sessionmaker

from bench import scale_out
from bench.bench_consumer import Store, code_version, delete_keys, environment, loadavg, log, proc_cpu, require_loopback

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TASK = "bench.publish.noop"
PENDING = "celery_reliable_pending_message"
#: The partial index on open rows (migration 0003) that the claim must use.
OPEN_INDEX = "ix_celery_reliable_pending_message_open"
SECTIONS = ("redis", "amqp", "single", "outbox", "claim", "batch", "profile", "relays")

#: Targets of the brief.
TARGET_RELAY_REDIS_RATIO = 25.0
TARGET_RELAY_AMQP_RATIO = 8.0
TARGET_PUBLISH_OVERHEAD = 0.10
TARGET_OUTBOX_P50_MS = 2.0
TARGET_OUTBOX_P99_MS = 5.0


def payload(i: int) -> tuple[list[Any], dict[str, Any]]:
    """The arguments of message ``i``: small, JSON, a little varied."""
    return [i, f"order-{i:08d}"], {"customer": f"c-{i % 997}", "amount": i % 1000 + 0.5, "lines": [1, 2, 3]}


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def make_app(
    name: str, broker: str, queue: str, *, db_url: str = "", transport: dict[str, Any] | None = None
) -> Celery:
    """A producer app with the benchmark task registered (its body never runs here)."""
    app = Celery(name, set_as_current=False)
    app.conf.update(
        broker_url=broker,
        broker_transport_options=dict(transport or {}),
        broker_connection_retry_on_startup=True,
        result_backend=None,
        task_ignore_result=True,
        task_default_queue=queue,
    )
    if db_url:
        app.conf.reliable_database_url = db_url
    app.task(name=TASK, shared=False)(_noop)
    return app


def close_app(app: Celery) -> None:
    from celery_reliable.send.publisher import reset_publisher
    from celery_reliable.store.engine import dispose

    reset_publisher(app)
    dispose(app)
    app.close()


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# -- the pending table ------------------------------------------------------------------------


def pending_rows(app: Celery, start: int, count: int, *, status: str = "pending") -> list[dict[str, Any]]:
    """``count`` rows as ``publish()`` would store them (``prepare`` of the same messages)."""
    from celery_reliable.message.prepare import prepare
    from celery_reliable.send.publish import with_message
    from celery_reliable.send.publisher import get_publisher
    from celery_reliable.store.models import utcnow

    now = utcnow()
    rows = []
    ctx = get_publisher(app).context()
    for i in range(start, start + count):
        args, kwargs = payload(i)
        row = with_message(app, prepare(app, TASK, args, kwargs, {}), ctx).row("publish_fallback", now)
        if status != "pending":
            row.update(status=status, sent_at=now)
        rows.append(row)
    return rows


def fill(engine: Engine, rows: list[dict[str, Any]], *, truncate: bool = True) -> None:
    """Insert rows in bulk (executemany, 5000 per statement), then ANALYZE."""
    from celery_reliable.store.models import PendingMessage

    with engine.begin() as conn:
        if truncate:
            conn.execute(text(f"TRUNCATE {PENDING} RESTART IDENTITY"))
        for start in range(0, len(rows), 5000):
            conn.execute(insert(PendingMessage.__table__), rows[start : start + 5000])
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text(f"ANALYZE {PENDING}"))


def fill_generated(engine: Engine, template: dict[str, Any], sent: int, due: int, *, sent_per_ms: int = 0) -> float:
    """Fill the table in the database itself: ``sent`` rows (sent, kept for the retention), then
    ``due`` rows (a backlog), each a copy of ``template`` with its own task id; then VACUUM
    ANALYZE (what autovacuum does to a table that has settled). Returns the seconds it took.

    ``INSERT ... SELECT`` from ``generate_series`` with the template row: 1M rows need no
    round trip per row. ``sent_per_ms``: the sent rows were sent that many per millisecond,
    oldest first, ending at the template's ``created_at`` (as a relay marks a batch sent at one
    time); 0: all at that time."""
    from celery_reliable.store.models import PendingMessage

    columns = [c.name for c in PendingMessage.__table__.columns if c.name != "id"]
    start = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {PENDING} RESTART IDENTITY"))
        conn.execute(insert(PendingMessage.__table__), [dict(template, status="pending", sent_at=None)])
        for status, count in (("sent", sent), ("pending", due)):
            if not count:
                continue
            chosen = []
            for name in columns:
                if name == "task_id":
                    chosen.append("gen_random_uuid()::text")
                elif name == "status":
                    chosen.append(f"'{status}'")
                elif name == "sent_at":
                    if status != "sent":
                        chosen.append("NULL")
                    elif sent_per_ms:
                        spread = f"((:count - g) / {int(sent_per_ms)}) * interval '1 millisecond'"
                        chosen.append(f"t.created_at - {spread}")
                    else:
                        chosen.append("t.created_at")
                else:
                    chosen.append(f"t.{name}")
            conn.execute(
                text(
                    f"INSERT INTO {PENDING} ({', '.join(columns)}) SELECT {', '.join(chosen)} "
                    f"FROM {PENDING} AS t, generate_series(1, :count) AS g WHERE t.id = 1"
                ),
                {"count": count},
            )
        conn.execute(text(f"DELETE FROM {PENDING} WHERE id = 1"))
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text(f"VACUUM (ANALYZE) {PENDING}"))
    return time.perf_counter() - start


def table_size(engine: Engine) -> str:
    """The table's size on disk with its indexes and TOAST, human readable."""
    with engine.connect() as conn:
        return str(conn.execute(text(f"SELECT pg_size_pretty(pg_total_relation_size('{PENDING}'))")).scalar())


def status_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT status, count(*) FROM {PENDING} GROUP BY status")).all()
    return {str(status): int(count) for status, count in rows}


# -- brokers ----------------------------------------------------------------------------------


@dataclass
class RedisSide:
    url: str  # with the db number
    prefix: str
    client: redis.Redis

    def depth(self, queue: str) -> int:
        return int(self.client.llen(self.prefix + queue))

    def drop(self, queue: str) -> None:
        self.client.delete(self.prefix + queue)

    def server_cpu(self) -> float:
        pid = int(self.client.info("server").get("process_id", 0) or 0)
        return proc_cpu(pid) if pid else 0.0


@dataclass
class AmqpSide:
    url: str
    queue: str
    made: bool = False

    @contextmanager
    def channel(self) -> Iterator[Any]:
        from kombu import Connection

        with Connection(self.url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
            yield conn.channel()

    def depth(self) -> int:
        with self.channel() as channel:
            return int(channel.queue_declare(queue=self.queue, passive=True).message_count)

    def wait_depth(self, count: int, timeout: float = 30) -> int:
        """Messages in the queue, once ``count`` have arrived (unconfirmed ones may lag)."""
        deadline = time.monotonic() + timeout
        depth = 0
        for _ in range(int(timeout / 0.05) + 1):
            depth = self.depth()
            if depth >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return depth

    def purge(self) -> None:
        with self.channel() as channel:
            channel.queue_purge(self.queue)

    def delete(self) -> None:
        """The queue and the exchange Celery declared for it (named like the queue)."""
        with self.channel() as channel:
            channel.queue_delete(self.queue)
        with self.channel() as channel:
            channel.exchange_delete(self.queue)


# -- measurements -----------------------------------------------------------------------------


@dataclass
class Rate:
    """One timed run that moved ``count`` messages."""

    count: int
    seconds: float
    cpu: float = 0.0  # this process
    pg_cpu: float = 0.0  # PostgreSQL backends of our database
    broker_cpu: float = 0.0  # redis-server (RabbitMQ not measured)

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def per_msg_us(self, seconds: float) -> float:
        return seconds / self.count * 1e6


#: What ``publish()`` is measured against on each broker: ``apply_async``, confirmed on RabbitMQ.
PLAIN_SEND = {"redis": "apply_async", "amqp": "apply_async_confirm"}


def publish_medians(res: dict[str, Any], kind: str) -> dict[str, float] | None:
    """Median µs per message of each single-message send variant on ``kind``; None if not measured."""
    runs = res.get(f"single_{kind}")
    return None if runs is None else {variant: statistics.median(values) for variant, values in runs.items()}


def publish_overhead(us: dict[str, float], kind: str) -> float:
    """``publish()`` against the plain send it replaces, as a fraction (+0.10: 10% slower)."""
    return us["publish"] / us[PLAIN_SEND[kind]] - 1


def median_run(runs: list[Rate]) -> Rate:
    return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]


@dataclass
class Bench:
    args: argparse.Namespace
    store: Store
    engine: Engine
    redis: RedisSide
    amqp: AmqpSide | None
    queue: str
    results: dict[str, Any] = field(default_factory=dict)
    load_start: str = field(default_factory=loadavg)
    code: str = field(default_factory=code_version)

    def timed(self, count: int, work: Callable[[], None], broker_cpu: bool = False) -> Rate:
        pg0 = self.store.backend_cpu()
        rd0 = self.redis.server_cpu() if broker_cpu else 0.0
        cpu0 = time.process_time()
        start = time.perf_counter()
        work()
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        pg = self.store.backend_cpu() - pg0
        rd = self.redis.server_cpu() - rd0 if broker_cpu else 0.0
        return Rate(count, seconds, cpu, max(pg, 0.0), max(rd, 0.0))

    # -- 1 and 2: relay drains --------------------------------------------------------------

    def drain(self, app: Celery, count: int, batch: int | None = None) -> None:
        """relay_once until every row is sent (it loops over batches itself; bounded by time)."""
        from celery_reliable import relay_once

        batch = batch or self.args.batch
        sent = 0
        deadline = time.monotonic() + self.args.drain_timeout
        for _ in range(count // batch + 10):
            stats = relay_once(app, batch_size=batch, time_limit=self.args.drain_timeout)
            sent += stats.sent
            if stats.broker_down:
                raise RuntimeError(f"relay: broker down: {stats.errors[:1]}")
            if sent >= count or stats.claimed == 0 or time.monotonic() > deadline:
                break
        if sent != count:
            raise RuntimeError(f"relay sent {sent} of {count} rows")

    def relay_section(self, kind: str) -> None:
        args = self.args
        n = args.n if kind == "redis" else args.n_amqp
        broker = self.redis.url if kind == "redis" else args.amqp
        transport = {"global_keyprefix": self.redis.prefix} if kind == "redis" else {}
        reliable = make_app(f"relay-{kind}", broker, self.queue, db_url=self.store.url, transport=transport)
        plain_transport = dict(transport) if kind == "redis" else {"confirm_publish": True}
        plain = make_app(f"plain-{kind}", broker, self.queue, transport=plain_transport)
        task = plain.tasks[TASK]
        rows = pending_rows(reliable, 0, n)
        relay_runs: list[Rate] = []
        plain_runs: list[Rate] = []
        try:
            # warm-up: connections, declarations, caches
            fill(self.engine, rows[:200])
            self.drain(reliable, 200)
            for i in range(200):
                task.apply_async(*payload(i))
            self.empty(kind, 400)
            for run in range(args.runs):
                fill(self.engine, rows)

                def loop() -> None:
                    for i in range(n):
                        task.apply_async(*payload(i))

                plain_runs.append(self.timed(n, loop, broker_cpu=kind == "redis"))
                self.empty(kind, n)
                relay_runs.append(self.timed(n, lambda: self.drain(reliable, n), broker_cpu=kind == "redis"))
                counts = status_counts(self.engine)
                if counts != {"sent": n}:
                    raise RuntimeError(f"relay left rows {counts}")
                self.empty(kind, n)
                log(
                    f"{kind} drain run {run + 1}: relay {relay_runs[-1].rate:,.0f} msg/s, "
                    f"apply_async loop {plain_runs[-1].rate:,.0f} msg/s"
                )
        finally:
            close_app(reliable)
            close_app(plain)
        self.results[f"relay_{kind}"] = (relay_runs, plain_runs)

    def empty(self, kind: str, expected: int) -> None:
        """Check the queue holds ``expected`` messages, then empty it."""
        if kind == "redis":
            depth = self.redis.depth(self.queue)
            self.redis.drop(self.queue)
        else:
            assert self.amqp is not None
            depth = self.amqp.wait_depth(expected)
            self.amqp.purge()
        if depth != expected:
            raise RuntimeError(f"{kind}: {depth} messages in the queue, expected {expected}")

    # -- 3: publish() against apply_async -------------------------------------------------------

    def single_section(self, kind: str) -> None:
        from celery_reliable import publish

        args = self.args
        n = args.n_single
        if kind == "redis":
            broker, transport = self.redis.url, {"global_keyprefix": self.redis.prefix}
            apps = {
                "apply_async": make_app("single-plain", broker, self.queue, transport=transport),
                "publish": make_app("single-reliable", broker, self.queue, db_url=self.store.url, transport=transport),
            }
        else:
            broker = args.amqp
            apps = {
                "apply_async": make_app("single-plain", broker, self.queue),
                "apply_async_confirm": make_app(
                    "single-confirm", broker, self.queue, transport={"confirm_publish": True}
                ),
                "publish": make_app("single-reliable", broker, self.queue, db_url=self.store.url),
            }
        senders: dict[str, Callable[[int], Any]] = {}
        for variant, app in apps.items():
            if variant == "publish":
                senders[variant] = lambda i, app=app: publish(app, TASK, *payload(i))
            else:
                senders[variant] = lambda i, task=app.tasks[TASK]: task.apply_async(*payload(i))
        block = max(1, min(args.block, n))
        totals: dict[str, list[float]] = {variant: [] for variant in senders}
        try:
            for send in senders.values():  # warm-up
                for i in range(100):
                    send(i)
            self.empty(kind, 100 * len(senders))
            for run in range(args.runs):
                seconds = dict.fromkeys(senders, 0.0)
                order = list(senders)
                for b in range(n // block):
                    order.reverse()  # alternate which variant goes first
                    for variant in order:
                        send = senders[variant]
                        start = time.perf_counter()
                        for i in range(b * block, (b + 1) * block):
                            send(i)
                        seconds[variant] += time.perf_counter() - start
                sent = (n // block) * block
                self.empty(kind, sent * len(senders))
                for variant in senders:
                    totals[variant].append(seconds[variant] / sent * 1e6)
                log(
                    f"{kind} single run {run + 1}: "
                    + ", ".join(f"{v} {seconds[v] / sent * 1e6:.0f} us" for v in seconds)
                )
        finally:
            for app in apps.values():
                close_app(app)
        self.results[f"single_{kind}"] = totals

    # -- 4: outbox latency ------------------------------------------------------------------------

    def outbox_section(self) -> None:
        from celery_reliable import outbox

        args = self.args
        transport = {"global_keyprefix": self.redis.prefix}
        reliable = make_app("outbox", self.redis.url, self.queue, db_url=self.store.url, transport=transport)
        plain = make_app("outbox-plain", self.redis.url, self.queue, transport=transport)
        task = plain.tasks[TASK]
        with self.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {PENDING}"))
            conn.execute(
                text(
                    "CREATE TABLE IF NOT EXISTS bench_order (id bigserial PRIMARY KEY, customer text NOT NULL, "
                    "amount numeric NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
                )
            )
        user_engine = create_engine(self.store.url, pool_size=2)  # the application's own engine
        sessions = sessionmaker(user_engine)
        waiter = Waiter(self.redis.url, self.redis.prefix + self.queue, deadline=time.monotonic() + 300)
        order_insert = text("INSERT INTO bench_order (customer, amount) VALUES (:customer, :amount)")
        results: dict[str, dict[str, list[float]]] = {}
        try:
            waiter.start()
            for variant in ("outbox", "plain"):
                latency: list[float] = []
                commit: list[float] = []
                for i in range(20 + args.n_outbox):  # 20 warm-up messages
                    msg_args, msg_kwargs = payload(i)
                    session: Session = sessions()
                    try:
                        session.execute(order_insert, {"customer": msg_kwargs["customer"], "amount": i})
                        if variant == "outbox":
                            task_id = outbox(session, reliable).send(TASK, msg_args, msg_kwargs)
                        started = time.perf_counter()
                        session.commit()
                        committed = time.perf_counter()
                        if variant == "plain":
                            task_id = task.apply_async(msg_args, msg_kwargs).id
                    finally:
                        session.close()
                    arrived = waiter.wait(task_id, timeout=10)
                    if i >= 20:
                        latency.append((arrived - started) * 1000)
                        commit.append((committed - started) * 1000)
                results[variant] = {"latency": latency, "commit": commit}
                p50, p99 = pct(latency, 0.5), pct(latency, 0.99)
                log(f"outbox {variant}: commit -> in Redis p50 {p50:.2f} ms, p99 {p99:.2f} ms")
            counts = status_counts(self.engine)
            if counts != {"sent": args.n_outbox + 20}:
                raise RuntimeError(f"outbox rows {counts}")
        finally:
            waiter.stop()
            user_engine.dispose()
            close_app(reliable)
            close_app(plain)
        self.results["outbox"] = results

    # -- 5: claim cost against the table size -----------------------------------------------------

    def claim_section(self) -> None:
        from celery_reliable.store import claims as pending

        try:  # the relay's claim: rows locked in a transaction (PostgreSQL), or leased
            from celery_reliable.store.batches import claim_batch
        except ImportError:
            claim_batch = None  # type: ignore[assignment]

        args = self.args
        app = make_app("claim", self.redis.url, self.queue, db_url=self.store.url)
        template = pending_rows(app, 0, 1)[0]
        table: list[dict[str, Any]] = []
        plans: dict[str, list[str]] = {}
        by_batch: list[tuple[int, float]] = []
        largest = max(args.claim_size_list)
        small_after: dict[str, Any] | None = None

        def timed_claim(limit: int, after_id: int | None, expected: int) -> float:
            start = time.perf_counter()
            if claim_batch is None:  # a release without locked batches: the leased claim
                token, claimed = pending.claim_rows(app, limit=limit, lease=60, after_id=after_id, light=True)
                took = time.perf_counter() - start
                pending.release(app, token, [r.id for r in claimed])
            else:
                held, claimed = claim_batch(app, limit=limit, lease=60, after_id=after_id, light=True)
                took = time.perf_counter() - start
                held.abandon([r.id for r in claimed])
            if len(claimed) != expected:
                raise RuntimeError(f"claim of {limit} took {len(claimed)} rows, expected {expected}")
            return took * 1000

        try:
            for size in args.claim_size_list:
                for scenario in ("due", "sent"):
                    sent, due = (0, size) if scenario == "due" else (size, args.claim_backlog)
                    seconds = fill_generated(self.engine, template, sent, due)
                    size_text = table_size(self.engine)
                    # a relay pass claims its first batch from the lowest id, the next ones above
                    # the last id of the batch before (here: above the sent rows, ids 2..sent + 1)
                    mark = sent + 1 if sent else None
                    expected = min(args.batch, due)
                    claims, continuing = [], []
                    for k in range(args.claim_repeats + 1):
                        first = timed_claim(args.batch, None, expected)
                        later = timed_claim(args.batch, mark, expected)
                        if k:  # the first is warm-up
                            claims.append(first)
                            continuing.append(later)
                    entry = {
                        "scenario": scenario, "sent": sent, "due": due, "size": size_text, "fill_s": seconds,
                        "rows": expected, "claim_ms": statistics.median(claims),
                        "continuing_ms": statistics.median(continuing),
                    }  # fmt: skip
                    table.append(entry)
                    log(
                        f"claim of {args.batch}, {sent:,} sent + {due:,} due rows ({size_text}, filled in "
                        f"{seconds:.1f}s): {entry['claim_ms']:.1f} ms, "
                        f"continuing a pass {entry['continuing_ms']:.1f} ms"
                    )
                    if size == largest:
                        plans[f"{sent:,} sent + {due:,} due rows, first claim of a pass"] = explain_claim(
                            self.engine, args.batch
                        )
                        if scenario == "sent":
                            plans[f"{sent:,} sent + {due:,} due rows, continuing a pass"] = explain_claim(
                                self.engine, args.batch, after_id=mark
                            )
                            for limit in args.batch_size_list:
                                wanted = min(limit, due)
                                took = [timed_claim(limit, None, wanted) for _ in range(args.claim_repeats + 1)][1:]
                                by_batch.append((limit, statistics.median(took)))
                                log(f"claim of {limit} at {sent:,} sent rows: {by_batch[-1][1]:.1f} ms")
            # the smallest table again, right after the largest: the same claim at the same load (a
            # fill of millions of rows takes minutes, and the machine's load moves meanwhile)
            smallest = min(args.claim_size_list)
            if len(args.claim_size_list) > 1:
                fill_generated(self.engine, template, 0, smallest)
                expected = min(args.batch, smallest)
                again = [timed_claim(args.batch, None, expected) for _ in range(args.claim_repeats + 1)][1:]
                small_after = {"due": smallest, "rows": expected, "claim_ms": statistics.median(again)}
                log(f"claim of {args.batch}, {smallest:,} due rows again: {small_after['claim_ms']:.1f} ms")
        finally:
            close_app(app)
            with self.engine.begin() as conn:
                conn.execute(text(f"TRUNCATE {PENDING}"))
        index_used = bool(plans) and all(any(OPEN_INDEX in line for line in plan) for plan in plans.values())
        self.results["claim"] = {
            "table": table, "plans": plans, "by_batch": by_batch, "index_used": index_used, "small_after": small_after,
        }  # fmt: skip

    # -- 6: relay drain rate against the batch size ---------------------------------------------

    def batch_section(self) -> None:
        args = self.args
        n = args.n
        transport = {"global_keyprefix": self.redis.prefix}
        app = make_app("relay-batch", self.redis.url, self.queue, db_url=self.store.url, transport=transport)
        rows = pending_rows(app, 0, n)
        runs: dict[int, list[Rate]] = {b: [] for b in args.batch_size_list}
        try:
            fill(self.engine, rows[:200])
            self.drain(app, 200)
            self.empty("redis", 200)
            for run in range(args.runs):
                for batch in args.batch_size_list:
                    fill(self.engine, rows)
                    runs[batch].append(self.timed(n, functools.partial(self.drain, app, n, batch), broker_cpu=True))
                    counts = status_counts(self.engine)
                    if counts != {"sent": n}:
                        raise RuntimeError(f"relay left rows {counts}")
                    self.empty("redis", n)
                    log(f"batch {batch} run {run + 1}: relay {runs[batch][-1].rate:,.0f} msg/s")
        finally:
            close_app(app)
        self.results["batch"] = runs

    # -- 8: several relays at once ----------------------------------------------------------------

    def relays_section(self) -> None:
        """k relay processes draining the same N rows, for each k; the apply_async loop in each run."""
        args = self.args
        n = args.n_relays
        transport = {"global_keyprefix": self.redis.prefix}
        plain = make_app("relays-plain", self.redis.url, self.queue, transport=transport)
        task = plain.tasks[TASK]
        maker = make_app("relays-rows", self.redis.url, self.queue, db_url=self.store.url, transport=transport)
        try:
            rows = pending_rows(maker, 0, n)
        finally:
            close_app(maker)
        runs: dict[int, list[scale_out.ScaleRun]] = {k: [] for k in args.relay_count_list}
        plain_runs: list[Rate] = []
        try:
            for i in range(200):  # warm-up
                task.apply_async(*payload(i))
            self.empty("redis", 200)
            for run in range(args.runs):

                def loop() -> None:
                    for i in range(n):
                        task.apply_async(*payload(i))

                plain_runs.append(self.timed(n, loop, broker_cpu=True))
                self.empty("redis", n)
                order = list(runs) if run % 2 == 0 else list(reversed(runs))  # alternate which goes first
                for k in order:
                    runs[k].append(self.drain_by_relays(k, rows))
                log(
                    f"relays run {run + 1}: "
                    + ", ".join(f"{k} relays {rs[-1].rate:,.0f} msg/s {rs[-1].shares}" for k, rs in runs.items())
                    + f"; apply_async loop {plain_runs[-1].rate:,.0f} msg/s"
                )
        finally:
            close_app(plain)
        self.results["relays"] = {"n": n, "runs": runs, "plain": plain_runs}

    def drain_by_relays(self, k: int, rows: list[dict[str, Any]]) -> scale_out.ScaleRun:
        """One drain of ``rows`` by ``k`` relay processes started together; every count checked."""
        args = self.args
        n, timeout = len(rows), args.drain_timeout
        ctx = multiprocessing.get_context("spawn")
        ready, go, done = (ctx.Barrier(k + 1) for _ in range(3))
        out = ctx.Queue()
        conf = scale_out.RelayConf(self.redis.url, self.queue, self.store.url, self.redis.prefix, args.batch, timeout)
        warm = 50 * k  # each relay's warm-up drains whatever of these it finds
        fill(self.engine, rows[:warm])
        procs = [
            ctx.Process(
                target=scale_out.relay_process,
                args=(i, conf, ready, go, done, out),
                name=f"bench-relay-{i}",
                daemon=True,
            )
            for i in range(k)
        ]
        for proc in procs:
            proc.start()
        try:
            scale_out.wait(ready, procs, timeout + 60, out)  # spawned and imported: allow for a slow start
            if status_counts(self.engine) != {"sent": warm}:
                raise RuntimeError(f"relays' warm-up left rows {status_counts(self.engine)}")
            self.empty("redis", warm)
            fill(self.engine, rows)
            load = loadavg()
            pg0, rd0, (machine0, cpus) = self.store.backend_cpu(), self.redis.server_cpu(), scale_out.cpu_seconds()
            window = time.perf_counter()
            scale_out.wait(go, procs, timeout, out)
            reports = scale_out.results(out, procs, timeout + 30)
            machine1, _ = scale_out.cpu_seconds()
            window = time.perf_counter() - window
            pg = self.store.backend_cpu() - pg0
            rd = self.redis.server_cpu() - rd0
            scale_out.wait(done, procs, timeout, out)
            for proc in procs:
                proc.join(timeout=60)
            if any(proc.exitcode != 0 for proc in procs):
                raise RuntimeError(f"relay processes exited with {[proc.exitcode for proc in procs]}")
        finally:
            for proc in procs:  # only on a failure: each of our own processes, by its handle
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=10)
            out.close()
        shares = [int(r["sent"]) for r in reports]
        if sum(shares) != n or any(r["claimed"] != r["sent"] for r in reports):
            raise RuntimeError(f"relays sent {shares} (claimed {[r['claimed'] for r in reports]}) of {n} rows")
        counts = status_counts(self.engine)
        if counts != {"sent": n}:
            raise RuntimeError(f"relays left rows {counts}")
        scale_out.check_queue(self.redis.client, self.redis.prefix + self.queue, {str(r["task_id"]) for r in rows})
        self.redis.drop(self.queue)
        seconds = max(r["last"] for r in reports if r["last"] is not None) - min(r["first"] for r in reports)
        return scale_out.ScaleRun(
            k, n, seconds, shares, [float(r["cpu"]) for r in reports], max(pg, 0.0), max(rd, 0.0),
            (machine1 - machine0) / window, cpus, load,
        )  # fmt: skip

    # -- 7: where the relay's time goes ------------------------------------------------------------

    def profile_section(self) -> None:
        """The relay's steps one after another (no claim ahead), timed per step, then cProfiled."""
        import cProfile

        from celery_reliable.send.relay import send_rows
        from celery_reliable.store.batches import claim_batch

        args = self.args
        n = args.n
        transport = {"global_keyprefix": self.redis.prefix}
        app = make_app("relay-profile", self.redis.url, self.queue, db_url=self.store.url, transport=transport)
        rows = pending_rows(app, 0, n)
        steps = {"claim": 0.0, "send": 0.0}

        def sequential() -> None:
            after: int | None = None
            for _ in range(n // args.batch + 2):
                start = time.perf_counter()
                held, got = claim_batch(app, limit=args.batch, lease=60, after_id=after, light=True)
                claimed = time.perf_counter()
                if not got:
                    held.finish()
                    break
                after = got[-1].id
                send_rows(app, held, got)
                steps["claim"] += claimed - start
                steps["send"] += time.perf_counter() - claimed

        try:
            fill(self.engine, rows[:200])
            self.drain(app, 200)
            self.empty("redis", 200)
            fill(self.engine, rows)
            plain = self.timed(n, sequential, broker_cpu=True)
            claim_us, send_us = steps["claim"] / n * 1e6, steps["send"] / n * 1e6
            self.empty("redis", n)
            fill(self.engine, rows)
            profiler = cProfile.Profile()
            profiler.enable()
            sequential()
            profiler.disable()
            self.empty("redis", n)
        finally:
            close_app(app)
        from bench.bench_consumer import _profile_table

        self.results["profile"] = {
            "rate": plain, "claim_us": claim_us, "send_us": send_us, "steps": breakdown(profiler, n),
            "table": _profile_table(profiler, n, args.profile_top, unit="message"),
        }  # fmt: skip
        log(f"relay steps one after another: {plain.rate:,.0f} msg/s")


#: The relay's steps in a profile: (label, file, function).
STEPS = (
    ("claim: `lock_rows` (one SELECT ... FOR UPDATE SKIP LOCKED per batch)", "store/batches.py", "lock_rows"),
    ("send: `send_rows` (all below)", "send/relay.py", "send_rows"),
    ("  check the rows and their stored entries: `RowChecks`", "send/relay_check.py", "stored_entry"),
    ("  write them: `redis_wire.write_each` (delivery tag, one pipeline of LPUSHes)", "redis_wire.py", "write_each"),
    ("  mark the rows sent: `LockedClaim.sent` (one UPDATE per batch)", "store/batches.py", "sent"),
    ("  commit: `LockedClaim.finish`", "store/batches.py", "finish"),
    ("waiting for PostgreSQL (psycopg `wait`, in the claim and the mark)", "psycopg/connection.py", "wait"),
    ("waiting for Redis (socket reads of the pipeline's replies)", "redis/connection.py", "read_response"),
    ("decoding JSON (the `options` column, by psycopg)", "json/__init__.py", "loads"),
)


def breakdown(profiler: Any, n: int) -> list[tuple[str, float]]:
    """Cumulative µs per message of the relay's steps in a cProfile run (profiler overhead included)."""
    import io
    import pstats

    raw: dict[Any, Any] = pstats.Stats(profiler, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    found: list[tuple[str, float]] = []
    for label, path, func in STEPS:
        cumulative = [v[3] for (p, _line, f), v in raw.items() if f == func and p.endswith(path)]
        if path.startswith("redis/"):  # nested calls: the outermost one
            cumulative = cumulative[:1] and [max(cumulative)]
        found.append((label, sum(cumulative) / n * 1e6))
    return found


def explain_claim(engine: Engine, limit: int, after_id: int | None = None) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the relay's claim statement (the lock of a batch), rolled back."""
    from sqlalchemy.dialects import postgresql

    from celery_reliable.store import claims as pending
    from celery_reliable.store.models import utcnow

    now = utcnow()
    try:
        from celery_reliable.store.batches import lock_query
    except ImportError:
        lock_query = None  # type: ignore[assignment]
    statement: Any
    if lock_query is not None:
        statement = lock_query(now, limit, after_id, light=True)
    elif hasattr(pending, "postgres_claim"):
        chosen = pending.claim_query(now, limit, None, after_id)
        statement = pending.postgres_claim(chosen, pending.lease_values("explain", now, 60))
    else:
        return ["(this version of celery_reliable has no single-statement claim)"]
    sql = str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            plan = [str(row[0]) for row in conn.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql))]
        finally:
            transaction.rollback()
    return [" ".join(sql.split()), "", *plan]


class Waiter(threading.Thread):
    """A consumer thread: BRPOPs the queue's Redis list and notes when each task id arrived."""

    def __init__(self, url: str, key: str, deadline: float) -> None:
        super().__init__(daemon=True, name="bench-waiter")
        self.client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self.key = key
        self.deadline = deadline
        self.arrived: dict[str, float] = {}
        self.cond = threading.Condition()
        self.stopping = False

    def run(self) -> None:
        while not self.stopping and time.monotonic() < self.deadline:
            item = self.client.brpop([self.key], timeout=1)
            if item is None:
                continue
            now = time.perf_counter()
            task_id = json.loads(item[1])["headers"]["id"]
            with self.cond:
                self.arrived[task_id] = now
                self.cond.notify_all()

    def wait(self, task_id: str, timeout: float) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: task_id in self.arrived, timeout=timeout):
                raise TimeoutError(f"message {task_id} did not arrive in Redis within {timeout}s")
            return self.arrived.pop(task_id)

    def stop(self) -> None:
        self.stopping = True
        self.join(timeout=5)
        self.client.close()


# -- report -----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def report(bench: Bench, command: str) -> str:
    args, res = bench.args, bench.results
    summary: list[str] = []
    details: list[str] = []
    if "relay_redis" in res:
        relay, plain = (median_run(runs) for runs in res["relay_redis"])
        ratio = relay.rate / plain.rate
        ok = ratio >= TARGET_RELAY_REDIS_RATIO
        summary.append(
            f"| (1) relay drain PostgreSQL → Redis, N = {relay.count:,} | {relay.rate:,.0f} msg/s "
            f"| `apply_async` loop: {plain.rate:,.0f} msg/s | **{ratio:.1f}x** "
            f"| ≥ {TARGET_RELAY_REDIS_RATIO:.0f}x | {verdict(ok)} |"
        )
        details += drain_table("Relay drain, PostgreSQL → Redis", res["relay_redis"], "redis-server")
    if "relay_amqp" in res:
        relay, plain = (median_run(runs) for runs in res["relay_amqp"])
        ratio = relay.rate / plain.rate
        summary.append(
            f"| (2) relay drain PostgreSQL → RabbitMQ, confirms, N = {relay.count:,} | {relay.rate:,.0f} msg/s "
            f"| `apply_async` loop with `confirm_publish`: {plain.rate:,.0f} msg/s | **{ratio:.1f}x** "
            f"| ≥ {TARGET_RELAY_AMQP_RATIO:.0f}x | {verdict(ratio >= TARGET_RELAY_AMQP_RATIO)} |"
        )
        details += drain_table("Relay drain, PostgreSQL → RabbitMQ (publisher confirms)", res["relay_amqp"], "")
    for kind, label in (("redis", "Redis"), ("amqp", "RabbitMQ")):
        us = publish_medians(res, kind)
        if us is None:
            continue
        base, over = PLAIN_SEND[kind], publish_overhead(us, kind)
        name = "`apply_async` with `confirm_publish`" if kind == "amqp" else "`apply_async`"
        summary.append(
            f"| (3) `publish()` on a healthy {label}, per message | {us['publish']:.0f} µs "
            f"| {name}: {us[base]:.0f} µs | **{over:+.0%}** | ≤ +{TARGET_PUBLISH_OVERHEAD:.0%} "
            f"| {verdict(over <= TARGET_PUBLISH_OVERHEAD)} |"
        )
        if kind == "amqp":
            summary.append(
                f"| (3) `publish()` on RabbitMQ (confirmed) vs unconfirmed `apply_async` | {us['publish']:.0f} µs "
                f"| `apply_async`, no confirms: {us['apply_async']:.0f} µs "
                f"| {us['publish'] / us['apply_async'] - 1:+.0%} | (reference) | |"
            )
        details += [
            "",
            f"### `publish()` against `apply_async`, {label}: µs per message",
            "",
            f"{args.n_single:,} messages per variant and run, in interleaved blocks of {args.block}; "
            "median of the runs.",
            "",
            "| variant | µs per message (median) | runs |",
            "|---|---:|---|",
        ]
        for variant, values in res[f"single_{kind}"].items():
            details.append(f"| {variant} | {statistics.median(values):.0f} | {', '.join(f'{v:.0f}' for v in values)} |")
    if "outbox" in res:
        out = res["outbox"]
        p50, p99 = pct(out["outbox"]["latency"], 0.5), pct(out["outbox"]["latency"], 0.99)
        base50, base99 = pct(out["plain"]["latency"], 0.5), pct(out["plain"]["latency"], 0.99)
        summary.append(
            f"| (4) outbox: `commit()` → message in Redis, N = {args.n_outbox} | p50 {p50:.2f} ms, p99 {p99:.2f} ms "
            f"| commit, then `apply_async`: p50 {base50:.2f} ms, p99 {base99:.2f} ms | {p50 / base50:.1f}x "
            f"| p50 ≤ {TARGET_OUTBOX_P50_MS:g} ms | {verdict(p50 <= TARGET_OUTBOX_P50_MS)} |"
        )
        details += [
            "",
            "### Outbox latency (ms)",
            "",
            "From the start of `session.commit()` to the message popped from the Redis list by a consumer "
            "thread (BRPOP); each transaction inserts one business row and stages one message; "
            f"{args.n_outbox} messages after 20 warm-up ones. `commit()` returns after the post-commit "
            "send (claim, publish, mark sent).",
            "",
            "| variant | latency p50 | p90 | p99 | max | `commit()` call p50 | p99 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for variant, label in (("outbox", "outbox (post-commit fast path)"), ("plain", "commit, then `apply_async`")):
            lat, com = out[variant]["latency"], out[variant]["commit"]
            details.append(
                f"| {label} | {pct(lat, 0.5):.2f} | {pct(lat, 0.9):.2f} | {pct(lat, 0.99):.2f} | {max(lat):.2f} "
                f"| {pct(com, 0.5):.2f} | {pct(com, 0.99):.2f} |"
            )
    if "relays" in res:
        mine, base, ratio, met = scale_out.summary(res["relays"])
        summary.append(
            f"| (8) {', '.join(str(k) for k in res['relays']['runs'])} relays at once → Redis, "
            f"N = {res['relays']['n']:,}, every message once | {mine} | {base} | {ratio} "
            f"| no message twice (else the run fails); 2 relays ≥ 1 relay | {verdict(met)} (informational) |"
        )
        details += scale_out.details(res["relays"], args.batch)
    if "claim" in res:
        details += claim_details(res["claim"], args)
    if "batch" in res:
        details += batch_details(res["batch"], args)
    if "profile" in res:
        details += profile_details(res["profile"], args)
    lines = [
        "# Publishing benchmark: celery_reliable against plain Celery",
        "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} on commit {bench.code}: `{command}`",
        "",
        *environment(bench.redis.client, bench.store),
        f"- RabbitMQ at {args.amqp.rsplit('@', 1)[-1]}" if bench.amqp else "- RabbitMQ: skipped",
        f"- load average (1, 5, 15 min) at start {bench.load_start}, at end {loadavg()}",
        f"- {args.runs} runs per measurement, the median run shown; relay batch size {args.batch}",
        "",
        "## Summary",
        "",
        "| measurement | celery_reliable | plain Celery | ratio | target | |",
        "|---|---|---|---:|---|---|",
        *summary,
        "",
        "## Details",
        *details,
    ]
    return "\n".join(lines) + "\n"


def claim_details(claim: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The claim cost against the table size and the batch size, and the query plans."""
    lines = [
        "",
        f"### Claim cost against the pending table size (claim of {args.batch} rows)",
        "",
        f"Median of {args.claim_repeats} claims (each given back), `claim_batch` as the relay calls it (on "
        "PostgreSQL: the batch's rows locked and read in a transaction, rolled back). "
        "The table is filled in PostgreSQL itself (`INSERT ... SELECT` from `generate_series`, copies of a "
        "message as `publish()` stores it, then `VACUUM ANALYZE`): *sent* rows are kept for "
        "`reliable_pending_retention` (24 h by default), *due* rows are a backlog. *First of a pass*: the "
        "claim of the due rows with the lowest ids; *continuing a pass*: a later claim of the same pass, "
        "above the last id of the batch before (here: above the sent rows).",
        "",
        "| rows in the table | size on disk | filled in (s) | first of a pass (ms) | continuing a pass (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for e in claim["table"]:
        what = f"{e['due']:,} due" if not e["sent"] else f"{e['sent']:,} sent + {e['due']:,} due"
        lines.append(f"| {what} | {e['size']} | {e['fill_s']:.1f} | {e['claim_ms']:.1f} | {e['continuing_ms']:.1f} |")
    if claim["by_batch"]:
        big = max((e for e in claim["table"] if e["sent"]), key=lambda e: e["sent"])
        lines += [
            "",
            f"Claim cost against the batch size, {big['sent']:,} sent + {big['due']:,} due rows:",
            "",
            "| batch size | claim (ms) | µs per claimed row |",
            "|---:|---:|---:|",
        ]
        for limit, ms in claim["by_batch"]:
            rows = min(limit, big["due"])
            lines.append(f"| {limit:,} | {ms:.1f} | {ms * 1000 / rows:.1f} |")
    if claim.get("small_after"):
        again = claim["small_after"]
        lines += [
            "",
            f"The claim on {again['due']:,} due rows timed again right after the largest table (same load): "
            f"{again['claim_ms']:.1f} ms for {again['rows']:,} rows.",
        ]
    used = "yes" if claim["index_used"] else "**no**"
    lines += ["", f"Partial index on open rows (`{OPEN_INDEX}`) used by every plan below: {used}."]
    for scenario, plan in claim["plans"].items():
        lines += ["", f"EXPLAIN (ANALYZE, BUFFERS) of the claim, {scenario}:", "", "```", *plan, "```"]
    return lines


def batch_details(runs: dict[int, list[Rate]], args: argparse.Namespace) -> list[str]:
    lines = [
        "",
        f"### Relay drain to Redis against the batch size (N = {args.n:,})",
        "",
        f"`relay_once(batch_size=...)`, median of {args.runs} runs; CPU per message of this process, "
        "of the PostgreSQL backends and of redis-server.",
        "",
        "| batch size | msg/s (median run) | runs (msg/s) | client CPU µs/msg | PostgreSQL CPU µs/msg "
        "| redis-server CPU µs/msg |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for batch, rs in runs.items():
        m = median_run(rs)
        lines.append(
            f"| {batch:,} | {m.rate:,.0f} | {', '.join(f'{r.rate:,.0f}' for r in rs)} | {m.per_msg_us(m.cpu):.0f} "
            f"| {m.per_msg_us(m.pg_cpu):.0f} | {m.per_msg_us(m.broker_cpu):.0f} |"
        )
    return lines


def profile_details(prof: dict[str, Any], args: argparse.Namespace) -> list[str]:
    rate: Rate = prof["rate"]
    return [
        "",
        f"### Where the relay's time goes (N = {args.n:,}, batch {args.batch})",
        "",
        "The relay's steps one after another in this process (each batch claimed, then sent: no claim "
        f"ahead in a second thread): {rate.rate:,.0f} msg/s; per message {prof['claim_us']:.0f} µs waiting "
        f"for the claim, {prof['send_us']:.0f} µs sending (reading the stored entries, one Redis pipeline, "
        f"marking the rows sent). CPU per message: this process {rate.per_msg_us(rate.cpu):.0f} µs, "
        f"PostgreSQL {rate.per_msg_us(rate.pg_cpu):.0f} µs, redis-server {rate.per_msg_us(rate.broker_cpu):.0f} µs.",
        "",
        *(
            [
                "Steps of the same loop under cProfile (cumulative µs per message, profiler overhead included):",
                "",
                "| step | µs per message |",
                "|---|---:|",
                *(f"| {label} | {us:.1f} |" for label, us in prof["steps"]),
                "",
            ]
            if prof.get("steps")
            else []
        ),
        "cProfile of the same loop (profiler overhead included, times per message):",
        "",
        prof["table"],
    ]


def drain_table(title: str, runs: tuple[list[Rate], list[Rate]], broker_name: str) -> list[str]:
    relay_runs, plain_runs = runs
    lines = [
        "",
        f"### {title}",
        "",
        "Rows inserted in bulk first (as `publish()` stores them), then `relay_once` timed until all are "
        "sent; the baseline sends the same messages with `apply_async` one by one. CPU: this process; "
        "PostgreSQL backends of the benchmark database" + (f"; {broker_name}" if broker_name else "") + ".",
        "",
        "| variant | msg/s (median run) | runs (msg/s) | client CPU µs/msg | PostgreSQL CPU µs/msg"
        + (f" | {broker_name} CPU µs/msg |" if broker_name else " |"),
        "|---|---:|---|---:|---:|" + ("---:|" if broker_name else ""),
    ]
    for label, rs in (("relay_once", relay_runs), ("apply_async loop", plain_runs)):
        m = median_run(rs)
        row = (
            f"| {label} | {m.rate:,.0f} | {', '.join(f'{r.rate:,.0f}' for r in rs)} | {m.per_msg_us(m.cpu):.0f} "
            f"| {m.per_msg_us(m.pg_cpu):.0f} |"
        )
        if broker_name:
            row += f" {m.per_msg_us(m.broker_cpu):.0f} |"
        lines.append(row)
    return lines


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="messages of the Redis relay drain (default 20000)")
    parser.add_argument("--n-amqp", type=int, default=10000, help="messages of the RabbitMQ relay drain")
    parser.add_argument("--n-single", type=int, default=2000, help="messages per variant of publish() vs apply_async")
    parser.add_argument("--n-outbox", type=int, default=500, help="outbox messages timed")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median reported)")
    parser.add_argument("--batch", type=int, default=2000, help="relay batch size (default: the setting's default)")
    parser.add_argument("--block", type=int, default=250, help="interleaving block of the single-message loops")
    parser.add_argument(
        "--claim-sizes", default="1000,10000,100000", help="pending table sizes (e.g. up to 1000000); empty: skip"
    )
    parser.add_argument("--claim-backlog", type=int, default=10000, help="due rows next to the sent ones")
    parser.add_argument("--claim-repeats", type=int, default=7)
    parser.add_argument(
        "--batch-sizes", default="100,500,2000,5000", help="relay batch sizes of the batch section and of the claim"
    )
    parser.add_argument("--n-relays", type=int, default=20000, help="rows drained by several relays at once")
    parser.add_argument("--relay-counts", default="1,2,4", help="numbers of relay processes of the relays section")
    parser.add_argument("--profile-top", type=int, default=15, help="functions listed by the profile section")
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"some of {','.join(SECTIONS)}")
    parser.add_argument(
        "--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        help="an existing database on the server; a new one is created next to it and dropped",
    )  # fmt: skip
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server URL")
    parser.add_argument("--redis-db", type=int, default=13, help="Redis database number")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672//", help="RabbitMQ URL")
    parser.add_argument("--output", default=str(RESULTS / "publish.md"))
    args = parser.parse_args(argv)
    require_loopback(parser, args.redis, args.pg_url, args.amqp)
    args.claim_size_list = [int(s) for s in args.claim_sizes.split(",") if s.strip()]
    args.section_list = [s.strip() for s in args.sections.split(",") if s.strip()]
    args.batch_size_list = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    args.relay_count_list = sorted({int(s) for s in args.relay_counts.split(",") if s.strip()})
    if "relays" in args.section_list and not (
        args.relay_count_list
        and 1 <= min(args.relay_count_list)
        and max(args.relay_count_list) <= 16
        and args.n_relays >= 1
    ):
        parser.error("--relay-counts: numbers of relays from 1 to 16; --n-relays: at least 1 row")
    for name, values in (("--claim-sizes", args.claim_size_list), ("--batch-sizes", args.batch_size_list)):
        if any(v < 1 for v in values):
            parser.error(f"{name}: every size must be a positive number of rows")
    if "claim" in args.section_list and args.claim_backlog < max([*args.batch_size_list, args.batch]):
        parser.error("--claim-backlog must be at least the largest batch size (each claim takes a full batch)")
    unknown = set(args.section_list) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


def run(argv: list[str] | None = None, quiet: bool = False) -> tuple[dict[str, Any], argparse.Namespace, str]:
    """Run the benchmark: its results by section, the parsed arguments, and the report."""
    args = parse_args(argv)
    command = " ".join(["python -m bench.bench_publish", *(sys.argv[1:] if argv is None else argv)])
    broker = f"{args.redis.rstrip('/')}/{args.redis_db}"
    tag = uuid.uuid4().hex[:8]
    prefix = f"reliable-bench-pub-{tag}:"
    queue = f"reliable-bench-pub-{tag}"
    client = redis.Redis.from_url(broker, socket_timeout=10, socket_connect_timeout=5)
    client.ping()
    store = Store("postgres", args.pg_url)
    use_amqp = "amqp" in args.section_list or "single" in args.section_list
    amqp = AmqpSide(args.amqp, queue) if use_amqp else None
    engine: Engine | None = None
    try:
        store.create()
        engine = create_engine(store.url, pool_size=2)
        bench = Bench(args, store, engine, RedisSide(broker, prefix, client), amqp, queue)
        log(f"database {store.name}, Redis {broker} (keys {prefix}*), RabbitMQ queue {queue if amqp else '-'}")
        if "redis" in args.section_list:
            bench.relay_section("redis")
        if "amqp" in args.section_list:
            bench.relay_section("amqp")
        if "single" in args.section_list:
            bench.single_section("redis")
            bench.single_section("amqp")
        if "outbox" in args.section_list:
            bench.outbox_section()
        if "batch" in args.section_list and args.batch_size_list:
            bench.batch_section()
        if "profile" in args.section_list:
            bench.profile_section()
        if "relays" in args.section_list:
            bench.relays_section()
        if "claim" in args.section_list and args.claim_size_list:
            bench.claim_section()
        text_md = report(bench, command)
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text_md)
        if not quiet:
            print(text_md)
        log(f"written to {output}")
    finally:
        if engine is not None:
            engine.dispose()
        if amqp is not None:
            try:
                amqp.delete()
                log(f"deleted RabbitMQ queue and exchange {queue}")
            except Exception as exc:
                log(f"could not delete RabbitMQ queue {queue}: {exc!r}")
        deleted = delete_keys(client, prefix)
        log(f"deleted {deleted} Redis keys under {prefix}")
        store.drop()
        client.close()
    return bench.results, args, text_md


if __name__ == "__main__":
    sys.exit(main())
