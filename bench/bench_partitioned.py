"""The pending table plain against partitioned by day (docs/partitioning.md): what each costs.

    python -m bench.bench_partitioned --sent 200000 --due 5000 --runs 3

Two databases of their own (created and dropped here), both migrated; one is converted with the
SQL blocks of docs/partitioning.md as written. Each gets ``--sent`` sent rows spread over the last
seven days (filled in PostgreSQL itself, a copy of a row as ``publish()`` stores it) and is
vacuumed. Then, per run: ``--due`` rows inserted through the library and drained to Redis by
``relay_once`` (batch 500), and the worker's outcome write (``mark_done``) of 100 task ids, 5 times. Last,
removing the oldest day: ``purge_sent`` (batched DELETEs) on the plain table, the page's
retire function on the partitioned one, with the dead tuples and table size left behind.
Redis: ``RELIABLE_BENCH_REDIS_URL`` (default db 8) under a key prefix deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import redis
from celery import Celery
from sqlalchemy import event

SERVER = os.environ.get("RELIABLE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("RELIABLE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")
TABLE = "celery_reliable_pending_message"
PAGE = Path(__file__).resolve().parent.parent / "docs" / "partitioning.md"


def recipe() -> dict[str, str]:
    """The page's SQL blocks by marker name."""
    return dict(re.findall(r"<!-- partition-sql: ([\w-]+) -->\n```sql\n(.*?)```", PAGE.read_text(), re.S))


def raw(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def run_sql(url: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(raw(url), autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(statement.encode())
        rows: list[tuple[Any, ...]] = []
        while True:
            if cur.description is not None:
                rows = list(cur.fetchall())
            if not cur.nextset():
                return rows


def make_app(db: str, prefix: str) -> Celery:
    app = Celery(f"bench-part-{uuid.uuid4().hex[:6]}", broker=REDIS_URL, set_as_current=False)
    app.conf.update(
        broker_transport_options={"global_keyprefix": prefix},
        reliable_database_url=db,
        task_default_queue="bench-part",
        broker_connection_retry_on_startup=True,
        reliable_relay_batch_size=500,
    )

    def noop(*args: Any) -> None:
        return None

    app.task(name="bench.noop", shared=False)(noop)
    return app


def fill_sent(db: str, app: Celery, count: int) -> None:
    """``count`` sent rows over the seven days before today (UTC), one per day in turn."""
    add_due(app, 1)  # the template: a row as publish() stores it (deleted below)
    run_sql(
        db,
        f"""INSERT INTO {TABLE} (task_id, task_name, args, kwargs, options, source, status, attempts,
               next_attempt_at, last_error, created_at, sent_at, message, tracked)
            SELECT gen_random_uuid()::text, t.task_name, t.args, t.kwargs, t.options, 'outbox', 'sent', 0,
                   d.at, '', d.at, d.at + interval '1 second', NULL, false
              FROM (SELECT * FROM {TABLE} LIMIT 1) t,
                   LATERAL (SELECT g, date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                                      - ((g % 7) + 1) * interval '1 day' + (g % 86000) * interval '1 second' AS at
                              FROM generate_series(1, {count}) g) d""",
    )
    run_sql(db, f"DELETE FROM {TABLE} WHERE sent_at IS NULL OR created_at >= date_trunc('day', now())")
    run_sql(db, f"VACUUM ANALYZE {TABLE}")


def add_due(app: Celery, count: int, delay: float = 0.0) -> list[str]:
    from celery_reliable.message.prepare import prepare
    from celery_reliable.store.pending import add_pending

    values = [prepare(app, "bench.noop", [i]) for i in range(count)]
    for start in range(0, count, 2000):
        add_pending(app, values[start : start + 2000], source="publish_fallback", delay=delay)
    return [v.task_id for v in values]


def dead_and_size(db: str) -> tuple[int, int]:
    rows = run_sql(
        db,
        f"""SELECT coalesce(sum(s.n_dead_tup), 0), coalesce(sum(pg_total_relation_size(s.relid)), 0)
              FROM pg_stat_user_tables s
             WHERE s.relname = '{TABLE}' OR s.relname LIKE '{TABLE}\\_p%' OR s.relname LIKE '{TABLE}\\_history'
                   OR s.relname = '{TABLE}_default'""",
    )
    return int(rows[0][0]), int(rows[0][1])


def claim_plan(db: str, statement: str, params: Any) -> tuple[float, dict[str, int], int, int]:
    """EXPLAIN ANALYZE of a claim the relay ran, rolled back: its time (ms), its scan nodes counted (the
    index names with the partition's date left out), and the blocks its sequential scans read."""
    from sqlalchemy import create_engine

    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            transaction = conn.begin()
            plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, params).scalar_one()
            transaction.rollback()
    finally:
        engine.dispose()
    scans: Counter[str] = Counter()
    seq_blocks = 0

    def walk(node: dict[str, Any]) -> None:
        nonlocal seq_blocks
        if node["Node Type"] == "Seq Scan":
            seq_blocks += int(node.get("Shared Hit Blocks", 0)) + int(node.get("Shared Read Blocks", 0))
        if "Scan" in node["Node Type"]:
            index = re.sub(r"_p\d{8}_|_history_|_default_", "_<partition>_", node.get("Index Name", ""))
            scans[f"{node['Node Type']} {index}".strip()] += 1
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return float(plan[0]["Execution Time"]), dict(scans), seq_blocks, int(plan[0]["Plan"].get("Actual Rows", 0))


def measure(kind: str, db: str, args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    from celery_reliable import relay_once, upgrade
    from celery_reliable.send.publisher import reset_publisher
    from celery_reliable.store.engine import dispose, get_autocommit_engine
    from celery_reliable.store.ledger import mark_done
    from celery_reliable.store.pending import purge_sent

    upgrade(db)
    if kind == "partitioned":
        blocks = recipe()
        run_sql(db, blocks["functions"])
        run_sql(db, blocks["convert"])
    app = make_app(db, prefix)
    result: dict[str, Any] = {"kind": kind, "drain": [], "mark_done": []}
    claims: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "SKIP LOCKED" in statement and not claims:
            claims.append((statement, params))

    try:
        fill_sent(db, app, args.sent)
        event.listen(get_autocommit_engine(app), "before_cursor_execute", capture)
        for _ in range(args.runs):
            task_ids = add_due(app, args.due)
            started = time.perf_counter()
            stats = relay_once(app, batch_size=500)
            elapsed = time.perf_counter() - started
            assert stats.sent == args.due, stats
            result["drain"].append(args.due / elapsed)
            for start in range(0, 500, 100):  # the worker writes the outcomes of an interval at once
                started = time.perf_counter()
                assert mark_done(app, task_ids[start : start + 100]) == 100
                result["mark_done"].append((time.perf_counter() - started) * 1000)
        # a backlog again (due before the time in the captured claim): the plan of that claim over it
        add_due(app, args.due, delay=-3600)
        result["claim"] = claim_plan(db, *claims[0])
        assert relay_once(app, batch_size=500).sent == args.due
        result["partitions"] = run_sql(db, f"SELECT count(*) FROM pg_inherits WHERE inhparent = '{TABLE}'::regclass")
        oldest = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=6)
        started = time.perf_counter()
        if kind == "plain":
            removed = purge_sent(app, (datetime.now(timezone.utc) - oldest).total_seconds())
        else:
            name = f"{TABLE}_p{(oldest - timedelta(days=1)):%Y%m%d}"
            removed = int(run_sql(db, recipe()["retire"].replace(f"{TABLE}_p20261201", name))[0][0])
        result["remove"] = (removed, time.perf_counter() - started)
    finally:
        reset_publisher(app)
        dispose(app)  # closing its connections sends their statistics to pg_stat_user_tables
        app.close()
    time.sleep(1)
    result["after"] = dead_and_size(db)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sent", type=int, default=200_000, help="sent rows over the last seven days")
    parser.add_argument("--due", type=int, default=5000, help="rows drained by the relay in each run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from sqlalchemy import create_engine, text

    admin = create_engine(SERVER, isolation_level="AUTOCOMMIT")
    base = SERVER.rpartition("/")[0]
    prefix = f"bench-part-{uuid.uuid4().hex[:8]}:"
    results = []
    try:
        for kind in ("plain", "partitioned"):
            name = f"reliable_b_part_{uuid.uuid4().hex[:8]}"
            with admin.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {name}"))
            try:
                results.append(measure(kind, f"{base}/{name}", args, prefix))
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    finally:
        admin.dispose()
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
    print(f"{args.sent:,} sent rows over 7 days; {args.due:,} due rows per run; {args.runs} runs; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| table | partitions | relay drain (msg/s, median; runs) | mark_done of 100 ids (ms, median) "
          "| remove the oldest day | dead tuples, size after |")  # fmt: skip
    print("|---|---:|---|---:|---|---|")
    for r in results:
        removed, seconds = r["remove"]
        dead, size = r["after"]
        runs = ", ".join(f"{x:,.0f}" for x in r["drain"])
        print(f"| {r['kind']} | {r['partitions'][0][0]} | {statistics.median(r['drain']):,.0f} ({runs}) "
              f"| {statistics.median(r['mark_done']):.1f} | {removed:,} rows in {seconds * 1000:,.0f} ms "
              f"| {dead:,}, {size / 2**20:,.0f} MiB |")  # fmt: skip
    for r in results:
        ms, scans, seq_blocks, claimed = r["claim"]
        print(f"claim over a backlog of {args.due:,}, {r['kind']}: EXPLAIN ANALYZE {ms:.1f} ms, {claimed} rows, "
              f"scans: {scans}; blocks read by sequential scans: {seq_blocks}")  # fmt: skip


if __name__ == "__main__":
    main()
