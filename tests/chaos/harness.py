"""The chaos harness: one run = one broker, one database, workers, beats and producers of
``tests.chaos.app``, faults injected while messages flow, a bounded drain, then exact counts.

Counts (read from the run's own database and queue, nothing inferred from logs):

* ``committed``: business rows the producers committed;
* ``effects``: distinct keys with at least one effect row; ``duplicates``: effect rows beyond one per key;
* ``stored``: rows in the failed-task table; ``pending``: pending rows not yet sent;
* ``waiting``: rows sent from the pending table whose task has no outcome yet (the delivery ledger);
* ``in_broker``: messages still in the queue (ready or unacknowledged) after the workers stopped;
* ``lost`` = committed - effects - stored (keys that ended in neither table);
* ``recovery``: for each task a whole-worker kill interrupted, seconds from the kill to its next
  start (by another worker): how long a dead worker's messages waited.

Each run writes ``<results dir>/<scenario>--<mode>--<publishing>--<broker>.json``.
Private servers only (a private redis-server per run, a private PostgreSQL cluster when the
database is broken); RabbitMQ is the shared node with a queue of the run's own. Everything
started is stopped by PID, every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, text

from tests.apps.effects import Effect, TestBase
from tests.chaos.proxy import TcpProxy
from tests.faults.sentinel import SentinelSet
from tests.harness import PYTHON, ROOT, PostgresCluster, RedisServer, Worker, wait_for

RESULTS = Path(os.environ.get("CHAOS_RESULTS", ROOT / ".chaos-results"))
MODES = ("reliable", "plain_default", "plain_tuned")
#: Seconds without any change in the counts after which a drain that cannot finish stops.
QUIET = 10.0
#: The same when the queue is empty and nothing is pending (retries due within a second or two
#: may still be held by a worker, invisible to the broker count on RabbitMQ; a killed pool process
#: is noticed up to worker_lost_wait = 5 s later, and only then is its task retried or stored).
QUIET_EMPTY = 8.0
DRAIN_LIMIT = 90.0
#: The same while rows sent from the pending table wait for an outcome the broker may have lost:
#: the relay sends them again ``reliable_reconcile_after`` (60 s by default) after they were sent.
QUIET_LEDGER = 80.0


@dataclass
class Result:
    scenario: str
    mode: str
    publishing: str
    broker: str
    committed: int = 0
    effects: int = 0
    effect_rows: int = 0
    duplicates: int = 0
    stored: int = 0
    pending: int = 0
    in_broker: int = 0
    lost: int = 0
    runs: int = 0
    poison: int = 0
    faults: int = 0
    seconds: float = 0.0
    drained: bool = False
    relayed: int = 0
    waiting: int = 0
    recovery: list[float] = field(default_factory=list)
    stored_by_reason: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    doctor: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"{self.scenario}--{self.mode}--{self.publishing}--{self.broker}"

    def write(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    def recovery_percentile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of :attr:`recovery`, nearest rank; None without kills."""
        if not self.recovery:
            return None
        ordered = sorted(self.recovery)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]

    def line(self) -> str:
        recovery = ""
        if self.recovery:
            recovery = f" recovery p50={self.recovery_percentile(0.5):.1f}s max={max(self.recovery):.1f}s"
        return (
            f"[{self.name}] committed={self.committed} effects={self.effects} duplicates={self.duplicates} "
            f"stored={self.stored} pending={self.pending} waiting={self.waiting} in_broker={self.in_broker} "
            f"lost={self.lost} faults={self.faults}{recovery} {self.seconds:.0f}s"
        )


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


class ChaosWorker(Worker):
    """A prefork ``celery worker`` of ``tests.chaos.app`` on the run's queue."""

    app_module = "tests.chaos.app"
    queue_env = "CHAOS_QUEUE"


@dataclass
class Process:
    """Any other subprocess of the run (beat, producer), in its own process group."""

    cmd: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        _kill_group(self.proc, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc, signal.SIGKILL)
            self.proc.wait(timeout=10)


class Broker:
    """The run's broker: a private redis-server, or the shared RabbitMQ node; optionally
    behind a :class:`TcpProxy` that cuts every connection at once."""

    def __init__(
        self, kind: str, tmp: Path, *, persistent: bool = True, proxy: bool = False, sentinel: bool = False
    ) -> None:
        self.kind = kind
        self.redis: RedisServer | None = None
        self.sentinels: SentinelSet | None = None
        #: broker transport options the run's processes need (Sentinel: the master's name)
        self.transport_options: dict[str, Any] = {}
        if sentinel:
            assert kind == "redis" and not proxy and not persistent, "Sentinel: a volatile Redis set, no proxy"
            self.sentinels = SentinelSet(tmp / "sentinel").start()
            self.direct_url = self.sentinels.broker_url
            self.transport_options = self.sentinels.transport_options
        elif kind == "redis":
            self.redis = RedisServer(tmp / "redis", persistent=persistent).start()
            self.direct_url = self.redis.url
            port = self.redis.port
        else:
            from tests.conftest import AMQP_URL

            self.direct_url = AMQP_URL
            port = int(AMQP_URL.rsplit(":", 1)[1].split("/")[0])
        self.proxy = TcpProxy(port).start() if proxy else None
        self.url = self.proxy.url(self.direct_url) if self.proxy else self.direct_url

    def cut(self) -> None:
        assert self.proxy is not None, "this run has no proxy to cut"
        self.proxy.cut()

    def restore(self) -> None:
        assert self.proxy is not None
        self.proxy.restore()

    def crash(self) -> None:
        """SIGKILL the private redis-server (what it had not written to disk is gone)."""
        assert self.redis is not None, "only the private redis-server can be crashed"
        self.redis.kill()

    def restart(self) -> None:
        assert self.redis is not None
        self.redis.start()

    def flushall(self) -> None:
        """``FLUSHALL`` on the private redis-server: every key of every database is gone."""
        assert self.redis is not None, "only the private redis-server is flushed"
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.redis.port, socket_connect_timeout=2, socket_timeout=5)
        try:
            client.flushall()
        finally:
            client.close()

    def ready_count(self, queue: str) -> int:
        return self.depth(queue)[0]

    def depth(self, queue: str) -> tuple[int, int]:
        """(ready, unacknowledged) on Redis; (ready, 0) on RabbitMQ, where a dropped consumer's
        unacknowledged messages go back to ready (read after the workers stopped)."""
        from tests.conftest import broker_depth

        if self.sentinels is not None:
            return broker_depth(self.sentinels.master_url(), queue)
        return broker_depth(self.direct_url, queue)

    def drop(self, queue: str) -> None:
        from tests.conftest import drop_queue

        if self.sentinels is None:  # (a Sentinel set is private: it goes with its queues)
            drop_queue(self.direct_url, queue)

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.sentinels is not None:
            self.sentinels.stop()


class Database:
    """The run's database: its own database on the shared PostgreSQL, or a private cluster."""

    def __init__(self, tmp: Path, *, private: bool = False) -> None:
        self.cluster: PostgresCluster | None = None
        self._dir: Path | None = None
        self._admin_url: str | None = None
        self._name: str | None = None
        if private:
            self._dir = Path(tempfile.mkdtemp(prefix="reliable-chaos-"))
            self._dir.chmod(0o711)
            self.cluster = PostgresCluster(self._dir / "pg").init().start()
            self.url = self.cluster.url
        else:
            from tests.conftest import POSTGRES_URL

            self._admin_url = POSTGRES_URL
            self._name = f"reliable_chaos_{uuid.uuid4().hex[:10]}"
            admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {self._name}"))
            admin.dispose()
            self.url = f"{POSTGRES_URL.rpartition('/')[0]}/{self._name}"
        from celery_reliable.store.migrate import upgrade
        from tests.chaos.models import ChaosBase

        upgrade(self.url)
        self.engine = create_engine(self.url, pool_pre_ping=True)
        TestBase.metadata.create_all(self.engine)
        ChaosBase.metadata.create_all(self.engine)

    def stop(self) -> None:
        assert self.cluster is not None, "only the private cluster can be stopped"
        self.cluster.stop("immediate")

    def start(self) -> None:
        assert self.cluster is not None
        self.cluster.start()

    def scalar(self, sql: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())

    def close(self) -> None:
        self.engine.dispose()
        if self.cluster is not None:
            try:
                if self.cluster.data.joinpath("postmaster.pid").exists():
                    self.cluster.stop("immediate")
            finally:
                if self._dir is not None:
                    shutil.rmtree(self._dir, ignore_errors=True)
        elif self._admin_url is not None:
            admin = create_engine(self._admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {self._name} WITH (FORCE)"))
            admin.dispose()


class Run:
    """One scenario in one mode on one broker: the processes, the faults and the counts."""

    def __init__(
        self,
        scenario: str,
        mode: str,
        broker: str,
        tmp: Path,
        *,
        publishing: str | None = None,
        persistent: bool = True,
        proxy: bool = False,
        private_db: bool = False,
        workers_direct: bool = False,
        sentinel: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        assert mode in MODES, mode
        self.publishing = publishing or ("apply_async" if mode != "reliable" else "publish")
        self.result = Result(scenario, mode, self.publishing, broker)
        self.mode = mode
        self.tmp = tmp
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.queue = f"chaos-{scenario[:20]}-{uuid.uuid4().hex[:8]}"
        self.extra_env = dict(env or {})
        #: workers and beats bypass the proxy: only the producers' connections are cut
        self.workers_direct = workers_direct
        self.workers: list[ChaosWorker] = []
        self.others: list[Process] = []
        self.killed: list[ChaosWorker] = []
        #: keys whose run a fault already hit (not taken as "in flight" again)
        self.targeted: set[str] = set()
        #: key -> wall-clock time of the whole-worker kill that interrupted its run
        self.killed_at: dict[str, float] = {}
        self.started = time.monotonic()
        self.prefix = uuid.uuid4().hex[:6]
        self.broker = Broker(broker, tmp, persistent=persistent, proxy=proxy, sentinel=sentinel)
        try:
            self.db = Database(tmp, private=private_db)
        except BaseException:
            self.broker.close()
            raise
        self.doctor = self._start_doctor()

    # -- processes ---------------------------------------------------------------------

    def env(self, consumer: bool = False, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RELIABLE_", "CHAOS_", "CELERY_"))}
        env.update(
            PYTHONPATH=str(ROOT),
            CHAOS_MODE=self.mode,
            CHAOS_BROKER=self.broker.direct_url if consumer and self.workers_direct else self.broker.url,
            CHAOS_QUEUE=self.queue,
            CHAOS_DB=self.db.url,
            CHAOS_PUBLISHING=self.publishing,
            CHAOS_TRANSPORT_OPTIONS=json.dumps(self.broker.transport_options),
        )
        env.update(self.extra_env)
        env.update(extra)
        return env

    def worker(self, name: str = "w1", concurrency: int = 2, wait: bool = True) -> ChaosWorker:
        worker = ChaosWorker(self.env(consumer=True), self.tmp / f"{name}.log", f"{name}-{self.queue}", concurrency)
        if self.mode != "plain_default":
            # the worker command line reads the multiplier before the app is finalized
            worker.extra = ["--prefetch-multiplier", "1"]
        self.workers.append(worker)
        return worker.start(wait=wait)

    def beat(self, name: str = "beat1") -> Process:
        cmd = [
            PYTHON, "-m", "celery", "-A", "tests.chaos.app", "beat", "-l", "info",
            "-s", str(self.tmp / f"{name}-schedule"), "--pidfile", str(self.tmp / f"{name}.pid"),
            "--max-interval", "1",
        ]  # fmt: skip
        proc = Process(cmd, self.env(consumer=True), self.tmp / f"{name}.log").start()
        self.others.append(proc)
        return proc

    def messages(self, count: int, task: str, seconds: float = 0.0, tag: str = "m") -> list[list[Any]]:
        return [[f"{self.prefix}-{tag}-{i}", task, [f"{self.prefix}-{tag}-{i}", seconds]] for i in range(count)]

    def producer(
        self,
        messages: list[list[Any]],
        *,
        interval: float = 0.0,
        kill_at: int | None = None,
        name: str = "p1",
        publishing: str | None = None,
    ) -> Process:
        plan = {
            "publishing": publishing or self.publishing,
            "messages": messages,
            "interval": interval,
            "kill_at": kill_at,
        }
        plan_file = self.tmp / f"{name}.json"
        plan_file.write_text(json.dumps(plan))
        proc = Process([PYTHON, "-m", "tests.chaos.producer", str(plan_file)], self.env(), self.tmp / f"{name}.log")
        self.others.append(proc.start())
        return proc

    def produce(self, messages: list[list[Any]], *, kill_at: int | None = None, name: str = "p1") -> int:
        """Run a producer to its end (or its self-kill); returns its exit code."""
        return self.producer(messages, kill_at=kill_at, name=name).wait(timeout=120)

    def relay_process(self, name: str = "relay", passes: int = 1, pause: float = 0.0) -> Process:
        """``relay_once`` passes in a process of their own (started, not awaited)."""
        cmd = [PYTHON, "-m", "tests.chaos.relay", str(passes), str(pause)]
        proc = Process(cmd, self.env(consumer=True), self.tmp / f"{name}.log")
        self.others.append(proc.start())
        return proc

    def relay_pass(self, name: str = "relay") -> int:
        """One ``relay_once`` pass; returns its exit code (1: it raised)."""
        return self.relay_process(name).wait(timeout=90)

    def supervise(self) -> None:
        """Start a worker again if it exited by itself (as a supervisor would)."""
        for worker in list(self.workers):
            if worker.proc is not None and not worker.alive() and worker not in self.killed:
                self.killed.append(worker)
                self.result.notes.append(f"worker {worker.name} exited by itself ({worker.proc.returncode})")
                self.worker(f"r{len(self.workers)}", worker.concurrency, wait=False)

    def kill_worker(self, worker: ChaosWorker, running: list[tuple[str, int]] = ()) -> ChaosWorker:  # type: ignore[assignment]
        """SIGKILL the whole worker (main process and pool), start a new one."""
        worker.kill()
        now = time.time()
        self.targeted.update(key for key, _ in running)
        self.killed_at.update((key, now) for key, _ in running)
        self.killed.append(worker)
        self.result.faults += 1
        return self.worker(f"w{len(self.workers) + 1}", worker.concurrency)

    # -- observation ---------------------------------------------------------------------

    def in_flight(self, tag: str = "", within: float = 0.25) -> list[tuple[str, int]]:
        """(key, pid) of runs that started less than ``within`` seconds ago (shorter than the
        task) and have no effect yet: running now, unless killed meanwhile."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT s.key, s.pid FROM chaos_start s WHERE s.at > :since AND s.key LIKE :tag "
                    "AND NOT EXISTS (SELECT 1 FROM reliable_test_effect e WHERE e.key = s.key)"
                ),
                {"since": time.time() - within, "tag": f"%{tag}%"},
            ).all()
        return [(str(k), int(p)) for k, p in rows if str(k) not in self.targeted]

    def wait_in_flight(self, timeout: float = 20, tag: str = "", within: float = 0.25) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []

        def check() -> bool:
            self.supervise()
            found[:] = self.in_flight(tag, within)
            return bool(found)

        wait_for(check, timeout, interval=0.05, what="a task in flight")
        return found

    def snapshot(self) -> dict[str, int]:
        db = self.db
        committed = db.scalar("SELECT count(*) FROM chaos_order")
        effects = db.scalar("SELECT count(DISTINCT key) FROM reliable_test_effect")
        rows = db.scalar("SELECT count(*) FROM reliable_test_effect")
        stored = db.scalar("SELECT count(*) FROM celery_reliable_failed_task")
        pending = db.scalar("SELECT count(*) FROM celery_reliable_pending_message WHERE status NOT IN ('sent', 'done')")
        waiting = db.scalar("SELECT count(*) FROM celery_reliable_pending_message WHERE status = 'sent' AND tracked")
        return {
            "committed": committed, "effects": effects, "rows": rows, "stored": stored, "pending": pending,
            "waiting": waiting,
        }  # fmt: skip

    def _settled_keys(self) -> int:
        """Committed keys that ended in an effect or a stored failure."""
        with self.db.engine.connect() as conn:
            keys = set(conn.execute(select(Effect.key).distinct()).scalars())
            for (args,) in conn.execute(text("SELECT args FROM celery_reliable_failed_task")).all():
                if isinstance(args, list) and args:
                    keys.add(str(args[0]))
            committed = set(conn.execute(text("SELECT key FROM chaos_order")).scalars())
        return len(committed & keys)

    def drain(self, limit: float = DRAIN_LIMIT, quiet: float = QUIET) -> bool:
        """Wait until every committed message settled and nothing is left, or nothing moved
        for ``quiet`` seconds, or ``limit`` seconds passed. True if everything settled."""
        started = time.monotonic()
        deadline = started + limit
        last: dict[str, int] | None = None
        changed = time.monotonic()
        while time.monotonic() < deadline:
            self.supervise()
            try:
                snap = self.snapshot()
                ready, unacked = self.broker.depth(self.queue)
            except Exception as exc:  # the database or broker may still be coming back
                self.result.notes.append(f"drain: {type(exc).__name__}")
                changed = time.monotonic()
                time.sleep(1)
                continue
            snap["broker"] = ready + unacked
            snap["runs"] = self.db.scalar("SELECT count(*) FROM chaos_start")  # a new attempt is movement too
            if snap != last:
                last, changed = snap, time.monotonic()
            done = snap["pending"] == 0 and snap["broker"] == 0
            if done and self._settled_keys() >= snap["committed"]:
                time.sleep(1.5)  # a late duplicate would land now
                return True
            # nothing left anywhere that could still move: a shorter wait is enough (unless the
            # relay may still send again what the broker lost)
            wait = QUIET_EMPTY if done else quiet
            if snap["waiting"]:
                wait = max(wait, QUIET_LEDGER)
                deadline = max(deadline, started + limit + QUIET_LEDGER)
            if time.monotonic() - changed > wait:
                return False
            time.sleep(0.5)
        return False

    def _start_doctor(self) -> Process:
        """``celery_reliable.ops.doctor`` on this run's configuration, before any fault."""
        env = self.env(consumer=True, CHAOS_BROKER=self.broker.direct_url)
        return Process([PYTHON, "-m", "tests.chaos.doctor"], env, self.tmp / "doctor.log").start()

    def _doctor_result(self) -> dict[str, Any] | None:
        try:
            self.doctor.wait(timeout=60)
            lines = (self.tmp / "doctor.log").read_text(errors="replace").splitlines()
            report = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
        except Exception as exc:
            self.doctor.stop()
            self.result.notes.append(f"doctor did not report: {type(exc).__name__}: {exc}")
            return None
        checks = report["checks"]
        return {
            "exit_code": report["exit_code"],
            "fail": sorted(name for name, c in checks.items() if c["status"] == "FAIL"),
            "warn": sorted(name for name, c in checks.items() if c["status"] == "WARN"),
        }

    #: log lines counted per run (a line counts when it holds every needle): evidence that a
    #: fault did what it should
    EVENTS: dict[str, tuple[str, ...]] = {
        "pool_process_killed": ("exited with 'signal 9 (SIGKILL)'",),
        "failure_not_stored": ("could not be stored",),
        "failure_stored": ("stored as failed task",),
        "kept_pending": ("kept as pending message",),
        "send_raised": ("send of ", " failed: "),
        "retry_not_sent": ("retry could not be sent",),
        "broker_connection_lost": ("Connection to broker lost",),
        "relay_not_sent": ("Relay: ", "not sent"),
        "relay_pass_raised": ("relay pass raised",),
        "relay_pass_ran": ("relay pass: ",),
    }

    def _events(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for path in self.tmp.glob("*.log"):
            if path.name == "doctor.log":
                continue
            for line in path.read_text(errors="replace").splitlines():
                for name, needles in self.EVENTS.items():
                    if all(needle in line for needle in needles):
                        counts[name] = counts.get(name, 0) + 1
                sent = re.search(r"relay pass: .* sent=(\d+)", line)
                if sent:  # messages the separate relay passes sent
                    counts["relay_pass_messages"] = counts.get("relay_pass_messages", 0) + int(sent.group(1))
                resent = re.search(r"Relay: (\d+) sent message\(s\) no longer in Redis", line)
                if resent:  # messages the broker lost that the delivery ledger sent again
                    counts["ledger_resent"] = counts.get("ledger_resent", 0) + int(resent.group(1))
        return dict(sorted(counts.items()))

    # -- the end -------------------------------------------------------------------------

    def finish(self, poison: int = 0, drained: bool | None = None) -> Result:
        """Stop everything, count, write the JSON result."""
        if drained is None:
            drained = self.drain()
        for proc in self.others:
            proc.stop()
        for worker in self.workers:
            worker.stop()
        r = self.result
        r.drained = drained
        r.poison = poison
        snap = self.snapshot()
        r.committed, r.effects, r.effect_rows = snap["committed"], snap["effects"], snap["rows"]
        r.duplicates = r.effect_rows - r.effects
        r.stored, r.pending = snap["stored"], snap["pending"]
        r.runs = self.db.scalar("SELECT count(*) FROM chaos_start")
        ready, unacked = self.broker.depth(self.queue)
        r.in_broker = ready + unacked
        r.lost = r.committed - self._settled_keys()
        with self.db.engine.connect() as conn:
            reasons = conn.execute(
                text("SELECT reason, count(*) FROM celery_reliable_failed_task GROUP BY reason")
            ).all()
        r.stored_by_reason = {str(k): int(v) for k, v in reasons}
        r.relayed = self.db.scalar(
            "SELECT count(*) FROM celery_reliable_pending_message WHERE status IN ('sent', 'done')"
        )
        r.waiting = snap["waiting"]
        r.recovery = self._recovery()
        r.events = self._events()
        r.doctor = self._doctor_result()
        r.seconds = round(time.monotonic() - self.started, 1)
        r.write()
        print("\n" + r.line())
        return r

    def _recovery(self) -> list[float]:
        """Seconds from each whole-worker kill to the next start of the task it interrupted."""
        out = []
        with self.db.engine.connect() as conn:
            for key, killed in self.killed_at.items():
                again = conn.execute(
                    text("SELECT min(at) FROM chaos_start WHERE key = :key AND at > :killed"),
                    {"key": key, "killed": killed},
                ).scalar()
                if again is not None:
                    out.append(round(float(again) - killed, 2))
        return out

    def close(self) -> None:
        """Stop every process of the run, then the broker and the database, whatever fails."""
        try:
            for proc in [self.doctor, *self.others]:
                proc.stop()
            for worker in self.workers:
                worker.stop()
            redis = self.broker.redis
            if redis is not None and (redis.proc is None or redis.proc.poll() is not None):
                self.broker.restart()  # the test left it down: the queue is dropped from it
            self.broker.drop(self.queue)
        finally:
            try:
                self.broker.close()
            finally:
                self.db.close()


@contextmanager
def chaos_run(*args: Any, **kwargs: Any) -> Iterator[Run]:
    run = Run(*args, **kwargs)
    try:
        yield run
    finally:
        run.close()


def bounded(count: int, seconds: float) -> Callable[[], Iterator[int]]:
    """``for i in bounded(n, s)()``: at most ``n`` rounds and ``s`` seconds."""

    def rounds() -> Iterator[int]:
        deadline = time.monotonic() + seconds
        for i in range(count):
            if time.monotonic() > deadline:
                return
            yield i

    return rounds
