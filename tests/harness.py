"""Real processes for tests: Celery workers, private redis-server and PostgreSQL instances.

Everything started here runs in its own process group, is stopped by PID, and listens on
127.0.0.1 only. Every wait is bounded.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine

from tests.apps.effects import Attempt, Effect, TestBase

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


#: Ports handed out by :func:`free_port` in this process: never given twice.
_GIVEN: set[int] = set()


def _lane() -> int:
    """This run's lane of ports: its Redis database number (each pytest-xdist worker and each
    compat run has its own), so parallel runs never pick the same port."""
    url = os.environ.get("RELIABLE_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    db = url.rpartition("/")[2]
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    return ((int(db) if db.isdigit() else 11) + 16 * index) % 32


def free_port() -> int:
    """A port nobody listens on, below the kernel's range for outgoing connections (32768 and up:
    a port picked there can be taken by a client socket before the server binds it)."""
    first = 20000 + _lane() * 350
    for port in random.sample(range(first, first + 350), 350):
        if port in _GIVEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError(f"no free port in {first}-{first + 349}")


def reliable_cli(
    cwd: Path, app: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``celery -A <app> reliable <args>`` as a user runs it: a process of its own in ``cwd`` (where the
    project's module is), with only the project and this checkout on its path."""
    return subprocess.run(
        [PYTHON, "-m", "celery", "-A", app, "reliable", *args],
        cwd=cwd,
        env={"PYTHONPATH": f"{cwd}:{ROOT}", "PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the service may still be starting
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: {last_exc!r}")


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


@dataclass
class Worker:
    """A ``celery worker`` subprocess (prefork) running ``tests.apps.workerapp``."""

    env: dict[str, str]
    log: Path
    name: str
    concurrency: int = 1
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    #: the directory the worker runs in (a project's own directory: its modules are found there)
    cwd: Path = ROOT

    #: the ``-A`` app of the worker and the environment variable naming its queue
    app_module = "tests.apps.workerapp"
    queue_env = "RELIABLE_TEST_QUEUE"

    def start(self, wait: bool = True) -> Worker:
        cmd = [
            PYTHON, "-m", "celery", "-A", self.app_module, "worker", "-P", "prefork",
            "-c", str(self.concurrency), "-l", "info", "-n", f"{self.name}@%h",
            "--without-heartbeat", "--without-mingle", "--without-gossip",
            "-Q", self.env[self.queue_env],
            *self.extra,
        ]  # fmt: skip
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        if wait:
            self.wait_ready()
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")[getattr(self, "_offset", 0) :]

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            return " ready." in self.output()

        wait_for(ready, timeout, what=f"worker {self.name} ready")

    def pool_pids(self) -> list[int]:
        """PIDs of the pool processes (children of the main process)."""
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except FileNotFoundError:
            return []

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: main process and pool at once."""
        if self.proc is not None:
            _kill_group(self.proc, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        _kill_group(self.proc, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc, signal.SIGKILL)
            self.proc.wait(timeout=10)


@dataclass
class Counts:
    effects: dict[str, int]
    attempts: dict[str, int]

    def effect(self, key: str) -> int:
        return self.effects.get(key, 0)

    def attempt(self, key: str) -> int:
        return self.attempts.get(key, 0)


class TestDatabase:
    """The SQL database of one test: reliability tables plus the test's effect tables."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, pool_pre_ping=True)

    def prepare(self) -> None:
        from celery_reliable.store.migrate import upgrade

        upgrade(self.url)
        TestBase.metadata.create_all(self.engine)

    def counts(self) -> Counts:
        with self.engine.connect() as conn:
            effects = dict(conn.execute(select(Effect.key, func.count()).group_by(Effect.key)).all())
            attempts = dict(conn.execute(select(Attempt.key, Attempt.count)).all())
        return Counts({k: int(v) for k, v in effects.items()}, {k: int(v) for k, v in attempts.items()})

    def failed_rows(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM celery_reliable_failed_task ORDER BY id")).mappings()
            return [dict(r) for r in rows]

    def dispose(self) -> None:
        self.engine.dispose()


class RedisServer:
    """A private redis-server on a free port with its own directory; stopped by PID."""

    def __init__(
        self,
        directory: Path,
        persistent: bool = True,
        port: int | None = None,
        extra: tuple[str, ...] = (),
        password: str | None = None,
    ) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.persistent = persistent
        self.extra = extra  # more redis-server arguments (e.g. "--maxmemory-policy", "allkeys-lru")
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        cmd = [
            shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--save", "", *persistence, "--logfile", str(self.dir / "redis.log"),
            *(["--requirepass", self.password] if self.password else []), *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_connect_timeout=1)
        wait_for(client.ping, 20, what=f"redis-server on {self.port}")
        client.close()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class PostgresCluster:
    """A private PostgreSQL cluster (initdb in a temp dir, run as ``postgres``); stopped by PID."""

    BIN = Path("/usr/lib/postgresql")

    def __init__(self, directory: Path) -> None:
        versions = sorted(self.BIN.glob("*/bin/initdb"))
        if not versions:
            raise AssertionError("PostgreSQL server binaries not found under /usr/lib/postgresql")
        self.bin = versions[-1].parent
        self.dir = directory
        self.port = free_port()
        self.data = directory / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def init(self) -> PostgresCluster:
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        return self

    def start(self) -> PostgresCluster:
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-t", "60",
            "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
        )  # fmt: skip
        return self

    def stop(self, mode: str = "immediate") -> None:
        if (self.data / "postmaster.pid").exists():
            self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")


def die_after_fetch(
    conn: Any, queue: Any, client: Any, key: str | None = None, publish: Callable[[], None] | None = None
) -> Any:
    """A kombu consumer on ``conn`` sends its fetch for ``queue``; once Redis has taken the message
    (``client`` sees list ``key`` empty) its connection dies before it reads the reply, as a SIGKILL
    of the worker would leave it. ``publish`` (if given) sends the message after the fetch is sent.
    Returns the consumer's channel."""
    channel = conn.default_channel
    conn.Consumer(queue, callbacks=[lambda body, message: None], accept=["json"]).consume()
    conn.transport.cycle._register_BRPOP(channel)  # what the event loop does on each tick
    if publish is not None:
        publish()
    wait_for(lambda: client.llen(key or queue.name) == 0, 10, interval=0.02, what="the fetch to take the message")
    time.sleep(0.1)  # the reply is on its way to a consumer that will never read it
    channel.client.connection.disconnect()
    conn.release()
    return channel


def wait_while_alive(worker: Worker, predicate: Callable[[], Any], timeout: float, what: str = "") -> Any:
    """:func:`wait_for`, failing at once (with the log's tail) if ``worker`` exits meanwhile."""

    def check() -> Any:
        value = predicate()
        if not value and not worker.alive():
            return ("exited",)
        return value

    value = wait_for(check, timeout, what=what)
    if value == ("exited",):
        raise AssertionError(f"worker exited while waiting for {what}:\n{worker.output()[-3000:]}")
    return value
