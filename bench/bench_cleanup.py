"""Cleanup of a large pending table while a relay claims: how long it takes, and what it costs the claims.

    python -m bench.bench_cleanup [--rows 1000000] [--kept 0] [--backlog 10000] [--claim-batch 500]
                                  [--claim-every 0.05] [--before 10] [--time-limit 60]

The table is filled in PostgreSQL itself (``fill_generated`` of ``bench_publish``): ``--rows``
sent rows past their retention, sent ``--sent-per-ms`` per millisecond like relay batches, and
a due backlog of ``--backlog`` rows. A relay-like thread then claims ``--claim-batch`` due rows
(``claim_batch(..., light=True)``, the relay's claim; each batch above the last, as a relay
pass does, from the start again at the end) and releases them, every
``--claim-every`` seconds, for ``--before`` seconds alone, then while the cleanup runs (the main
thread calls ``purge_sent`` the way the beat task does, run after run with ``--time-limit``
until one finds nothing, when this version of celery_reliable takes one), then ``--after``
seconds alone again. Reported: the cleanup's time and rows per second, its runs, the claim's
latency (p50, p99, max) in each phase, the rows deleted every few seconds (from the table's
statistics), and EXPLAIN (ANALYZE, BUFFERS) of a cleanup batch: the first, the first of a run
going on where the last stopped, and (``--halfway-plan``) one from the start of the index once
half the rows are gone, concurrent with the cleanup (what every batch cost before batches
started where the last ended).

A PostgreSQL database of its own is created next to ``--pg-url`` and dropped at the end; the
app's broker URL (Redis db ``--redis-db``) is never used. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import Engine, create_engine, text

from bench.bench_consumer import Store, code_version, loadavg, log, require_loopback
from bench.bench_publish import PENDING, close_app, fill_generated, make_app, pct, pending_rows, table_size

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


class Claimer(threading.Thread):
    """A relay-like loop: claim a batch of due rows, release it, sleep; notes each claim's latency."""

    def __init__(self, app: Celery, batch: int, every: float, deadline: float) -> None:
        super().__init__(daemon=True, name="bench-claimer")
        self.app = app
        self.batch = batch
        self.every = every
        self.deadline = deadline
        self.samples: list[tuple[float, float]] = []  # (when, ms)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from celery_reliable.store.claims import claim_rows, release

        try:  # the relay's own claim: rows locked in a transaction (PostgreSQL), or leased
            from celery_reliable.store.batches import claim_batch
        except ImportError:
            claim_batch = None  # type: ignore[assignment]
        try:
            after_id: int | None = None
            for _ in range(10_000_000):
                if self.stop_event.is_set() or time.monotonic() > self.deadline:
                    return
                start = time.perf_counter()
                if claim_batch is None:
                    token, rows = claim_rows(self.app, limit=self.batch, lease=60, after_id=after_id, light=True)
                    took = (time.perf_counter() - start) * 1000
                    release(self.app, token, [r.id for r in rows])
                else:
                    held, rows = claim_batch(self.app, limit=self.batch, lease=60, after_id=after_id, light=True)
                    took = (time.perf_counter() - start) * 1000
                    held.abandon([r.id for r in rows])
                if not rows and after_id is None:
                    raise RuntimeError("a claim found no due row")
                # a relay pass: the next batch above this one, from the start again at the end
                after_id = rows[-1].id if len(rows) == self.batch else None
                self.samples.append((time.monotonic(), took))
                self.stop_event.wait(self.every)
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def between(self, start: float, end: float) -> list[float]:
        return [ms for when, ms in self.samples if start <= when < end]


def latency(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    return {"n": len(values), "p50": statistics.median(values), "p99": pct(values, 0.99), "max": max(values)}


def deleted_so_far(engine: Engine) -> int:
    """Rows deleted from the pending table, from the statistics (flushed within about a second)."""
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        value = conn.execute(
            text("SELECT n_tup_del FROM pg_stat_user_tables WHERE relname = :t"), {"t": PENDING}
        ).scalar()
    return int(value or 0)


def explain_batch(engine: Engine, batch: int, cutoff: datetime, floor: Any = None) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of one cleanup batch's select, rolled back: the library's own
    statement when it has one (``sent_batch_query``), else the select of ``delete_in_batches``."""
    from sqlalchemy import or_, select
    from sqlalchemy.dialects import postgresql

    from celery_reliable.store import pending
    from celery_reliable.store.models import PendingMessage, PendingStatus

    builder = getattr(pending, "sent_batch_query", None)
    if builder is not None:
        statement = builder(cutoff, batch, floor)
    else:
        finished = or_(PendingMessage.status == PendingStatus.DONE, PendingMessage.tracked.is_(False))
        statement = (
            select(PendingMessage.id)
            .where(PendingMessage.status.in_(PendingStatus.DELIVERED), finished, PendingMessage.sent_at < cutoff)
            .limit(batch)
        )
    sql = str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            plan = [str(row[0]) for row in conn.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql))]
        finally:
            transaction.rollback()
    return [" ".join(sql.split()), "", *plan]


def older_than(args: argparse.Namespace) -> float:
    """The retention that puts the cutoff at ``args.cutoff`` now."""
    from celery_reliable.store.models import utcnow

    return (utcnow() - args.cutoff).total_seconds()


def run_cleanup(
    app: Celery, args: argparse.Namespace, engine: Engine, progress: list[tuple[float, int]]
) -> dict[str, Any]:
    """``purge_sent`` run after run (a beat run each) until one deletes nothing; progress sampled."""
    from celery_reliable.store.pending import purge_sent

    bounded = "time_limit" in inspect.signature(purge_sent).parameters
    runs: list[tuple[int, float]] = []
    from celery_reliable.store import failures

    plans = {"the first batch, before the cleanup": explain_batch(engine, args.batch, args.cutoff)}
    halfway: list[str] = []
    done = threading.Event()

    def sample() -> None:
        base = deleted_so_far(engine)
        start = time.monotonic()
        for _ in range(100_000):
            if done.wait(args.sample_every):
                return
            progress.append((time.monotonic() - start, deleted_so_far(engine) - base))
            if args.halfway_plan and not halfway and progress[-1][1] >= args.rows // 2:
                halfway.extend(explain_batch(engine, args.batch, args.cutoff))

    sampler = threading.Thread(target=sample, daemon=True, name="bench-sampler")
    sampler.start()
    start = time.perf_counter()
    try:
        for _ in range(10_000):
            begun = time.perf_counter()
            if bounded:
                removed = purge_sent(app, older_than(args), batch=args.batch, time_limit=args.time_limit)
            else:
                removed = purge_sent(app, older_than(args), batch=args.batch)
            runs.append((removed, time.perf_counter() - begun))
            log(f"cleanup run {len(runs)}: {removed:,} rows in {runs[-1][1]:.1f}s")
            if not removed or not bounded:
                break
            resumed = dict(getattr(failures, "_resume", {}))
            label = "the first batch of a run going on where the last one stopped"
            if len(resumed) == 1 and label not in plans:
                plans[label] = explain_batch(engine, args.batch, args.cutoff, next(iter(resumed.values())))
    finally:
        done.set()
        sampler.join(timeout=10)
    took = time.perf_counter() - start
    total = sum(r for r, _ in runs)
    if halfway:
        plans["half-way, from the start of the index (concurrent with the cleanup)"] = halfway
    return {"bounded": bounded, "runs": runs, "seconds": took, "rows": total, "plans": plans}


def report(results: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    c = results["cleanup"]
    lines = [
        "# Cleanup of a large pending table",
        "",
        f"`{command}`",
        "",
        f"- code: {results['code']}; PostgreSQL {results['server']}; load average before {results['load_before']}, "
        f"after {results['load_after']}",
        f"- table: {args.rows:,} sent rows past retention + {args.kept:,} within it + {args.backlog:,} due, "
        f"{results['size']} "
        f"(filled in {results['fill_s']:.0f}s); after the cleanup {results['size_after']}",
        f"- cleanup: {c['rows']:,} rows in {c['seconds']:.1f}s ({c['rows'] / max(c['seconds'], 1e-9):,.0f} rows/s), "
        f"{len(c['runs'])} run(s){' with a time limit of ' + str(args.time_limit) + 's' if c['bounded'] else ''}; "
        f"sent rows left: {results['left']:,} (expected {args.kept:,})",
        f"- relay-like claims of {args.claim_batch} rows (+ release) every {args.claim_every}s",
        "",
        "| phase | claims | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for phase in ("before", "during", "after"):
        s = results["latency"][phase]
        lines.append(f"| {phase} cleanup | {s['n']} | {s['p50']:.1f} | {s['p99']:.1f} | {s['max']:.1f} |")
    lines += ["", "Rows deleted (table statistics) against time since the cleanup began:", ""]
    lines += ["| s | rows deleted | rows/s since last |", "|---:|---:|---:|"]
    last_t, last_n = 0.0, 0
    for t, n in results["progress"]:
        lines.append(f"| {t:.0f} | {n:,} | {(n - last_n) / max(t - last_t, 1e-9):,.0f} |")
        last_t, last_n = t, n
    lines += ["", "Runs (rows, seconds):", ""]
    lines += [f"- {r:,} rows, {s:.1f}s" for r, s in c["runs"][:50]]
    for label, plan in c["plans"].items():
        lines += ["", f"EXPLAIN (ANALYZE, BUFFERS) of {label}:", "", "```", *plan, "```"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="sent rows past retention")
    parser.add_argument(
        "--kept", type=int, default=0, help="sent rows within their retention, newer than the others (kept)"
    )
    parser.add_argument("--backlog", type=int, default=10_000, help="due rows the claims take")
    parser.add_argument("--sent-per-ms", type=int, default=2000, help="sent rows per millisecond (a relay batch)")
    parser.add_argument("--batch", type=int, default=5000, help="cleanup batch")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per cleanup run (when supported)")
    parser.add_argument("--claim-batch", type=int, default=500)
    parser.add_argument("--claim-every", type=float, default=0.05, help="seconds between claims")
    parser.add_argument("--before", type=float, default=10.0, help="seconds of claims before the cleanup")
    parser.add_argument("--after", type=float, default=5.0, help="seconds of claims after the cleanup")
    parser.add_argument(
        "--halfway-plan", action="store_true", help="EXPLAIN ANALYZE a batch from the index's start half-way"
    )
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between progress samples")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="the claim thread stops after this")
    parser.add_argument(
        "--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        help="an existing database on the server; a new one is created next to it and dropped",
    )  # fmt: skip
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server URL (the app's broker, unused)")
    parser.add_argument("--redis-db", type=int, default=13, help="Redis database number")
    parser.add_argument("--output", default=str(RESULTS / "cleanup.md"))
    args = parser.parse_args(argv)
    require_loopback(parser, args.redis, args.pg_url)
    if args.kept % args.sent_per_ms:
        parser.error("--kept must be a multiple of --sent-per-ms (the cutoff falls between two sends)")
    if args.backlog < args.claim_batch:
        parser.error("--backlog must be at least --claim-batch (each claim takes a full batch)")
    return args


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


def run(argv: list[str] | None = None, quiet: bool = False) -> tuple[dict[str, Any], argparse.Namespace, str]:
    """Fill, clean up while claiming, report; returns (results, arguments, the report's Markdown)."""
    args = parse_args(argv)
    command = " ".join(["python -m bench.bench_cleanup", *(sys.argv[1:] if argv is None else argv)])
    text_md = ""
    broker = f"{args.redis.rstrip('/')}/{args.redis_db}"
    store = Store("postgres", args.pg_url)
    engine: Engine | None = None
    app: Celery | None = None
    results: dict[str, Any] = {"code": code_version()}
    try:
        store.create()
        results["server"] = store.server_version
        engine = create_engine(store.url, pool_size=2)
        app = make_app("cleanup", broker, f"reliable-bench-clean-{uuid.uuid4().hex[:8]}", db_url=store.url)
        log(f"database {store.name}: filling {args.rows:,} + {args.kept:,} sent + {args.backlog:,} due rows")
        template = pending_rows(app, 0, 1)[0]
        sent = args.rows + args.kept
        results["fill_s"] = fill_generated(engine, template, sent, args.backlog, sent_per_ms=args.sent_per_ms)
        # the newest ``kept`` rows were sent after the cutoff (half a millisecond between two sends)
        args.cutoff = template["created_at"] - timedelta(milliseconds=args.kept / args.sent_per_ms - 0.5)
        results["size"] = table_size(engine)
        log(f"filled in {results['fill_s']:.0f}s: {results['size']}")
        results["load_before"] = loadavg()
        claimer = Claimer(app, args.claim_batch, args.claim_every, time.monotonic() + args.max_seconds)
        claimer.start()
        time.sleep(args.before)
        began = time.monotonic()
        progress: list[tuple[float, int]] = []
        results["cleanup"] = run_cleanup(app, args, engine, progress)
        ended = time.monotonic()
        time.sleep(args.after)
        claimer.stop_event.set()
        claimer.join(timeout=30)
        if claimer.error is not None:
            raise RuntimeError(f"the claim thread failed: {claimer.error!r}") from claimer.error
        results["load_after"] = loadavg()
        results["progress"] = progress
        results["latency"] = {
            "before": latency(claimer.between(began - args.before, began)),
            "during": latency(claimer.between(began, ended)),
            "after": latency(claimer.between(ended, ended + args.after + 1)),
        }
        with engine.connect() as conn:
            results["left"] = int(
                conn.execute(text(f"SELECT count(*) FROM {PENDING} WHERE status IN ('sent', 'done')")).scalar_one()
            )
        results["size_after"] = table_size(engine)
        text_md = report(results, args, command)
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text_md)
        if not quiet:
            print(text_md)
        log(f"written to {output}")
    finally:
        if app is not None:
            close_app(app)
        if engine is not None:
            engine.dispose()
        store.drop()
        log(f"dropped database {store.name}")
    return results, args, text_md


if __name__ == "__main__":
    sys.exit(main())
