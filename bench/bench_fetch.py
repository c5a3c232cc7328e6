"""What the atomic Redis fetch costs a consumer: kombu's fetch against celery_reliable's.

    python -m bench.bench_fetch [--n 20000] [--runs 3] [--redis redis://127.0.0.1:6379]

A queue of N small messages is drained by one kombu consumer that acknowledges each message,
once with kombu's Redis transport (BRPOP, then the unacked record in a second round trip) and
once with ``celery_reliable.broker.redis_fetch`` (a BLMOVE wake-up and a Lua script that takes and
records the message in one step). Both run in this process, in turns, on the same Redis
database (db 13) with a queue of their own; the median run of each is compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from kombu import Connection, Exchange, Queue

from celery_reliable.broker.redis_fetch import TRANSPORT
from celery_reliable.broker.redis_liveness import held_key

VARIANTS = {"kombu": "redis", "atomic": TRANSPORT}
#: Redis database of this benchmark (tests use 11, the other benchmarks 12).
DB = 13


@dataclass
class Run:
    variant: str
    count: int
    seconds: float
    redis_cpu: float  # seconds of redis-server CPU during the drain (INFO cpu, main thread and children)

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _fill(url: str, queue: Queue, n: int) -> None:
    with Connection(url) as conn:
        producer = conn.Producer()
        for i in range(n):
            producer.publish({"i": i}, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue])


def drain(url: str, variant: str, n: int) -> Run:
    name = f"bench-fetch-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    client = redis.Redis.from_url(url)
    _fill(url, queue, n)
    got = 0
    worker_id = f"bench-fetch-{os.getpid()}"

    def on_message(body: Any, message: Any) -> None:
        nonlocal got
        got += 1
        message.ack()

    try:
        with Connection(url, transport=VARIANTS[variant]) as conn:
            if variant == "atomic":  # what a worker's consumer does: each message held is tracked (liveness)
                conn.reliable_worker_id = worker_id  # type: ignore[attr-defined]
            with conn.Consumer(queue, callbacks=[on_message], accept=["json"]):
                cpu = _redis_cpu(client)
                started = time.perf_counter()
                deadline = time.monotonic() + 120
                while got < n and time.monotonic() < deadline:
                    try:
                        conn.drain_events(timeout=5)
                    except TimeoutError:
                        break
                seconds = time.perf_counter() - started
                used = _redis_cpu(client) - cpu
        if got != n:
            raise RuntimeError(f"{variant}: {got} of {n} messages consumed")
        return Run(variant, n, seconds, used)
    finally:
        client.delete(name, f"_kombu.binding.{name}", held_key(worker_id))
        client.close()


def run(argv: list[str] | None = None) -> dict[str, list[Run]]:
    args = parse_args(argv)
    url = f"{args.redis.rstrip('/')}/{DB}"
    results: dict[str, list[Run]] = {variant: [] for variant in VARIANTS}
    for _ in range(args.runs):
        for variant in VARIANTS:  # in turns: a disturbance hits both
            results[variant].append(drain(url, variant, args.n))
    return results


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


def report(results: dict[str, list[Run]]) -> str:
    kombu, atomic = median_run(results["kombu"]), median_run(results["atomic"])
    lines = [
        "| fetch | msg/s (median) | runs | redis-server CPU per message |",
        "|---|---:|---|---:|",
    ]
    shown = (("kombu (BRPOP, then HSET)", results["kombu"], kombu), ("atomic", results["atomic"], atomic))
    for label, runs, best in shown:
        per = statistics.median(r.redis_cpu / r.count * 1e6 for r in runs)
        lines.append(f"| {label} | {best.rate:,.0f} | {', '.join(f'{r.rate:,.0f}' for r in runs)} | {per:.1f} µs |")
    lines.append("")
    lines.append(f"ratio atomic / kombu: {atomic.rate / kombu.rate:.2f}x")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    print(report(run(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
