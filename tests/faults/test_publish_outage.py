"""publish() while the broker dies and comes back: nothing is lost, nothing raises, nothing doubles.

A producer loop publishes 200 messages. Before message 60 the broker is SIGKILLed (a private,
durable redis-server, or a private RabbitMQ node); before message 140 it is started again on
the same port and data. Messages 60..139 must be kept in the pending table (``sent=False``,
``pending_id`` set), all others sent; none may raise. Then the relay sends the kept ones and a
real worker runs every one of the 200 exactly once, under the id publish() returned.

The kill happens between two publishes of the loop, so no send is in flight: a send cut off
after the broker stored it but before it answered would be an honest duplicate, not a bug.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_reliable import PublishResult, publish, relay_once
from tests.conftest import Scenario, make_scenario
from tests.faults.conftest import private_redis_scenario
from tests.harness import RedisServer, free_port, wait_for
from tests.integration.test_publish import close_app, effects, make_app, pending_rows

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.postgres]

N, DOWN_AT, UP_AT = 200, 60, 140


class RabbitNode:
    """A private RabbitMQ node (own name, ports, data and config); stopped by its PID."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.dist_port = free_port()
        self.name = f"rtpub{uuid.uuid4().hex[:8]}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    def _prepare(self) -> None:
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        if os.geteuid() == 0:  # rabbitmq-server switches to the rabbitmq user
            for path in [self.dir, *self.dir.rglob("*")]:
                shutil.chown(path, "rabbitmq", "rabbitmq")

    def start(self, timeout: float = 60) -> RabbitNode:
        self._prepare()
        self.pid_file.unlink(missing_ok=True)
        env = dict(
            os.environ,
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "plugins"),
        )
        with open(self.dir / "server.out", "ab") as out:
            self.proc = subprocess.Popen(
                ["rabbitmq-server"],
                cwd=self.dir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                tail = (self.dir / "server.out").read_text(errors="replace")[-2000:]
                raise AssertionError(f"rabbitmq-server exited with {self.proc.returncode}:\n{tail}")
            from kombu import Connection

            with Connection(self.url, connect_timeout=1) as conn:
                conn.ensure_connection(max_retries=1)
            return True

        wait_for(answers, timeout, interval=0.2, what=f"RabbitMQ node {self.name} on {self.port}")
        wait_for(self.beam_pid, 10, what="RabbitMQ pid file")
        return self

    def beam_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _signal_and_wait(self, sig: int, timeout: float) -> bool:
        pid = self.beam_pid()
        if pid is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=timeout)  # the wrapper scripts end with the node
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        if not self._signal_and_wait(signal.SIGKILL, 20):
            raise AssertionError(f"RabbitMQ node {self.name} did not exit after SIGKILL")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if not self._signal_and_wait(signal.SIGTERM, 30):
            self.kill()


class RedisControl:
    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.url = server.url

    def kill(self) -> None:
        self.server.kill()

    def start(self) -> None:
        self.server.start()


@pytest.fixture
def rabbit_node(private_dir: Path) -> Iterator[RabbitNode]:
    node = RabbitNode(private_dir / "rabbit")
    try:
        node.start()
        yield node
    finally:
        node.stop()


def _producer_loop(app: Any, broker: Any) -> list[PublishResult | BaseException]:
    results: list[PublishResult | BaseException] = []
    for i in range(N):
        if i == DOWN_AT:
            broker.kill()
        if i == UP_AT:
            broker.start()
        try:
            results.append(publish(app, "t.ok", [f"outage-{i}"]))
        except BaseException as exc:
            results.append(exc)
    return results


def _check_outage(
    scenario: Scenario,
    broker: Any,
    relay: Callable[[Any], None],
) -> None:
    app = make_app(
        broker.url,
        scenario.db.url,
        scenario.queue,
        reliable_publish_retries=1,
        reliable_publish_retry_backoff=0.01,
        reliable_publish_timeout=3.0,
    )
    try:
        started = time.monotonic()
        results = _producer_loop(app, broker)
        loop_time = time.monotonic() - started
        raised = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
        assert raised == [], f"publish() raised: {raised[:3]}"
        ok = [r for r in results if isinstance(r, PublishResult)]
        # Then exactly the messages of the outage are kept, the others are sent
        sent_at = [i for i, r in enumerate(ok) if r.sent]
        kept_at = [i for i, r in enumerate(ok) if not r.sent]
        assert kept_at == list(range(DOWN_AT, UP_AT)), f"kept: {kept_at}"
        assert sent_at == list(range(DOWN_AT)) + list(range(UP_AT, N))
        assert all(r.pending_id is None and r.error is None for r in ok if r.sent)
        assert all(r.pending_id is not None and r.error for r in ok if not r.sent)
        assert scenario.depth() == (N - (UP_AT - DOWN_AT), 0)  # the sent ones survived the crash
        rows = pending_rows(scenario.db.url)
        assert [(row.id, row.task_id) for row in rows] == [(ok[i].pending_id, ok[i].task_id) for i in kept_at]
        assert {(row.status, row.source, row.attempts) for row in rows} == {("pending", "publish_fallback", 0)}
        # When the relay runs (with a worker consuming)
        scenario.worker()
        relay(app)
        # Then every one of the 200 runs exactly once, under the id publish() returned
        wait_for(lambda: len(effects(scenario)) == N, 60, what=f"{N} effects")
        scenario.wait_empty(30)
        time.sleep(0.5)
        found = effects(scenario)
        assert found == {f"outage-{i}": [ok[i].task_id] for i in range(N)}
        # and each kept row is done: its worker recorded the outcome (the delivery ledger)
        wait_for(
            lambda: Counter(row.status for row in pending_rows(scenario.db.url)) == {"done": UP_AT - DOWN_AT},
            10,
            what="every kept row done",
        )
        print(f"\n[outage {broker.url.split(':')[0]}] producer loop {loop_time:.1f}s; kept {len(kept_at)}")
    finally:
        close_app(app)


@pytest.mark.redis
def test_redis_killed_while_publishing_loses_nothing(
    request: pytest.FixtureRequest, redis_servers: Callable[..., RedisServer], postgres_db: str, tmp_path: Path
) -> None:
    server = redis_servers(persistent=True)
    scenarios = private_redis_scenario(request, server, postgres_db, tmp_path)
    scenario = next(scenarios)
    try:

        def relay(app: Any) -> None:
            stats = relay_once(app)
            assert (stats.claimed, stats.sent, stats.failed, stats.broker_down) == (UP_AT - DOWN_AT,) * 2 + (0, False)

        _check_outage(scenario, RedisControl(server), relay)
    finally:
        scenarios.close()


@pytest.mark.rabbitmq
def test_rabbitmq_node_killed_while_publishing_loses_nothing(
    request: pytest.FixtureRequest, rabbit_node: RabbitNode, postgres_db: str, tmp_path: Path
) -> None:
    scenarios = make_scenario(request, rabbit_node.url, postgres_db, tmp_path)
    scenario = next(scenarios)
    try:

        def relay(app: Any) -> None:
            # the beat task, run by the worker (its app has the same database and queue)
            app.send_task("celery_reliable.relay", queue=scenario.queue)

            def all_sent() -> bool:  # (a row whose task already ran is done)
                statuses = Counter(r.status for r in pending_rows(scenario.db.url))
                return set(statuses) <= {"sent", "done"} and statuses.total() == UP_AT - DOWN_AT

            wait_for(
                all_sent,
                30,
                what="the worker's relay task sent every kept message",
            )

        _check_outage(scenario, rabbit_node, relay)
    finally:
        if rabbit_node.proc is None or rabbit_node.proc.poll() is not None:
            rabbit_node.start()
        scenarios.close()
