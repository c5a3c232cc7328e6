"""Staging cost of the outbox against plain Celery's ``apply_async``, on PostgreSQL and Redis.

    python -m bench.bench_outbox [--n 1000] [--runs 5] [--profile]

Each run times, one after another (the order turns each run), N messages:

    apply_async  a loop of ``task.apply_async(args, kwargs)`` to Redis
    send         a loop of ``outbox(session, app).send(...)`` in one transaction, then ``commit()``
    send_many    one ``outbox(session, app).send_many([...])`` of the N messages, then ``commit()``

For the outbox two times are kept: staging (from the first call until the last one returns) and
total (until ``commit()`` returns: the rows inserted, committed, and published by the
post-commit send). Ratios are taken within a run (apply_async's time over the outbox's: above 1
the outbox is cheaper per message), and the median over the runs is reported. ``--profile``
prints where the time of ``send()`` goes (cProfile of one transaction, after the runs).

Everything runs on 127.0.0.1: a PostgreSQL database created and dropped here, Redis db
``--redis-db`` with every key under a unique prefix (deleted at the end; the server is never
flushed). Every loop is bounded.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from bench.bench_consumer import Store, delete_keys, log, require_loopback
from bench.bench_publish import PENDING, TASK, close_app, make_app, payload

#: Targets: per message, against an apply_async loop in the same run.
TARGET_SEND = 1.0
TARGET_SEND_MANY = 10.0
VARIANTS = ("apply_async", "send", "send_many")


@dataclass
class Results:
    """Per run: µs per message of each variant and time (staging, total)."""

    n: int
    runs: list[dict[str, float]] = field(default_factory=list)
    profile: str = ""

    def median(self, key: str) -> float:
        return statistics.median(run[key] for run in self.runs)

    def ratio(self, key: str) -> float:
        """Median over the runs of apply_async's time over ``key``'s, both from the same run."""
        return statistics.median(run["apply_async"] / run[key] for run in self.runs)


class Bench:
    def __init__(self, args: argparse.Namespace, engine: Engine, reliable: Celery, plain: Celery) -> None:
        self.args = args
        self.engine = engine
        self.reliable = reliable
        self.plain = plain
        self.messages = [payload(i) for i in range(args.n)]

    def apply_async(self) -> dict[str, float]:
        task = self.plain.tasks[TASK]
        start = time.perf_counter()
        for args, kwargs in self.messages:
            task.apply_async(args, kwargs)
        return {"apply_async": time.perf_counter() - start}

    def send(self, many: bool, profiler: cProfile.Profile | None = None) -> dict[str, float]:
        from celery_reliable import outbox

        name = "send_many" if many else "send"
        with Session(self.engine) as session:
            session.execute(text("SELECT 1"))  # the transaction's connection, as an application has it
            if profiler is not None:
                profiler.enable()
            start = time.perf_counter()
            box = outbox(session, self.reliable)
            if many:
                box.send_many([(TASK, args, kwargs) for args, kwargs in self.messages])
            else:
                for args, kwargs in self.messages:
                    box.send(TASK, args, kwargs)
            staged = time.perf_counter()
            session.commit()
            done = time.perf_counter()
            if profiler is not None:
                profiler.disable()
        return {name: staged - start, f"{name}_total": done - start}


def measure(bench: Bench, client: redis.Redis, key: str) -> Results:
    args = bench.args
    results = Results(args.n)
    bench.send(False), bench.send(True), bench.apply_async()  # warm-up: connections, caches
    client.delete(key)
    with bench.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {PENDING}"))
    for run in range(args.runs):
        timings: dict[str, float] = {}
        order = VARIANTS[run % 3 :] + VARIANTS[: run % 3]
        for variant in order:
            timings.update(bench.apply_async() if variant == "apply_async" else bench.send(variant == "send_many"))
        queued = int(client.llen(key))
        if queued != 3 * args.n:
            raise RuntimeError(f"run {run}: {queued} messages in Redis, expected {3 * args.n}")
        client.delete(key)
        with bench.engine.begin() as conn:
            counts = dict(conn.execute(text(f"SELECT status, count(*) FROM {PENDING} GROUP BY status")).all())
            conn.execute(text(f"TRUNCATE {PENDING}"))
        if counts != {"sent": 2 * args.n}:
            raise RuntimeError(f"run {run}: pending rows {counts}, expected {2 * args.n} sent")
        per = {k: v / args.n * 1e6 for k, v in timings.items()}
        results.runs.append(per)
        log(
            f"run {run + 1}: apply_async {per['apply_async']:.0f} µs, send {per['send']:.0f} "
            f"({per['send_total']:.0f} with commit), send_many {per['send_many']:.0f} "
            f"({per['send_many_total']:.0f}) µs per message"
        )
    if args.profile:
        profiler = cProfile.Profile()
        bench.send(False, profiler)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
        results.profile = out.getvalue()
        client.delete(key)
    return results


def report(results: Results) -> str:
    lines = [
        f"## Outbox staging against `apply_async` (Redis), N = {results.n:,} per run, {len(results.runs)} runs",
        "",
        "| variant | µs per message (median) | ratio to `apply_async` (median of runs) | target | met? |",
        "|---|---:|---:|---|---|",
        f"| `apply_async` loop | {results.median('apply_async'):.0f} | 1.00x | | |",
    ]
    for key, label, target in (
        ("send", "`send()` loop, staging", TARGET_SEND),
        ("send_total", "`send()` loop + `commit()` (insert, commit, post-commit send)", None),
        ("send_many", "`send_many()`, staging", TARGET_SEND_MANY),
        ("send_many_total", "`send_many()` + `commit()`", None),
    ):
        ratio = results.ratio(key)
        met = "" if target is None else ("yes" if ratio >= target else "**NO**")
        shown = "(reported)" if target is None else f"≥ {target:.0f}x"
        lines.append(f"| {label} | {results.median(key):.0f} | {ratio:.2f}x | {shown} | {met} |")
    if results.profile:
        lines += ["", "```", results.profile.strip(), "```"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="messages per variant and run")
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs (medians reported)")
    parser.add_argument("--profile", action="store_true", help="cProfile one send() transaction")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server URL")
    parser.add_argument("--redis-db", type=int, default=14, help="Redis database number")
    args = parser.parse_args(argv)
    require_loopback(parser, args.redis, args.pg_url)
    if not 1 <= args.n <= 100_000 or not 1 <= args.runs <= 50:
        parser.error("--n from 1 to 100000, --runs from 1 to 50")
    return args


def run(argv: list[str] | None = None, quiet: bool = False) -> tuple[Results, str]:
    """Run the benchmark: its results and the report."""
    args = parse_args(argv)
    broker = f"{args.redis.rstrip('/')}/{args.redis_db}"
    tag = uuid.uuid4().hex[:8]
    prefix, queue = f"reliable-bench-outbox-{tag}:", f"reliable-bench-outbox-{tag}"
    client = redis.Redis.from_url(broker, socket_timeout=10, socket_connect_timeout=5)
    client.ping()
    store = Store("postgres", args.pg_url)
    apps: list[Celery] = []
    engine: Engine | None = None
    try:
        store.create()
        transport: dict[str, Any] = {"global_keyprefix": prefix}
        apps = [
            make_app("outbox", broker, queue, db_url=store.url, transport=transport),
            make_app("outbox-plain", broker, queue, transport=transport),
        ]
        engine = create_engine(store.url, pool_size=2)  # the application's own engine
        log(f"database {store.name}, Redis {broker} (keys {prefix}*)")
        results = measure(Bench(args, engine, apps[0], apps[1]), client, prefix + queue)
        text_md = report(results)
        if not quiet:
            print(text_md)
    finally:
        if engine is not None:
            engine.dispose()
        for app in apps:
            close_app(app)
        log(f"deleted {delete_keys(client, prefix)} Redis keys under {prefix}")
        store.drop()
        client.close()
    return results, text_md


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
