"""``apublish()`` against ``publish()`` run in a thread, from an asyncio application.

    python -m bench.bench_async [--n 2000] [--n-down 100] [--concurrency 50] [--runs 3]

Three ways an asyncio app can publish, each measured as messages per second and as the longest
the event loop was held (a ticker coroutine wakes every 2 ms and keeps the longest gap between
two wake-ups):

    apublish            ``await apublish(app, ...)``
    to_thread(publish)  ``await asyncio.to_thread(publish, app, ...)`` (the loop's default executor)
    publish on loop     ``publish(app, ...)`` called in the coroutine: the reference for a held loop

``--concurrency`` coroutines publish ``--n`` messages between them (healthy Redis), then
``--n-down`` messages to a port where nothing listens (each tried 1 + 2 times with backoff, then
written to the pending table; reliable_publish_retry_backoff 0.05 s). Runs are interleaved by
variant; the median run is reported.

Everything runs on 127.0.0.1: Redis db ``--redis-db`` with every key under a unique prefix (kombu's
``global_keyprefix``; deleted at the end, the server is never flushed or reconfigured) and a
PostgreSQL database for the pending table, created and dropped here. Every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from bench.bench_consumer import Store, code_version, delete_keys, loadavg, log
from bench.bench_publish import TASK, close_app, make_app, payload
from celery_reliable import PublishResult, apublish, publish

VARIANTS = ("apublish", "to_thread(publish)", "publish on loop")


@dataclass
class Run:
    rate: float  # messages per second
    stall_ms: float  # longest gap between two ticks of the loop
    sent: int
    kept: int


async def _ticking(work: Awaitable[Any]) -> tuple[Any, float]:
    """``work``, awaited while a ticker measures the longest gap of the loop (seconds)."""
    stop = asyncio.Event()
    worst = 0.0

    async def tick() -> None:
        nonlocal worst
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.002)
            now = time.monotonic()
            worst = max(worst, now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    try:
        result = await work
    finally:
        stop.set()
        await ticker
    return result, worst


def _sender(variant: str, app: Celery) -> Callable[[int], Awaitable[PublishResult]]:
    def args_of(i: int) -> tuple[list[Any], dict[str, Any]]:
        return payload(i)

    async def via_apublish(i: int) -> PublishResult:
        args, kwargs = args_of(i)
        return await apublish(app, TASK, args, kwargs)

    async def via_thread(i: int) -> PublishResult:
        args, kwargs = args_of(i)
        return await asyncio.to_thread(publish, app, TASK, args, kwargs)

    async def on_loop(i: int) -> PublishResult:
        args, kwargs = args_of(i)
        return publish(app, TASK, args, kwargs)

    return {"apublish": via_apublish, "to_thread(publish)": via_thread, "publish on loop": on_loop}[variant]


def measure(variant: str, app: Celery, n: int, concurrency: int) -> Run:
    send = _sender(variant, app)

    async def worker(start: int) -> list[PublishResult]:
        return [await send(i) for i in range(start, n, concurrency)]

    async def everything() -> list[PublishResult]:
        batches = await asyncio.gather(*(worker(c) for c in range(min(concurrency, n))))
        return [r for batch in batches for r in batch]

    started = time.perf_counter()
    results, stall = asyncio.run(_ticking(everything()))
    took = time.perf_counter() - started
    sent = sum(r.sent for r in results)
    return Run(len(results) / took, stall * 1000, sent, len(results) - sent)


def report(results: dict[str, dict[str, list[Run]]], args: argparse.Namespace, command: str) -> str:
    lines = [
        "# apublish() against publish() in a thread",
        "",
        f"`{command}` — code {code_version()}, load average {loadavg()}",
        "",
        f"{args.concurrency} coroutines; median of {args.runs} runs (by rate); stall: the longest gap of a 2 ms ticker",
        "",
        "| broker | variant | messages | msg/s | max loop stall (ms) | sent / kept |",
        "|---|---|---|---|---|---|",
    ]
    for phase, by_variant in results.items():
        for variant, runs in by_variant.items():
            ordered = sorted(runs, key=lambda r: r.rate)
            mid = ordered[len(ordered) // 2]
            worst = max(r.stall_ms for r in runs)
            n = mid.sent + mid.kept
            lines.append(
                f"| {phase} | {variant} | {n} | {mid.rate:,.0f} | {mid.stall_ms:.1f} (worst run {worst:.1f}) "
                f"| {mid.sent} / {mid.kept} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="messages per run, healthy Redis (default 2000)")
    parser.add_argument("--n-down", type=int, default=100, help="messages per run, broker down (default 100)")
    parser.add_argument("--concurrency", type=int, default=50, help="coroutines publishing at once (default 50)")
    parser.add_argument("--runs", type=int, default=3, help="runs per variant (median reported)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server URL")
    parser.add_argument("--redis-db", type=int, default=13, help="Redis database number")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args(argv)
    for name in ("n", "n_down", "concurrency", "runs"):
        if not 1 <= getattr(args, name) <= 100_000:
            parser.error(f"--{name.replace('_', '-')} must be from 1 to 100000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("celery_reliable").setLevel(logging.ERROR)  # a warning per failed try, by design
    command = " ".join(["python -m bench.bench_async", *(sys.argv[1:] if argv is None else argv)])
    broker = f"{args.redis.rstrip('/')}/{args.redis_db}"
    tag = uuid.uuid4().hex[:8]
    prefix, queue = f"reliable-bench-async-{tag}:", f"reliable-bench-async-{tag}"
    client = redis.Redis.from_url(broker, socket_timeout=10, socket_connect_timeout=5)
    client.ping()
    store = Store("postgres", args.pg_url)
    apps: list[Celery] = []
    try:
        store.create()
        transport = {"global_keyprefix": prefix}
        live = make_app("bench-async", broker, queue, db_url=store.url, transport=transport)
        # nothing listens on port 1: every try is refused at once, the waits are the backoff's
        down = make_app("bench-async-down", "redis://127.0.0.1:1/0", queue, db_url=store.url)
        for app in (live, down):
            app.conf.update(reliable_publish_retries=2, reliable_publish_retry_backoff=0.05)
        apps += [live, down]
        results: dict[str, dict[str, list[Run]]] = {"Redis": {v: [] for v in VARIANTS}, "down": {}}
        results["down"] = {v: [] for v in VARIANTS}
        measure("apublish", live, min(args.n, 200), args.concurrency)  # warm-up: connections, imports
        for run in range(args.runs):
            for phase, app, n in (("Redis", live, args.n), ("down", down, args.n_down)):
                for variant in VARIANTS:
                    result = measure(variant, app, n, args.concurrency)
                    results[phase][variant].append(result)
                    log(f"run {run + 1} {phase} {variant}: {result.rate:,.0f} msg/s, stall {result.stall_ms:.1f} ms")
        text_md = report(results, args, command)
        print(text_md)
        rates = {v: statistics.median(r.rate for r in results["Redis"][v]) for v in VARIANTS}
        log(f"apublish / to_thread(publish), healthy Redis: {rates['apublish'] / rates['to_thread(publish)']:.2f}x")
    finally:
        for app in apps:
            close_app(app)
        log(f"deleted {delete_keys(client, prefix)} Redis keys under {prefix}")
        store.drop()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
