"""Several relays draining one pending table into Redis: the relay processes, the checks, the table.

The section ``relays`` of :mod:`bench.bench_publish`. Each relay is a process of its own,
spawned (it builds its own app, engine and connections after it starts, as a relay on another
host would); they start together behind a barrier and each calls ``relay_once`` until a pass
finds nothing due. What is checked afterwards is what the lease and ``FOR UPDATE SKIP LOCKED``
promise: every row sent once, every message in Redis once. A count that is off raises.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

#: Messages read back from Redis per LRANGE.
_READ = 1000


@dataclass(frozen=True)
class RelayConf:
    """What a relay process needs to build its own app (picklable: it crosses to the child)."""

    broker: str
    queue: str
    db_url: str
    prefix: str
    batch: int
    timeout: float


@dataclass
class ScaleRun:
    """One drain of ``count`` rows by ``relays`` relay processes at once."""

    relays: int
    count: int
    #: from the first relay's start to the last row marked sent, over all relays
    seconds: float
    #: rows each relay sent, and the CPU seconds each relay process used (with its claim thread)
    shares: list[int]
    cpu: list[float]
    pg_cpu: float  # the PostgreSQL backends of the benchmark database
    broker_cpu: float  # redis-server (shared with other users of the server)
    #: CPUs busy on the whole machine over the drain (every process: CPU seconds per second), of ``cpus``
    busy: float
    cpus: int
    load: str

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def per_msg_us(self, seconds: float) -> float:
        return seconds / self.count * 1e6


# -- in the relay process ----------------------------------------------------------------------


def relay_process(
    index: int,
    conf: RelayConf,
    ready: threading.Barrier,
    go: threading.Barrier,
    done: threading.Barrier,
    out: Any,
) -> None:
    """One relay: warm up on the rows there are, wait for the others, drain, report, wait.

    It stays connected until the parent has read the PostgreSQL backends' CPU (``done``): a
    backend that has gone takes its CPU time with it.
    """
    from bench.bench_publish import close_app, make_app

    try:
        app = make_app(
            f"relay-{index}", conf.broker, conf.queue, db_url=conf.db_url, transport={"global_keyprefix": conf.prefix}
        )
        try:
            relay_loop(app, 50, time.monotonic() + conf.timeout)  # connections to PostgreSQL and Redis
            ready.wait(conf.timeout)
            go.wait(conf.timeout)
            cpu0 = time.process_time()
            first = time.perf_counter()  # CLOCK_MONOTONIC: one clock for every process of the machine
            drained = relay_loop(app, conf.batch, time.monotonic() + conf.timeout)
            drained.update(index=index, pid=os.getpid(), first=first, cpu=time.process_time() - cpu0)
            out.put(drained)
            done.wait(conf.timeout)
        finally:
            close_app(app)
    except BaseException as exc:
        out.put({"index": index, "error": f"{type(exc).__name__}: {exc}"})
        for barrier in (ready, go, done):
            barrier.abort()
        raise


def relay_loop(app: Any, batch: int, deadline: float) -> dict[str, Any]:
    """``relay_once`` until a pass claims nothing: no row is due (the rest are sent or held by
    other relays under their leases). A broker failure, a row not sent or the deadline raise."""
    from celery_reliable import relay_once

    sent = claimed = passes = 0
    last: float | None = None
    for passes in range(1, 100_001):
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"relay still finding due rows after {passes - 1} passes at the deadline")
        stats = relay_once(app, batch_size=batch, time_limit=left)
        if stats.broker_down or stats.errors or stats.failed or stats.invalid or stats.expired:
            raise RuntimeError(f"relay pass: {stats}")
        sent += stats.sent
        claimed += stats.claimed
        if stats.sent:
            last = time.perf_counter()
        if not stats.claimed:
            break
    return {"sent": sent, "claimed": claimed, "passes": passes, "last": last}


# -- in the parent -----------------------------------------------------------------------------


def wait(barrier: threading.Barrier, procs: list[Any], timeout: float, out: Any) -> None:
    """Pass ``barrier`` once every relay waits at it; if one died or broke it, raise with what
    the relays reported (polled: a relay that died never reaches the barrier)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        if barrier.n_waiting >= len(procs) or barrier.broken:
            break
        if any(proc.exitcode is not None for proc in procs) or time.monotonic() > deadline:
            barrier.abort()
            break
        time.sleep(0.02)
    try:
        barrier.wait(10)
    except threading.BrokenBarrierError:
        raise RuntimeError(f"a relay process failed or timed out: {errors(out)}") from None


def results(out: Any, procs: list[Any], timeout: float) -> list[dict[str, Any]]:
    """What each relay reported, by relay; raise if one failed, died or took too long."""
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.1) + len(procs) + 1):
        if len(reports) == len(procs):
            break
        try:
            reports.append(out.get(timeout=0.1))
        except queue.Empty:
            dead = [proc.exitcode for proc in procs if proc.exitcode is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"relay processes: exit codes {dead}, {len(reports)} reported") from None
            continue
        if "error" in reports[-1]:
            raise RuntimeError(f"relay {reports[-1]['index']}: {reports[-1]['error']}")
    if len(reports) != len(procs):
        raise RuntimeError(f"{len(reports)} of {len(procs)} relays reported")
    return sorted(reports, key=lambda r: int(r["index"]))


def errors(out: Any) -> list[str]:
    """The errors relay processes put on the result queue (what is there now)."""
    found = []
    for _ in range(1000):
        try:
            item = out.get(timeout=0.5)
        except queue.Empty:
            break
        if "error" in item:
            found.append(f"relay {item['index']}: {item['error']}")
    return found or ["(no error reported; see the relay processes' output)"]


def cpu_seconds() -> tuple[float, int]:
    """CPU seconds used so far on the whole machine (all CPUs, not idle, not waiting for I/O),
    and the number of CPUs (``/proc/stat``)."""
    lines = Path("/proc/stat").read_text().splitlines()
    ticks = [int(v) for v in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), cpus


def check_queue(client: redis.Redis, key: str, task_ids: set[str]) -> None:
    """The queue holds exactly one message per row: as many as rows, each task id once, the rows' ids."""
    n = len(task_ids)
    depth = int(client.llen(key))
    seen: list[str] = []
    for start in range(0, depth, _READ):
        seen += [json.loads(raw)["headers"]["id"] for raw in client.lrange(key, start, start + _READ - 1)]
    distinct = set(seen)
    problems = []
    if depth != n or len(seen) != n:
        problems.append(f"{depth} messages in the queue, expected {n}")
    if len(distinct) != len(seen):
        problems.append(f"{len(seen) - len(distinct)} messages sent twice ({len(distinct)} distinct task ids)")
    if distinct != task_ids:
        problems.append(f"{len(task_ids - distinct)} rows never sent, {len(distinct - task_ids)} unknown task ids")
    if problems:
        raise RuntimeError("relays: " + "; ".join(problems))


# -- report ------------------------------------------------------------------------------------


def median(runs: list[ScaleRun]) -> ScaleRun:
    return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]


def details(res: dict[str, Any], batch: int) -> list[str]:
    """The table of the section: each number of relays against one relay and the apply_async loop."""
    from bench.bench_publish import median_run

    runs: dict[int, list[ScaleRun]] = res["runs"]
    plain = median_run(res["plain"])
    one = median(runs[min(runs)]).rate
    n = res["n"]
    lines = [
        "",
        f"### Scale out: several relays draining one table (PostgreSQL → Redis, N = {n:,})",
        "",
        f"N rows inserted in bulk, then k relay processes (spawned, each with its own app, engine and "
        f"connections) started together behind a barrier, each calling `relay_once(batch_size={batch:,})` "
        "until a pass claims nothing. Rate: N over the time from the first relay's start to the last row "
        "marked sent. Checked after every run (a count off raises): N messages in the Redis queue, N "
        "distinct task ids among them and they are the rows' ids, N rows `sent`. CPU per message: the "
        "relay processes together, the PostgreSQL backends of the benchmark database, redis-server; "
        f"*machine*: CPU used by every process on the machine over the drain, in CPUs of the "
        f"{median(runs[min(runs)]).cpus} there are. Median of {len(runs[min(runs)])} runs.",
        "",
        "| relays | msg/s (median run) | runs (msg/s) | vs 1 relay | vs `apply_async` loop "
        "| rows sent per relay (CPU s) | relays CPU µs/msg | PostgreSQL CPU µs/msg | redis-server CPU µs/msg "
        "| machine CPUs busy | load |",
        "|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for k, rs in runs.items():
        m = median(rs)
        shares = ", ".join(f"{s:,} ({c:.2f})" for s, c in zip(m.shares, m.cpu, strict=True))
        lines.append(
            f"| {k} | {m.rate:,.0f} | {', '.join(f'{r.rate:,.0f}' for r in rs)} | {m.rate / one:.2f}x "
            f"| {m.rate / plain.rate:.1f}x | {shares} | {m.per_msg_us(sum(m.cpu)):.0f} | {m.per_msg_us(m.pg_cpu):.0f} "
            f"| {m.per_msg_us(m.broker_cpu):.0f} | {m.busy:.2f} of {m.cpus} | {m.load} |"
        )
    lines += [
        "",
        f"`apply_async` loop over the same {n:,} messages, one process, same runs: {plain.rate:,.0f} msg/s "
        f"(runs {', '.join(f'{r.rate:,.0f}' for r in res['plain'])}).",
    ]
    return lines


def summary(res: dict[str, Any]) -> tuple[str, str, str, bool]:
    """Rates by number of relays, the baseline, the ratios, and whether 2 relays ≥ 1 relay."""
    from bench.bench_publish import median_run

    runs: dict[int, list[ScaleRun]] = res["runs"]
    rates = {k: median(rs).rate for k, rs in runs.items()}
    plain = median_run(res["plain"]).rate
    one = rates[min(rates)]
    mine = ", ".join(f"{k}: {r:,.0f}" for k, r in rates.items()) + " msg/s"
    ratio = ", ".join(f"{k}: {r / one:.2f}x" for k, r in rates.items() if k != min(rates))
    ratio += f" of 1 relay; {', '.join(f'{r / plain:.1f}x' for r in rates.values())} of the loop"
    met = 2 not in rates or 1 not in rates or rates[2] >= rates[1]
    return mine, f"`apply_async` loop: {plain:,.0f} msg/s", ratio, met
