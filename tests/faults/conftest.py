"""Fixtures and helpers of the fault tests: private servers that a test may break.

Every private server listens on 127.0.0.1 on a free port, lives in its own temp directory and is
stopped by PID in the fixture teardown. The shared services are only read, never stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Scenario, broker_depth, make_scenario
from tests.harness import PostgresCluster, RedisServer, Worker, wait_for


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A temp dir the ``postgres`` user can enter (pytest's own tmp dirs are root-only, 0700)."""
    base = Path(tempfile.mkdtemp(prefix="reliable-fault-"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _postmaster_pid(cluster: PostgresCluster) -> int | None:
    try:
        return int((cluster.data / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


@pytest.fixture
def pg_cluster(private_dir: Path) -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster (its ``postgres`` database), running; never the shared one."""
    cluster = PostgresCluster(private_dir / "pg")
    try:
        cluster.init().start()
        yield cluster
    finally:
        try:
            cluster.stop("immediate")
        except Exception:
            pid = _postmaster_pid(cluster)
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise


@pytest.fixture
def pg_scenario(
    request: pytest.FixtureRequest, broker_url: str, pg_cluster: PostgresCluster, tmp_path: Path
) -> Iterator[Scenario]:
    """Shared broker (Redis and RabbitMQ in turn) and a private, migrated PostgreSQL cluster."""
    yield from make_scenario(request, broker_url, pg_cluster.url, tmp_path)


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Starts private redis-servers (each in its own dir); all stopped by PID at teardown."""
    servers: list[RedisServer] = []

    def start(persistent: bool = False) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", persistent=persistent)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def private_redis_scenario(
    request: pytest.FixtureRequest, server: RedisServer, db_url: str, tmp: Path
) -> Iterator[Scenario]:
    """A scenario on a private redis-server; the server is brought back before the queue is
    dropped if the test left it down."""
    scenarios = make_scenario(request, server.url, db_url, tmp)
    scenario = next(scenarios)
    try:
        yield scenario
    finally:
        for worker in scenario.workers:
            worker.stop()
        if server.proc is None or server.proc.poll() is not None:
            server.start()
        scenarios.close()


# -- broker inspection -----------------------------------------------------------------------


def rabbit_depth(amqp_url: str, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) of ``queue`` on the RabbitMQ node, read with ``rabbitmqctl``.

    AMQP itself only reports ready messages; a message held by a consumer is counted here too.
    """
    from kombu import Connection

    vhost = Connection(amqp_url).virtual_host or "/"
    proc = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "--no-table-headers",
         "name", "messages_ready", "messages_unacknowledged"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, f"rabbitmqctl list_queues failed: {proc.stderr.strip()}"
    for line in proc.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] == queue:
            return int(parts[1]), int(parts[2])
    raise AssertionError(f"queue {queue} not found on RabbitMQ:\n{proc.stdout}")


def held(scenario: Scenario) -> tuple[int, int]:
    """(ready, unacknowledged) messages of the scenario's queue, on either broker."""
    if scenario.broker_url.startswith("redis"):
        return broker_depth(scenario.broker_url, scenario.queue)
    return rabbit_depth(scenario.broker_url, scenario.queue)


def frozen_held(scenario: Scenario, worker: Worker, expected: int, tries: int = 5) -> list[int]:
    """Messages the broker holds for the queue, counted while the worker is paused (SIGSTOP).

    A paused worker cannot move a message, so ready + unacked is the whole truth, except on
    Redis in kombu's own instant between BRPOP and recording the delivery as unacked: a snapshot
    that falls there is taken again. Returns every total seen (the last one is ``expected``
    unless all tries fell short).
    """
    assert worker.proc is not None and worker.alive()
    totals: list[int] = []
    for _ in range(tries):
        os.killpg(worker.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(0.3)  # commands already sent by the worker land
            ready, unacked = held(scenario)
        finally:
            os.killpg(worker.proc.pid, signal.SIGCONT)
        totals.append(ready + unacked)
        if totals[-1] >= expected:
            break
        time.sleep(0.5)
    return totals


def log_count(workers: list[Worker], *needles: str) -> int:
    """Lines of the workers' logs (this test's part) containing every needle."""
    return sum(
        1 for worker in workers for line in worker.output().splitlines() if all(needle in line for needle in needles)
    )


def wait_log(workers: list[Worker], count: int, timeout: float, *needles: str) -> None:
    wait_for(
        lambda: log_count(workers, *needles) >= count,
        timeout,
        what=f"{count} log line(s) with {needles!r}",
    )
