"""Every benchmark in one run, and one table of ratios against plain Celery measured in it.

    python -m bench.run_all [--quick] [--max-rows 1000000]
                            [--parts consumer,publish,outbox,fetch,import,recovery,cleanup]

(``scripts/bench`` runs it in the project's virtualenv after starting the services.)

Parts, each against plain Celery on the same machine, brokers and database, in this run:

    consumer  ``bench.bench_consumer``: ReliableTask throughput (idempotency off and on) and the
              cost of storing a failure, with real prefork workers; the memory of each worker
              (main and pool processes, ``bench.bench_memory``) is read after its last task
    publish   ``bench.bench_publish``: relay drain to Redis and to RabbitMQ (confirms),
              ``publish()`` against ``apply_async``, outbox commit -> broker latency, the relay's
              drain rate against its batch size, where its time goes (profile), 1, 2 and 4 relay
              processes draining one table at once (every message checked to be sent once), and
              the claim's cost against the pending table's size (1k -> 1M rows) with its query plan
    outbox    ``bench.bench_outbox``: staging messages with the outbox (``send()``, ``send_many()``)
              against an ``apply_async`` loop, per message, interleaved runs
    fetch     ``bench.bench_fetch``: a kombu consumer draining Redis with kombu's fetch against
              the atomic fetch of ``celery_reliable.broker.redis_fetch``
    import    ``bench.bench_import``: ``import celery_reliable`` against the imports any Celery app
              with a SQLAlchemy store pays (``celery.app.task``, ``sqlalchemy.orm``, ``kombu``)
    recovery  ``bench.bench_recovery``: how soon the messages of a SIGKILLed worker run again on
              Redis at the default visibility timeout (plain Celery: after the timeout)
    cleanup   ``bench.bench_cleanup``: the cleanup task deleting ``--max-rows`` sent rows past their
              retention while a relay-like thread claims due rows; how long, and what the claims
              cost meanwhile

The summary is printed and written to ``bench/results/summary.md``; each part's full report
to ``bench/results/consumer.md`` and ``bench/results/publish.md`` (the directory is git-ignored).
``--quick`` runs every measurement with small counts and once (a few minutes); the default
(full) run takes about 20 minutes, some of them to fill three pending tables of 1M rows (1.7 GB
on disk each, in databases dropped at the end; ``--max-rows 100000`` leaves them out;
``--max-rows 10000000`` adds tables of 10M rows, 17 GB each, and about 40 minutes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import (
    bench_cleanup,
    bench_consumer,
    bench_fetch,
    bench_import,
    bench_outbox,
    bench_publish,
    bench_recovery,
    scale_out,
)
from bench.bench_memory import MemoryProbe, mib
from bench.bench_memory import report_table as memory_table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

#: Arguments of each part: quick and full.
CONSUMER = {
    "quick": ["--n", "500", "--m", "200", "--runs", "1", "--trace-calls", "200"],
    "full": ["--n", "2000", "--m", "500", "--runs", "5", "--trace-calls", "1000"],
}
PUBLISH = {
    "quick": [
        "--n", "5000", "--n-amqp", "2000", "--n-single", "500", "--n-outbox", "200", "--runs", "1",
        "--batch-sizes", "100,500,2000", "--claim-backlog", "5000", "--claim-repeats", "3", "--n-relays", "5000",
    ],
    "full": [
        "--n", "20000", "--n-amqp", "10000", "--n-single", "2000", "--n-outbox", "500", "--runs", "3",
        "--batch-sizes", "100,500,2000,5000", "--claim-backlog", "10000", "--claim-repeats", "7",
        "--n-relays", "20000",
    ],
}  # fmt: skip
#: The parts of a run, in order.
PARTS = ("consumer", "publish", "outbox", "fetch", "import", "recovery", "cleanup")
#: The cleanup part deletes as many sent rows as the largest claim table (``--max-rows``); a claim
#: while it runs may take at most this long (it must never wait on the cleanup's locks).
CLEANUP_CLAIM_MAX_MS = 2000.0
OUTBOX = {"quick": ["--n", "300", "--runs", "3"], "full": ["--n", "1000", "--runs", "7"]}
FETCH = {"quick": ["--n", "3000", "--runs", "1"], "full": ["--n", "20000", "--runs", "3"]}
#: The atomic fetch may cost a consumer at most this share of kombu's fetch rate.
FETCH_TARGET = 0.85
CLAIM_SIZES = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
#: The claim of the largest table may cost at most this many times the claim of the smallest.
CLAIM_GROWTH_LIMIT = 1.2
#: Worker memory (total PSS) against a plain ``acks_late`` worker.
MEMORY_TARGET = {"reliable": 1.10, "idempotent": 1.15}
#: The previous release's figures (docs/benchmarks.md), printed beside each new one.
BEFORE = {
    "reliable": "0.91-1.46x",
    "idempotent": "0.86x at load ≈ 1; 0.57-0.64x at load 2-3",
    "failure": "+1.9 to +4.1 ms",
    "memory-reliable": "1.13x",
    "memory-idempotent": "1.24x",
    "publish-redis": "-25%",
    "publish-amqp": "-15%",
    "relay-redis": "25,416 msg/s, 14.2x",
    "relay-amqp": "3,308 msg/s, 4.3x",
    "outbox": "p50 2.6 ms, p99 3.7 ms",
    "claim": "25.7 ms at 1M sent rows, 1.32x",
    "relays": "(new)",
    "send": "≈ 0.5x (527 vs 987 msg/s)",
    "send_many": "(new)",
    "fetch": "0.90x",
    "import": "1.35x",
    "recovery": "p99 3.01 s",
    "cleanup": "(not measured; quadratic: 1M rows in 112 s with 1M kept beside them)",
}


@dataclass
class Row:
    """One line of the summary."""

    measurement: str
    reliable: str
    plain: str
    ratio: str
    target: str = ""
    met: bool | None = None
    #: the previous release's figure (:data:`BEFORE`)
    before: str = ""

    def markdown(self) -> str:
        met = "" if self.met is None else ("yes" if self.met else "**NO**")
        cells = (self.measurement, self.before, self.reliable, self.plain, self.ratio, self.target, met)
        return "| " + " | ".join(cells) + " |"


def consumer_rows(outcome: bench_consumer.Outcome, probe: MemoryProbe) -> list[Row]:
    res = outcome.results
    rate = {v: runs[0].count / statistics.median(r.seconds for r in runs) for v, runs in res.items()}
    best = {v: runs[0].count / min(r.seconds for r in runs) for v, runs in res.items()}  # least disturbed run
    # CPU per task (worker processes and PostgreSQL backends): moves much less with other load
    cpu = {v: statistics.median((r.worker_cpu + r.pg_cpu) * 1000 / r.count for r in runs) for v, runs in res.items()}
    rows: list[Row] = []
    if "acks_late" in rate:
        base = f"`acks_late` task: {rate['acks_late']:,.0f} tasks/s ({cpu['acks_late']:.2f} ms CPU/task)"
        for variant, label, target in (
            ("reliable", "`ReliableTask` throughput, no-op tasks, prefork -c 2", bench_consumer.TARGET_RELIABLE),
            ("idempotent", "`ReliableTask(idempotent=True)` throughput", bench_consumer.TARGET_IDEMPOTENT),
        ):
            if variant in rate:
                ratio = rate[variant] / rate["acks_late"]
                mine = f"{rate[variant]:,.0f} tasks/s ({cpu[variant]:.2f} ms CPU/task)"
                best_ratio = best[variant] / best["acks_late"]
                shown = f"{ratio:.2f}x (best runs: {best_ratio:.2f}x; CPU: {cpu['acks_late'] / cpu[variant]:.2f}x)"
                rows.append(Row(label, mine, base, shown, f"≥ {target:.2f}x", ratio >= target, BEFORE[variant]))
        if "defaults" in rate and "reliable" in rate:
            rows.append(
                Row(
                    "`ReliableTask` against Celery's defaults (early ack, prefetch 4)",
                    f"{rate['reliable']:,.0f} tasks/s",
                    f"defaults: {rate['defaults']:,.0f} tasks/s",
                    f"{rate['reliable'] / rate['defaults']:.2f}x",
                    "(reference)",
                )
            )
    if "fail_plain" in res and "fail_reliable" in res:
        per = {
            v: statistics.median(r.seconds for r in res[v]) * 1000 / res[v][0].count
            for v in bench_consumer.FAIL_VARIANTS
        }
        added = per["fail_reliable"] - per["fail_plain"]
        limit = bench_consumer.TARGET_FAILURE_MS
        rows.append(
            Row(
                "failure store: wall time per failing task (row stored before the ack)",
                f"{per['fail_reliable']:.2f} ms",
                f"Celery's failure path: {per['fail_plain']:.2f} ms",
                f"{added:+.2f} ms",
                f"≤ +{limit:g} ms",
                added <= limit,
                BEFORE["failure"],
            )
        )
    plain = probe.median("acks_late")
    for variant, label in (("reliable", "`ReliableTask`"), ("idempotent", "`ReliableTask(idempotent=True)`")):
        mem = probe.median(variant)
        if mem is None or plain is None:
            continue
        rows.append(
            Row(
                f"memory of a worker running {label}: total PSS of main + {len(mem.pool)} pool processes",
                f"{mib(mem.total_pss)} MiB",
                f"`acks_late` task: {mib(plain.total_pss)} MiB",
                f"{mem.total_pss / plain.total_pss:.2f}x",
                f"≤ {MEMORY_TARGET[variant]:.2f}x",
                mem.total_pss / plain.total_pss <= MEMORY_TARGET[variant],
                BEFORE[f"memory-{variant}"],
            )
        )
        if variant == "reliable":
            rows.append(
                Row(
                    "memory, worker main process: RSS / USS",
                    f"{mib(mem.main.rss)} / {mib(mem.main.uss)} MiB",
                    f"{mib(plain.main.rss)} / {mib(plain.main.uss)} MiB",
                    f"{mem.main.rss / plain.main.rss:.2f}x / {mem.main.uss / plain.main.uss:.2f}x",
                    "(no target)",
                )
            )
            rows.append(
                Row(
                    "memory, each pool process: PSS / USS",
                    f"{mib(mem.pool_mean('pss'))} / {mib(mem.pool_mean('uss'))} MiB",
                    f"{mib(plain.pool_mean('pss'))} / {mib(plain.pool_mean('uss'))} MiB",
                    f"{mem.pool_mean('pss') / plain.pool_mean('pss'):.2f}x / "
                    f"{mem.pool_mean('uss') / plain.pool_mean('uss'):.2f}x",
                    "(no target)",
                )
            )
    return rows


def publish_rows(res: dict[str, Any]) -> list[Row]:
    bp = bench_publish
    rows: list[Row] = []
    for kind, label in (("redis", "Redis"), ("amqp", "RabbitMQ, confirmed")):
        us = bp.publish_medians(res, kind)
        if us is None:
            continue
        base, over = bp.PLAIN_SEND[kind], bp.publish_overhead(us, kind)
        name = "`apply_async` + `confirm_publish`" if kind == "amqp" else "`apply_async`"
        rows.append(
            Row(
                f"`publish()` overhead, healthy {label}, per message",
                f"{us['publish']:.0f} µs",
                f"{name}: {us[base]:.0f} µs",
                f"{over:+.0%}",
                f"≤ +{bp.TARGET_PUBLISH_OVERHEAD:.0%}",
                over <= bp.TARGET_PUBLISH_OVERHEAD,
                BEFORE[f"publish-{kind}"],
            )
        )
    if "relay_redis" in res:
        relay, plain = (bp.median_run(runs) for runs in res["relay_redis"])
        runs_text = ", ".join(f"{r.rate:,.0f}" for r in res["relay_redis"][0])
        rows.append(
            Row(
                f"relay drain PostgreSQL → Redis, N = {relay.count:,} (runs: {runs_text} msg/s)",
                f"{relay.rate:,.0f} msg/s",
                f"`apply_async` loop: {plain.rate:,.0f} msg/s",
                f"{relay.rate / plain.rate:.1f}x",
                f"≥ {bp.TARGET_RELAY_REDIS_RATIO:.0f}x",
                relay.rate / plain.rate >= bp.TARGET_RELAY_REDIS_RATIO,
                BEFORE["relay-redis"],
            )
        )
    if "relay_amqp" in res:
        relay, plain = (bp.median_run(runs) for runs in res["relay_amqp"])
        ratio = relay.rate / plain.rate
        rows.append(
            Row(
                f"relay drain PostgreSQL → RabbitMQ with confirms, N = {relay.count:,}",
                f"{relay.rate:,.0f} msg/s",
                f"`apply_async` loop, `confirm_publish`: {plain.rate:,.0f} msg/s",
                f"{ratio:.1f}x",
                f"≥ {bp.TARGET_RELAY_AMQP_RATIO:.0f}x",
                ratio >= bp.TARGET_RELAY_AMQP_RATIO,
                BEFORE["relay-amqp"],
            )
        )
    if "outbox" in res:
        out = res["outbox"]
        p50, p99 = bp.pct(out["outbox"]["latency"], 0.5), bp.pct(out["outbox"]["latency"], 0.99)
        b50, b99 = bp.pct(out["plain"]["latency"], 0.5), bp.pct(out["plain"]["latency"], 0.99)
        rows.append(
            Row(
                f"outbox: `commit()` → message in Redis, N = {len(out['outbox']['latency'])}",
                f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
                f"commit, then `apply_async`: p50 {b50:.2f} ms, p99 {b99:.2f} ms",
                f"{p50 / b50:.1f}x (p50)",
                f"p50 ≤ {bp.TARGET_OUTBOX_P50_MS:g} ms, p99 ≤ {bp.TARGET_OUTBOX_P99_MS:g} ms",
                p50 <= bp.TARGET_OUTBOX_P50_MS and p99 <= bp.TARGET_OUTBOX_P99_MS,
                BEFORE["outbox"],
            )
        )
    if res.get("batch"):
        rates = {batch: bp.median_run(runs).rate for batch, runs in res["batch"].items()}
        best = max(rates, key=lambda b: rates[b])
        rows.append(
            Row(
                "relay drain → Redis against the batch size",
                ", ".join(f"{b:,}: {r:,.0f}" for b, r in rates.items()) + " msg/s",
                "",
                f"best: batch {best:,}",
                "(scaling)",
            )
        )
    if res.get("relays"):
        mine, base, ratio, met = scale_out.summary(res["relays"])
        counts = ", ".join(str(k) for k in res["relays"]["runs"])
        rows.append(
            Row(
                f"relays at once ({counts} processes) draining one table → Redis, N = {res['relays']['n']:,}; "
                "every message checked once in Redis",
                mine,
                base,
                ratio + ("" if met else " (2 relays below 1)"),
                "no message twice (a duplicate fails the run); throughput with 2 relays ≥ 1 relay: informational",
                None,
                BEFORE["relays"],
            )
        )
    if "claim" in res and res["claim"]["table"]:
        table = res["claim"]["table"]
        # the small table's claim timed right after the largest one, at the same load, if measured
        smallest = res["claim"].get("small_after") or min(table, key=lambda e: e["sent"] + e["due"])
        largest = max((e for e in table if e["sent"]), key=lambda e: e["sent"])
        # per 1,000 rows claimed: a batch larger than the small table's 1,000 due rows claims fewer there
        big, small = (e["claim_ms"] * 1000 / e.get("rows", 1000) for e in (largest, smallest))
        growth = big / small
        used = res["claim"]["index_used"]
        rows.append(
            Row(
                f"relay claim per 1,000 rows claimed, {largest['sent']:,} sent + {largest['due']:,} due rows "
                f"({largest['size']}) against {smallest['due']:,} due rows",
                f"{big:.1f} ms ({largest['claim_ms']:.1f} ms for {largest.get('rows', 1000):,} rows; "
                f"continuing a pass {largest['continuing_ms']:.1f} ms)",
                f"{small:.1f} ms ({smallest['claim_ms']:.1f} ms for {smallest.get('rows', 1000):,} rows)",
                f"{growth:.2f}x",
                f"≤ {CLAIM_GROWTH_LIMIT:g}x, partial index used" + ("" if used else " (it is **not**)"),
                used and growth <= CLAIM_GROWTH_LIMIT,
                BEFORE["claim"],
            )
        )
    return rows


def outbox_rows(results: bench_outbox.Results) -> list[Row]:
    base = f"`apply_async` loop: {results.median('apply_async'):.0f} µs"
    rows = []
    for key, label, target in (
        ("send", "outbox `send()` staging, per message", bench_outbox.TARGET_SEND),
        ("send_many", "outbox `send_many()` staging, per message", bench_outbox.TARGET_SEND_MANY),
    ):
        ratio, total = results.ratio(key), results.median(f"{key}_total")
        mine = f"{results.median(key):.0f} µs ({total:.0f} µs with commit and post-commit send)"
        shown = f"{ratio:.2f}x (with commit: {results.ratio(key + '_total'):.2f}x)"
        rows.append(Row(label, mine, base, shown, f"≥ {target:.0f}x", ratio >= target, BEFORE[key]))
    return rows


def fetch_rows(results: dict[str, list[bench_fetch.Run]]) -> list[Row]:
    kombu, atomic = (bench_fetch.median_run(results[v]) for v in ("kombu", "atomic"))
    ratio = atomic.rate / kombu.rate
    return [
        Row(
            f"Redis fetch: one kombu consumer takes, records and acks N = {atomic.count:,} messages",
            f"atomic: {atomic.rate:,.0f} msg/s",
            f"kombu's BRPOP fetch: {kombu.rate:,.0f} msg/s",
            f"{ratio:.2f}x",
            f"≥ {FETCH_TARGET:.2f}x",
            ratio >= FETCH_TARGET,
            BEFORE["fetch"],
        )
    ]


def cleanup_row(results: dict[str, Any], rows: int) -> Row:
    """The cleanup of ``rows`` sent rows past retention, and the relay's claims while it ran."""
    c = results["cleanup"]
    before, during = results["latency"]["before"], results["latency"]["during"]
    # claims went on throughout: at least one per 5 s of cleanup, none longer than the bound
    kept_going = during["n"] >= max(1, int(c["seconds"] / 5)) and during["max"] <= CLEANUP_CLAIM_MAX_MS
    met = c["rows"] == rows and results["left"] == 0 and kept_going
    return Row(
        f"cleanup deleting {rows:,} sent rows ({results['size']}) while a relay claims 500 rows every 50 ms",
        f"{c['seconds']:.0f} s ({c['rows'] / max(c['seconds'], 1e-9):,.0f} rows/s, {len(c['runs'])} runs of ≤ 60 s); "
        f"claim p50/p99/max {during['p50']:.0f}/{during['p99']:.0f}/{during['max']:.0f} ms during "
        f"({during['n']} claims)",
        f"claims before it: p50/p99/max {before['p50']:.0f}/{before['p99']:.0f}/{before['max']:.0f} ms",
        f"{during['p99'] / max(before['p99'], 1e-9):.2f}x (claim p99)",
        f"every row deleted; claims never wait on it (max ≤ {CLEANUP_CLAIM_MAX_MS / 1000:g} s)",
        met,
        BEFORE["cleanup"],
    )


def render(rows: list[Row], sections: list[str], header: list[str]) -> str:
    lines = [
        *header,
        "",
        "| measurement | before (previous release) | celery_reliable | plain Celery | ratio | target | met? |",
        "|---|---|---|---|---:|---|---|",
        *(row.markdown() for row in rows),
        *sections,
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one run each (a few minutes)")
    parser.add_argument(
        "--max-rows", type=int, default=None,
        help="largest pending table of the claim measurement (default: 1,000,000 full, 10,000 quick)",
    )  # fmt: skip
    parser.add_argument("--parts", default=",".join(PARTS), help=f"any of {', '.join(PARTS)}")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--output", default=str(RESULTS / "summary.md"))
    args = parser.parse_args(argv)
    args.part_list = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.part_list) - set(PARTS)
    if unknown or not args.part_list:
        parser.error(f"--parts: expected any of {', '.join(PARTS)}, got {args.parts!r}")
    if args.max_rows is None:
        args.max_rows = 10_000 if args.quick else 1_000_000
    if args.max_rows < 1_000:
        parser.error("--max-rows: at least 1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    command = " ".join(["python -m bench.run_all", *(sys.argv[1:] if argv is None else argv)])
    loads = [("start", bench_consumer.loadavg())]
    started = time.monotonic()
    rows: list[Row] = []
    sections: list[str] = []
    environment: list[str] = []
    code = bench_consumer.code_version()
    if "consumer" in args.part_list:
        bench_consumer.log(f"consumer benchmark ({mode}), with the memory of each worker")
        probe = MemoryProbe()
        consumer = bench_consumer.run(
            [*CONSUMER[mode], "--pg-url", args.pg_url, "--redis", args.redis], probe=probe, quiet=True
        )
        loads.append(("after the consumer part", bench_consumer.loadavg()))
        rows += consumer_rows(consumer, probe)
        environment = [line for line in consumer.report.splitlines() if line.startswith("- ")][:3]
        sections += [
            "",
            "## Memory per worker process (MiB)",
            "",
            "`celery worker -P prefork -c 2` of each variant, read from `/proc/<pid>/smaps_rollup` after its "
            "last task (median run by total PSS). RSS counts shared pages in every process; PSS shares them "
            "out; USS is what only that process holds.",
            "",
            *memory_table(probe),
        ]
    if "publish" in args.part_list:
        bench_consumer.log(f"publishing benchmark ({mode})")
        sizes = ",".join(str(s) for s in CLAIM_SIZES if s <= args.max_rows)
        publish_args = [*PUBLISH[mode], "--claim-sizes", sizes, "--pg-url", args.pg_url, "--redis", args.redis]
        results, pub_args, report = bench_publish.run([*publish_args, "--amqp", args.amqp], quiet=True)
        loads.append(("after the publishing part", bench_consumer.loadavg()))
        rows += publish_rows(results)
        environment = environment or [line for line in report.splitlines() if line.startswith("- ")][:3]
        if "batch" in results:
            sections += bench_publish.batch_details(results["batch"], pub_args)
        if "profile" in results:
            sections += bench_publish.profile_details(results["profile"], pub_args)
        if "relays" in results:
            sections += scale_out.details(results["relays"], pub_args.batch)
        if "claim" in results:
            sections += bench_publish.claim_details(results["claim"], pub_args)
    if "outbox" in args.part_list:
        bench_consumer.log(f"outbox staging benchmark ({mode})")
        staged, outbox_report = bench_outbox.run([*OUTBOX[mode], "--pg-url", args.pg_url, "--redis", args.redis], True)
        loads.append(("after the outbox part", bench_consumer.loadavg()))
        rows += outbox_rows(staged)
        sections += ["", outbox_report]
    if "fetch" in args.part_list:
        bench_consumer.log(f"fetch benchmark ({mode})")
        fetched = bench_fetch.run([*FETCH[mode], "--redis", args.redis])
        loads.append(("after the fetch part", bench_consumer.loadavg()))
        rows += fetch_rows(fetched)
        sections += ["", "## Redis fetch: kombu's against the atomic fetch", "", bench_fetch.report(fetched)]
    if "import" in args.part_list:
        bench_consumer.log(f"import time ({mode})")
        imported = bench_import.measure(7 if args.quick else 21)
        optional = bench_import.loaded_optional()
        rows.append(
            Row(
                "`import celery_reliable` (ms; optional modules loaded: " + (", ".join(optional) or "none") + ")",
                f"{imported['subject_ms']:.0f}",
                f"{imported['reference_ms']:.0f} (celery.app.task, sqlalchemy.orm, kombu)",
                f"{imported['ratio']:.2f}x",
                f"<= {bench_import.TARGET}x, no optional module",
                imported["ratio"] <= bench_import.TARGET and not optional,
                BEFORE["import"],
            )
        )
    if "recovery" in args.part_list:
        bench_consumer.log(f"recovery of a SIGKILLed worker's messages ({mode})")
        delays = bench_recovery.measure(3 if args.quick else 10, f"{args.redis}/12")
        p99 = bench_recovery.percentile(delays, 0.99)
        rows.append(
            Row(
                f"SIGKILLed worker (Redis, default visibility timeout): kill -> its messages run again "
                f"({len(delays)} messages)",
                f"p50 {statistics.median(delays):.2f} s, p99 {p99:.2f} s",
                "visibility timeout: 3,600 s (kombu), 600 s (celery_reliable without heartbeats)",
                "",
                f"p99 <= {bench_recovery.TARGET_P99:g} s",
                p99 <= bench_recovery.TARGET_P99,
                BEFORE["recovery"],
            )
        )
    if "cleanup" in args.part_list:
        bench_consumer.log(f"cleanup of {args.max_rows:,} sent rows while a relay claims ({mode})")
        cleaned, _cleanup_args, cleanup_report = bench_cleanup.run(
            ["--rows", str(args.max_rows), "--pg-url", args.pg_url, "--redis", args.redis,
             "--before", "5" if args.quick else "10", "--after", "3" if args.quick else "5"],
            quiet=True,
        )  # fmt: skip
        loads.append(("after the cleanup part", bench_consumer.loadavg()))
        rows.append(cleanup_row(cleaned, args.max_rows))
        sections += ["", "#" + cleanup_report]  # its title one level down
    minutes = (time.monotonic() - started) / 60
    met = [row.met for row in rows if row.met is not None]
    header = [
        "# celery_reliable against plain Celery: every benchmark, one run",
        "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} on commit {code}: `{command}` ({mode}, "
        f"{minutes:.1f} minutes); {sum(met)} of {len(met)} targets met.",
        "",
        *environment,
        "- load average (1, 5, 15 min): " + "; ".join(f"{when} {load}" for when, load in loads),
        "- full reports: `bench/results/consumer.md`, `bench/results/publish.md`",
    ]
    text = render(rows, sections, header)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(text)
    bench_consumer.log(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
