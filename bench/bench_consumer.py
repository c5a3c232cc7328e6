"""Consumer-side cost of ReliableTask, measured with real prefork workers on Redis.

    python -m bench.bench_consumer [--n 2000] [--m 500] [--runs 3] [--db postgres|sqlite]

Variants (each in its own ``celery worker -P prefork -c 2`` run, see ``bench/benchapp.py``):

    a  defaults       plain Task, Celery defaults (early ack, prefetch multiplier 4)
    b  acks_late      plain Task, acks_late + reject_on_worker_lost, prefetch multiplier 1
    c  reliable       ReliableTask
    d  idempotent     ReliableTask(idempotent=True): a processed-id row per task
    e1 fail_plain     like (b), the task raises: Celery's own failure path
    e2 fail_reliable  ReliableTask(max_retries=0), the task raises: the failure row is stored
    f  sql_lean       reference, not ReliableTask: a plain late-ack task doing the same check
                      and record leanly (SELECT id, INSERT, COMMIT on a connection held open)

For every run the queue is filled first (worker not running), then the worker is started. The
clock runs from the worker's ``worker_ready`` signal (consumer started) to the end of the last
task's ``task_postrun``; throughput = tasks / that time. The CPU time of the worker's processes
and of the PostgreSQL backends over the same interval is reported per task too (from /proc).
Variants are interleaved across the repetitions and the median run is reported.

Then the same task bodies are traced in this process (Celery's own ``build_tracer``, the code
a pool process runs, without a broker) to give the per-execution cost of the hooks, and with
``--profile`` the ReliableTask variants are profiled with cProfile.

Everything runs on 127.0.0.1: Redis db ``--redis-db`` (keys under a unique prefix, deleted at
the end; the server is never flushed or reconfigured) and a PostgreSQL database created and
dropped here (or a SQLite file in a temporary directory).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import platform
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from bench import TASK_NAME, keys

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

NOOP_VARIANTS = ("defaults", "acks_late", "reliable", "idempotent", "sql_lean")
FAIL_VARIANTS = ("fail_plain", "fail_reliable")
LABELS = {
    "defaults": "(a) plain Task, Celery defaults",
    "acks_late": "(b) plain Task, acks_late + prefetch 1",
    "reliable": "(c) ReliableTask",
    "idempotent": "(d) ReliableTask, idempotent=True",
    "fail_plain": "(e1) plain acks_late task raises",
    "fail_reliable": "(e2) ReliableTask max_retries=0 raises (row stored)",
    "sql_lean": "(f) reference: plain acks_late task, SELECT + INSERT + COMMIT, held conn",
}
#: Variants that use the SQL store (cleared before each run).
RELIABLE_VARIANTS = ("reliable", "idempotent", "fail_reliable", "sql_lean")
TABLES = ("celery_reliable_failed_task", "celery_reliable_processed_task")

#: Targets of the brief.
TARGET_RELIABLE = 0.95
TARGET_IDEMPOTENT = 0.9
TARGET_FAILURE_MS = 2.0


def require_loopback(parser: argparse.ArgumentParser, *urls: str) -> None:
    """Refuse (a usage error) any server URL that is not on this machine: benchmarks never leave it."""
    for url in urls:
        if "127.0.0.1" not in url and "localhost" not in url:
            parser.error(f"{url}: only servers on 127.0.0.1 are used")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float, what: str) -> Any:
    """Poll ``predicate`` until truthy; raise after ``timeout`` seconds (bounded loop)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


# -- SQL store ------------------------------------------------------------------------------


class Store:
    """The reliability tables: a PostgreSQL database of our own, or a SQLite file."""

    def __init__(self, kind: str, pg_url: str) -> None:
        self.kind = kind
        self.pg_url = pg_url
        self.name = f"reliable_bench_{uuid.uuid4().hex[:10]}"
        self.tmp: Path | None = None
        self.url = ""
        self.server_version = ""
        self.created = False

    def create(self) -> Store:
        from celery_reliable.store.migrate import upgrade

        if self.kind == "postgres":
            admin = create_engine(self.pg_url, isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as conn:
                    self.server_version = str(conn.execute(text("SHOW server_version")).scalar())
                    conn.execute(text(f"CREATE DATABASE {self.name}"))
                    self.created = True
            finally:
                admin.dispose()
            self.url = f"{self.pg_url.rpartition('/')[0]}/{self.name}"
        else:
            import sqlite3

            self.tmp = Path(tempfile.mkdtemp(prefix="reliable-bench-"))
            self.url = f"sqlite:///{self.tmp / 'bench.sqlite3'}"
            self.server_version = f"SQLite {sqlite3.sqlite_version}"
        upgrade(self.url)
        return self

    def clear(self) -> None:
        engine = create_engine(self.url)
        try:
            with engine.begin() as conn:
                if self.kind == "postgres":
                    conn.execute(text(f"TRUNCATE {', '.join(TABLES)}"))
                else:
                    for table in TABLES:
                        conn.execute(text(f"DELETE FROM {table}"))
        finally:
            engine.dispose()

    def count(self, table: str) -> int:
        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
        finally:
            engine.dispose()

    def backend_cpu(self) -> float:
        """CPU seconds used so far by the PostgreSQL backends connected to our database."""
        if self.kind != "postgres":
            return 0.0
        admin = create_engine(self.pg_url, poolclass=NullPool)
        try:
            with admin.connect() as conn:
                pids = conn.execute(
                    text("SELECT pid FROM pg_stat_activity WHERE datname = :name"),
                    {"name": self.name},
                ).scalars()
                return sum(proc_cpu(int(pid)) for pid in pids)
        finally:
            admin.dispose()

    def drop(self) -> None:
        if self.kind == "postgres" and self.created:
            admin = create_engine(self.pg_url, isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as conn:
                    conn.execute(text(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)"))
            finally:
                admin.dispose()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


# -- broker ---------------------------------------------------------------------------------


def publisher(broker: str, prefix: str) -> Any:
    from celery import Celery

    app = Celery("bench-publisher", set_as_current=False)
    app.conf.update(
        broker_url=broker,
        broker_transport_options={"global_keyprefix": prefix},
        result_backend=None,
        task_ignore_result=True,
    )
    return app


def publish(app: Any, queue: str, count: int) -> float:
    """Send ``count`` messages of :data:`TASK_NAME` to ``queue``; return the seconds it took."""
    start = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            app.send_task(TASK_NAME, queue=queue, producer=producer)
    return time.perf_counter() - start


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def code_version() -> str:
    """The commit measured, and whether celery_reliable/ differs from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "celery_reliable"], cwd=ROOT,
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{commit}" + (" with uncommitted changes in celery_reliable/" if dirty else "")


def delete_keys(client: redis.Redis, prefix: str) -> int:
    """Delete every key under ``prefix`` (SCAN, bounded); never FLUSHDB."""
    deleted = 0
    batch: list[bytes] = []
    for i, key in enumerate(client.scan_iter(match=f"{prefix}*", count=1000)):
        if i >= 1_000_000:
            break
        batch.append(key)
        if len(batch) >= 500:
            deleted += int(client.delete(*batch))
            batch = []
    if batch:
        deleted += int(client.delete(*batch))
    return deleted


# -- worker runs ----------------------------------------------------------------------------


@dataclass
class RunResult:
    variant: str
    count: int
    seconds: float
    first_after_ready: float
    publish_seconds: float
    startup_seconds: float
    worker_cpu: float  # seconds of CPU, worker main + pool processes, ready -> last task
    pg_cpu: float  # seconds of CPU of the PostgreSQL backends serving the worker
    max_unacked: int  # most delivered-but-unacknowledged messages seen: the effective prefetch


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process so far; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a worker's main process and its pool processes (direct children)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return proc_cpu(pid) + sum(proc_cpu(int(child)) for child in children)


@dataclass
class WorkerRun:
    """One ``celery worker`` subprocess in its own process group, stopped by its PID."""

    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal(signal.SIGTERM)  # warm shutdown
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)  # the group the worker leads: its own pool processes
        except ProcessLookupError:
            pass

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class Bench:
    args: argparse.Namespace
    broker: str
    prefix: str
    store: Store
    client: redis.Redis
    logdir: Path
    results: dict[str, list[RunResult]] = field(default_factory=dict)
    current: WorkerRun | None = None
    probe: Callable[[str, int], None] | None = None
    load_start: str = field(default_factory=loadavg)
    code: str = field(default_factory=code_version)

    def run(self, variant: str, rep: int) -> RunResult:
        count = self.args.m if variant in FAIL_VARIANTS else self.args.n
        run_id = f"{variant}-{rep}"
        queue = f"{self.prefix.rstrip(':')}-{run_id}"
        run_keys = keys(self.prefix, run_id)
        if variant in RELIABLE_VARIANTS:
            self.store.clear()
        sender = publisher(self.broker, self.prefix)
        try:
            publish_seconds = publish(sender, queue, count)
        finally:
            sender.close()
        queued = int(self.client.llen(self.prefix + queue))
        if queued != count:
            raise RuntimeError(f"{run_id}: {queued} messages in the queue, expected {count}")
        env = {
            **os.environ,
            "BENCH_VARIANT": variant,
            "BENCH_BROKER": self.broker,
            "BENCH_PREFIX": self.prefix,
            "BENCH_RUN": run_id,
            "BENCH_QUEUE": queue,
            "BENCH_TOTAL": str(count),
            "BENCH_DB": self.store.url,
            "PYTHONUNBUFFERED": "1",
        }
        cmd = [
            sys.executable, "-m", "celery", "-A", "bench.benchapp", "worker", "-P", "prefork",
            "-c", str(self.args.concurrency), "-l", self.args.loglevel, "-n", f"{run_id}@%h",
            "--without-heartbeat", "--without-mingle", "--without-gossip", "-Q", queue,
        ]  # fmt: skip
        worker = self.current = WorkerRun(cmd, env, self.logdir / f"{run_id}.log")
        started = time.time()
        worker.start()
        try:

            def ready() -> bytes | None:
                if not worker.alive():
                    raise RuntimeError(f"{run_id}: worker exited early:\n{worker.tail()}")
                return self.client.get(run_keys["ready"])

            ready_at = float(wait_for(ready, self.args.start_timeout, 0.05, f"{run_id} ready"))
            assert worker.proc is not None
            cpu_at_ready = tree_cpu(worker.proc.pid)

            unacked = [0]

            def ended() -> bytes | None:
                if not worker.alive():
                    raise RuntimeError(f"{run_id}: worker exited:\n{worker.tail()}")
                unacked[0] = max(unacked[0], int(self.client.hlen(self.prefix + "unacked")))
                return self.client.get(run_keys["end"])

            timeout = 60 + count / 20  # at least 20 tasks/s, or the run is reported as failed
            end_at = float(wait_for(ended, timeout, 0.05, f"{run_id}: {count} tasks done"))
            worker_cpu = tree_cpu(worker.proc.pid) - cpu_at_ready
            pg_cpu = self.store.backend_cpu()
            first_at = float(self.client.get(run_keys["first"]) or end_at)
            if self.probe is not None:
                self.probe(variant, worker.proc.pid)
        finally:
            worker.stop()
            self.current = None
        self._check(variant, run_id, queue, count)
        result = RunResult(
            variant, count, end_at - ready_at, first_at - ready_at, publish_seconds,
            ready_at - started, worker_cpu, pg_cpu, unacked[0],
        )  # fmt: skip
        self.results.setdefault(variant, []).append(result)
        log(
            f"{run_id:<16} {count} tasks in {result.seconds:6.3f}s = "
            f"{count / result.seconds:7.0f}/s; CPU ms/task worker "
            f"{worker_cpu * 1000 / count:.2f}, PostgreSQL {pg_cpu * 1000 / count:.2f} "
            f"(worker start {result.startup_seconds:.1f}s, max unacked {unacked[0]})"
        )
        return result

    def _check(self, variant: str, run_id: str, queue: str, count: int) -> None:
        left = int(self.client.llen(self.prefix + queue))
        done = int(self.client.get(keys(self.prefix, run_id)["done"]) or 0)
        problems = []
        if left:
            problems.append(f"{left} messages left in the queue")
        if done != count:
            problems.append(f"{done} tasks ran, expected {count}")
        if variant in ("idempotent", "sql_lean") and self.store.count(TABLES[1]) != count:
            problems.append(f"{self.store.count(TABLES[1])} processed rows, expected {count}")
        if variant == "fail_reliable" and self.store.count(TABLES[0]) != count:
            problems.append(f"{self.store.count(TABLES[0])} failure rows, expected {count}")
        if problems:
            raise RuntimeError(f"{run_id}: " + "; ".join(problems))


# -- in-process trace timing and profile ------------------------------------------------------


@dataclass
class TraceResult:
    variant: str
    calls: int
    us_per_task: float
    cpu_us_per_task: float


def _inprocess_app(db_url: str) -> tuple[Any, dict[str, Any]]:
    from celery import Celery

    from celery_reliable import ReliableTask

    app = Celery("bench-inprocess", set_as_current=False)
    app.conf.update(
        broker_url="memory://", result_backend=None, task_ignore_result=True,
        reliable_database_url=db_url,
    )  # fmt: skip

    class Failure(Exception):
        pass

    def ok() -> None:
        return None

    def fail() -> None:
        raise Failure("bench failure")

    late = {"acks_late": True, "reject_on_worker_lost": True, "shared": False}
    reliable = {"base": ReliableTask, "shared": False}
    tasks = {
        "acks_late": app.task(name="ip.acks_late", **late)(ok),
        "reliable": app.task(name="ip.reliable", **reliable)(ok),
        "idempotent": app.task(name="ip.idempotent", idempotent=True, **reliable)(ok),
        "fail_plain": app.task(name="ip.fail_plain", **late)(fail),
        "fail_reliable": app.task(name="ip.fail_reliable", max_retries=0, **reliable)(fail),
    }
    app.finalize()
    return app, {k: app.tasks[t.name] for k, t in tasks.items()}


@contextmanager
def worker_like_logging(path: Path) -> Iterator[None]:
    """Log WARNING and above to a file, as a ``-l warning`` worker does (failures log there)."""
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"))
    old_level, old_handlers = root.level, root.handlers[:]
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.handlers = old_handlers
        root.setLevel(old_level)
        handler.close()


def trace_calls(app: Any, task: Any, calls: int) -> Callable[[], None]:
    """A function that runs ``task`` ``calls`` times through Celery's tracer, as a pool does."""
    from celery.app.trace import build_tracer

    tracer = build_tracer(task.name, task, app=app, hostname="bench@inprocess", eager=False)
    delivery = {"exchange": "", "routing_key": "bench", "priority": 0, "redelivered": False}

    def loop() -> None:
        for _ in range(calls):
            task_id = str(uuid.uuid4())
            request = {
                "id": task_id, "task": task.name, "retries": 0, "hostname": "bench@inprocess",
                "delivery_info": delivery, "args": [], "kwargs": {}, "is_eager": False,
            }  # fmt: skip
            tracer(task_id, [], {}, request)

    return loop


def inprocess(store: Store, calls: int, runs: int, logdir: Path) -> list[TraceResult]:
    app, tasks = _inprocess_app(store.url)
    results = []
    with worker_like_logging(logdir / "inprocess.log"):
        for variant, task in tasks.items():
            samples, cpu = [], []
            for _ in range(runs):
                store.clear()
                trace_calls(app, task, 50)()  # warm-up: connections, caches
                loop = trace_calls(app, task, calls)
                start, cpu_start = time.perf_counter(), time.process_time()
                loop()
                samples.append((time.perf_counter() - start) / calls * 1e6)
                cpu.append((time.process_time() - cpu_start) / calls * 1e6)
            results.append(TraceResult(variant, calls, statistics.median(samples), statistics.median(cpu)))
    from celery_reliable.store.engine import dispose

    dispose(app)
    return results


def profile(store: Store, calls: int, logdir: Path, top: int) -> dict[str, str]:
    """cProfile of the traced ReliableTask variants: the functions where the time goes."""
    app, tasks = _inprocess_app(store.url)
    reports = {}
    with worker_like_logging(logdir / "profile.log"):
        for variant in ("acks_late", "reliable", "idempotent", "fail_plain", "fail_reliable"):
            store.clear()
            trace_calls(app, tasks[variant], 50)()
            loop = trace_calls(app, tasks[variant], calls)
            profiler = cProfile.Profile()
            profiler.enable()
            loop()
            profiler.disable()
            reports[variant] = _profile_table(profiler, calls, top)
    from celery_reliable.store.engine import dispose

    dispose(app)
    reports["store"] = store_operations(store, calls)
    return reports


def store_operations(store: Store, calls: int) -> str:
    """Time the store calls a ReliableTask makes, one by one, and leaner equivalents."""
    from sqlalchemy import insert, select

    from celery_reliable.store.engine import dispose, get_engine
    from celery_reliable.store.failures import record_failure
    from celery_reliable.store.models import ProcessedTask, utcnow
    from celery_reliable.store.processed import is_processed, mark_processed, mark_processed_many
    from celery_reliable.worker import record

    app, _tasks = _inprocess_app(store.url)
    engine = get_engine(app)
    request = {"id": "", "args": [], "kwargs": {}, "retries": 0, "hostname": "bench@inprocess"}
    try:
        raise RuntimeError("bench failure")
    except RuntimeError as caught:
        exc = caught

    def checkout(_: str) -> None:
        with engine.connect():
            pass

    def failure(task_id: str) -> None:
        failure = record.from_request("ip", {**request, "id": task_id}, exc, reason="exception")
        record_failure(app, failure)

    def core_select(task_id: str) -> None:
        with engine.connect() as conn:
            conn.execute(select(ProcessedTask.task_id).where(ProcessedTask.task_id == task_id))

    def core_insert(task_id: str) -> None:
        with engine.begin() as conn:
            conn.execute(insert(ProcessedTask).values(task_id=task_id, task_name="ip", completed_at=utcnow()))

    held = engine.connect()
    gathered: list[tuple[str, str, Any]] = []

    def many(task_id: str) -> None:
        gathered.append((task_id, "ip", utcnow()))
        if len(gathered) == 10:
            mark_processed_many(app, gathered)
            gathered.clear()

    def open_insert(task_id: str) -> None:
        held.execute(insert(ProcessedTask).values(task_id=task_id, task_name="ip", completed_at=utcnow()))
        held.commit()

    operations: list[tuple[str, Callable[[str], Any]]] = [
        ("`store/processed.py:is_processed` (miss; prepared statement on a held connection)",
         lambda tid: is_processed(app, tid)),
        ("`store/processed.py:mark_processed` (one autocommit INSERT; `idempotency_flush_interval = None`)",
         lambda tid: mark_processed(app, tid, "ip")),
        ("`store/processed.py:mark_processed_many`, 10 ids per statement (the writer thread), per id",
         many),
        ("`record.from_request` (format traceback, build the record)",
         lambda tid: record.from_request("ip", {**request, "id": tid}, exc, reason="exception")),
        ("`store/failures.py:record_failure` (ORM Session, INSERT + flush + COMMIT)", failure),
        ("for comparison: pool checkout + return (`pool_pre_ping`: one `;` round trip)",
         checkout),
        ("for comparison: same SELECT, Core connection, no Session", core_select),
        ("for comparison: same INSERT + COMMIT, Core `engine.begin()`", core_insert),
        ("for comparison: INSERT + COMMIT on a connection held open", open_insert),
    ]  # fmt: skip
    lines = ["| store operation | wall us per call | client CPU us per call |", "|---|---:|---:|"]
    for label, operation in operations:
        store.clear()
        for _ in range(20):
            operation(str(uuid.uuid4()))
        ids = [str(uuid.uuid4()) for _ in range(calls)]
        start, cpu = time.perf_counter(), time.process_time()
        for task_id in ids:
            operation(task_id)
        wall = (time.perf_counter() - start) / calls * 1e6
        lines.append(f"| {label} | {wall:.0f} | {(time.process_time() - cpu) / calls * 1e6:.0f} |")
    held.close()
    with engine.connect() as conn:
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            conn.exec_driver_sql("SELECT 1")
        wall = (time.perf_counter() - start) / calls * 1e6
        lines.append(
            f"| for comparison: one `SELECT 1` on an open connection | {wall:.0f} | "
            f"{(time.process_time() - cpu) / calls * 1e6:.0f} |"
        )
    dispose(app)
    return "\n".join(lines)


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1].removeprefix("1/").removeprefix(".11/")
    return path


def _profile_table(profiler: cProfile.Profile, calls: int, top: int, unit: str = "task") -> str:
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (path, line, func), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        rows.append((cumtime, tottime, ncalls, f"{_short(path)}:{line}({func})"))
    total = sum(r[1] for r in rows)
    lines = [
        f"total profiled time {total / calls * 1e6:.0f} us per {unit} (profiler overhead included)",
        "",
        f"| cumulative us/{unit} | own us/{unit} | calls/{unit} | function |",
        "|---:|---:|---:|---|",
    ]
    wanted = [r for r in sorted(rows, reverse=True) if not r[3].startswith("bench/")]
    for cumtime, tottime, ncalls, name in wanted[:top]:
        lines.append(f"| {cumtime / calls * 1e6:.1f} | {tottime / calls * 1e6:.1f} | {ncalls / calls:.1f} | `{name}` |")
    lines += ["", "Top by own time:", ""]
    lines += [f"| own us/{unit} | calls/{unit} | function |", "|---:|---:|---|"]
    for _cumtime, tottime, ncalls, name in sorted(rows, key=lambda r: r[1], reverse=True)[:top]:
        lines.append(f"| {tottime / calls * 1e6:.1f} | {ncalls / calls:.1f} | `{name}` |")
    return "\n".join(lines)


# -- report ---------------------------------------------------------------------------------


def environment(client: redis.Redis, store: Store) -> list[str]:
    import celery
    import kombu
    import sqlalchemy

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    server = client.info("server")
    try:
        import psycopg

        driver = f", psycopg {psycopg.__version__}"
    except ImportError:
        driver = ""
    return [
        f"- machine: {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, Celery {celery.__version__}, "
        f"kombu {kombu.__version__}, redis-py {redis.__version__}, "
        f"SQLAlchemy {sqlalchemy.__version__}{driver}",
        f"- Redis server {server.get('redis_version')}; store: {store.kind} ({store.server_version})",
    ]


def _median(results: list[RunResult]) -> float:
    return statistics.median(r.seconds for r in results)


def _cpu_ms(results: list[RunResult]) -> str:
    """Median CPU ms per task: worker (main + pool) / PostgreSQL backends; max unacked seen."""
    worker = statistics.median(r.worker_cpu * 1000 / r.count for r in results)
    pg = statistics.median(r.pg_cpu * 1000 / r.count for r in results)
    return f"{worker:.2f} | {pg:.2f} | {max(r.max_unacked for r in results)}"


def report(bench: Bench, traces: list[TraceResult], profiles: dict[str, str], command: str) -> str:
    args = bench.args
    res = bench.results
    lines = [
        "# Consumer benchmark: ReliableTask vs plain Celery tasks",
        "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} on commit {bench.code}: `{command}`",
        "",
        *environment(bench.client, bench.store),
        f"- load average (1, 5, 15 min) at start {bench.load_start}, at end {loadavg()}",
        f"- worker: `celery worker -P prefork -c {args.concurrency} -l {args.loglevel} "
        "--without-heartbeat --without-mingle --without-gossip`, remote control off, no result "
        "backend, one worker run per variant and repetition",
        f"- {args.runs} runs per variant, interleaved; the median run is shown (all runs in the last column)",
        "- queue pre-filled, then the worker started; clock from the worker's `worker_ready` "
        "signal to the last task's `task_postrun` (completion counted with a Redis INCR per "
        "task); tasks/s = N / seconds",
        "- CPU ms/task: CPU time (/proc, user + system) over the same interval, of the worker's "
        "main and pool processes, and of the PostgreSQL backends serving them; not affected by "
        "other load on the machine the way wall time is; max unacked: the most messages seen "
        "delivered but not yet acknowledged (Redis `unacked` hash, sampled every 50 ms), i.e. "
        "the prefetch in effect (concurrency x multiplier)",
        "",
        "## No-op tasks",
        "",
        "| variant | N | seconds | tasks/s | vs (b) acks_late | vs (a) defaults "
        "| worker CPU ms/task | PG CPU ms/task | max unacked | runs (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    rate = {v: res[v][0].count / _median(res[v]) for v in res}
    for variant in NOOP_VARIANTS:
        if variant not in res:
            continue
        runs = ", ".join(f"{r.seconds:.2f}" for r in res[variant])
        vs_b = f"{rate[variant] / rate['acks_late']:.2f}x" if "acks_late" in rate else "-"
        vs_a = f"{rate[variant] / rate['defaults']:.2f}x" if "defaults" in rate else "-"
        lines.append(
            f"| {LABELS[variant]} | {res[variant][0].count} | {_median(res[variant]):.2f} | "
            f"{rate[variant]:.0f} | {vs_b} | {vs_a} | {_cpu_ms(res[variant])} | {runs} |"
        )
    verdicts: list[str] = []
    if "acks_late" in rate:
        for variant, target in (("reliable", TARGET_RELIABLE), ("idempotent", TARGET_IDEMPOTENT)):
            if variant in rate:
                ratio = rate[variant] / rate["acks_late"]
                ok = "met" if ratio >= target else "MISSED"
                verdicts.append(f"- {LABELS[variant]}: {ratio:.2f}x of (b), target >= {target}x: **{ok}**")
    if all(v in res for v in FAIL_VARIANTS):
        lines += [
            "",
            "## Failure store cost",
            "",
            "| variant | M | seconds | tasks/s | wall ms per failure "
            "| worker CPU ms/task | PG CPU ms/task | max unacked | runs (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        per = {v: _median(res[v]) * 1000 / res[v][0].count for v in FAIL_VARIANTS}
        for variant in FAIL_VARIANTS:
            runs = ", ".join(f"{r.seconds:.2f}" for r in res[variant])
            lines.append(
                f"| {LABELS[variant]} | {res[variant][0].count} | {_median(res[variant]):.2f} | "
                f"{rate[variant]:.0f} | {per[variant]:.2f} | {_cpu_ms(res[variant])} | {runs} |"
            )
        added = per["fail_reliable"] - per["fail_plain"]
        lines += ["", f"Added wall time per stored failure: **{added:+.2f} ms**."]
        ok = "met" if added <= TARGET_FAILURE_MS else "MISSED"
        verdicts.append(
            f"- storing a failure adds {added:+.2f} ms of wall time per failure over Celery's "
            f"own failure path (worker, -c {args.concurrency}), "
            f"target <= {TARGET_FAILURE_MS:g} ms: **{ok}**"
        )
    if traces:
        base = {t.variant: t.us_per_task for t in traces}
        lines += [
            "",
            "## In-process trace cost (one process, no broker)",
            "",
            "Each task run through Celery's `build_tracer` as a pool process does (request "
            "pushed, hooks, failure logging to a file), against the same store; median of "
            f"{args.runs} loops of {traces[0].calls} calls.",
            "",
            "| variant | wall us per task | added vs plain | CPU us per task | added vs plain |",
            "|---|---:|---:|---:|---:|",
        ]
        base_cpu = {t.variant: t.cpu_us_per_task for t in traces}
        for t in traces:
            ref = "fail_plain" if t.variant.startswith("fail") else "acks_late"
            lines.append(
                f"| {LABELS[t.variant]} | {t.us_per_task:.0f} | {t.us_per_task - base[ref]:+.0f} "
                f"| {t.cpu_us_per_task:.0f} | {t.cpu_us_per_task - base_cpu[ref]:+.0f} |"
            )
        if "fail_reliable" in base:
            added_ms = (base["fail_reliable"] - base["fail_plain"]) / 1000
            ok = "met" if added_ms <= TARGET_FAILURE_MS else "MISSED"
            verdicts.append(
                f"- in-process, storing a failure adds {added_ms:.2f} ms per failing task, "
                f"target <= {TARGET_FAILURE_MS:g} ms: **{ok}**"
            )
    lines += ["", "## Targets", "", *verdicts]
    for variant, table in profiles.items():
        title = "Store operations, timed alone" if variant == "store" else LABELS[variant]
        lines += ["", f"## Profile: {title}", "", table]
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="no-op tasks per run (default 2000)")
    parser.add_argument("--m", type=int, default=500, help="failing tasks per run (default 500)")
    parser.add_argument("--runs", type=int, default=3, help="runs per variant (median reported)")
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument(
        "--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        help="an existing database on the server; a new one is created next to it and dropped",
    )  # fmt: skip
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server URL")
    parser.add_argument("--redis-db", type=int, default=12, help="Redis database number")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--loglevel", default="warning", help="worker log level")
    parser.add_argument("--variants", default=",".join(NOOP_VARIANTS + FAIL_VARIANTS))
    parser.add_argument("--trace-calls", type=int, default=1000, help="in-process calls, 0: skip")
    parser.add_argument("--profile", action="store_true", help="cProfile the traced variants")
    parser.add_argument("--profile-top", type=int, default=18)
    parser.add_argument("--start-timeout", type=float, default=90.0)
    parser.add_argument("--output", default=str(RESULTS / "consumer.md"))
    args = parser.parse_args(argv)
    require_loopback(parser, args.redis, args.pg_url)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(LABELS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(LABELS)}")
    args.variant_list = variants
    return args


@dataclass
class Outcome:
    """What :func:`run` measured: the worker runs by variant, the in-process traces, the report."""

    results: dict[str, list[RunResult]]
    traces: list[TraceResult]
    report: str


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


def run(argv: list[str] | None = None, probe: Callable[[str, int], None] | None = None, quiet: bool = False) -> Outcome:
    """Run the benchmark; ``probe(variant, worker_pid)`` is called after each run's last task,
    before its worker stops (``bench.bench_memory`` reads the worker's memory there)."""
    args = parse_args(argv)
    command = "python -m bench.bench_consumer " + " ".join(sys.argv[1:] if argv is None else argv)
    broker = f"{args.redis.rstrip('/')}/{args.redis_db}"
    prefix = f"reliable-bench-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(broker, socket_timeout=10, socket_connect_timeout=5)
    client.ping()
    logdir = Path(tempfile.mkdtemp(prefix="reliable-bench-logs-"))
    needs_store = args.trace_calls > 0 or any(v in RELIABLE_VARIANTS for v in args.variant_list)
    store = Store(args.db if needs_store else "sqlite", args.pg_url)
    bench = Bench(args, broker, prefix, store, client, logdir, probe=probe)
    ok = False
    try:
        store.create()
        where = store.name if store.kind == "postgres" else store.url
        log(f"broker {broker} (keys {prefix}*), store {store.kind} {where}, logs {logdir}")
        for rep in range(args.runs):
            for variant in args.variant_list:
                bench.run(variant, rep)
        traces: list[TraceResult] = []
        profiles: dict[str, str] = {}
        if args.trace_calls > 0:
            log(f"in-process trace timing, {args.trace_calls} calls per variant")
            traces = inprocess(store, args.trace_calls, args.runs, logdir)
        if args.profile:
            log("profiling the traced variants")
            profiles = profile(store, args.trace_calls or 1000, logdir, args.profile_top)
        text_md = report(bench, traces, profiles, command)
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text_md)
        if not quiet:
            print(text_md)
        log(f"written to {output}")
        ok = True
    finally:
        if bench.current is not None:
            bench.current.stop()
        deleted = delete_keys(client, prefix)
        log(f"deleted {deleted} Redis keys under {prefix}")
        store.drop()
        client.close()
        if ok:
            shutil.rmtree(logdir, ignore_errors=True)
        else:
            log(f"worker logs kept in {logdir}")
    return Outcome(bench.results, traces, text_md)


if __name__ == "__main__":
    sys.exit(main())
