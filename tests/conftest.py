"""Shared fixtures: real services that must answer (never skipped), per-test names."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import create_engine, text

from celery_reliable.broker.redis_fetch import stage_list
from tests.harness import ROOT, TestDatabase, Worker, wait_for

for _name in list(os.environ):
    if _name.startswith("RELIABLE_") and not _name.startswith("RELIABLE_TEST_"):
        del os.environ[_name]

#: Each pytest-xdist worker after the first takes a Redis database of its own (gw1: 10, gw2: 8, ...),
#: so one worker's recovery sweeps and held sets never meet another's messages.
_XDIST_REDIS_DBS = (11, 10, 8, 7, 6, 5)


def _redis_url() -> str:
    url = os.environ.get("RELIABLE_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    if index == 0:
        return url
    base, _, _ = url.rpartition("/")
    return f"{base}/{_XDIST_REDIS_DBS[index % len(_XDIST_REDIS_DBS)]}"


REDIS_URL = _redis_url()
AMQP_URL = os.environ.get("RELIABLE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES_URL = os.environ.get("RELIABLE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("RELIABLE_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


def _answers_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.ping()
    finally:
        client.close()


def _answers_amqp(url: str) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=3) as conn:
        conn.ensure_connection(max_retries=1)


def _answers_sql(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def _require(kind: str, url: str, check: Any) -> str:
    try:
        check(url)
    except Exception as exc:
        pytest.fail(
            f"{kind} is not answering at {url} ({exc!r}). Start it with the README's test command "
            "(scripts/test starts the services it needs) and run again.",
            pytrace=False,
        )
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _require("Redis", REDIS_URL, _answers_redis)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    return _require("RabbitMQ", AMQP_URL, _answers_amqp)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    return _require("PostgreSQL", POSTGRES_URL, _answers_sql)


@pytest.fixture(scope="session")
def mysql_server() -> str:
    return _require("MariaDB", MYSQL_URL, _answers_sql)


def _own_database(server_url: str, kind: str) -> Iterator[str]:
    """A database of our own on a shared server, dropped afterwards."""
    name = f"reliable_t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    base, _, _ = server_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            if kind == "postgres":
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            else:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@pytest.fixture
def postgres_db(postgres_server: str) -> Iterator[str]:
    yield from _own_database(postgres_server, "postgres")


@pytest.fixture
def mysql_db(mysql_server: str) -> Iterator[str]:
    yield from _own_database(mysql_server, "mysql")


@pytest.fixture
def sqlite_db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'reliable.sqlite3'}"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def any_db_url(request: pytest.FixtureRequest) -> str:
    """Each of the three supported databases in turn, empty."""
    return str(request.getfixturevalue(f"{request.param}_db"))


def key_prefix(redis_url: str, label: str) -> Iterator[str]:
    """A kombu ``global_keyprefix`` of one test (``label`` and a random part); its keys are deleted
    afterwards. For fixtures: ``yield from key_prefix(redis_url, "rt-wire")``."""
    import redis

    value = f"{label}-{uuid.uuid4().hex[:8]}:"
    yield value
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(f"{value}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def store_app(db_url: str, name: str = "store") -> Iterator[Celery]:
    """An app whose reliability tables are migrated in ``db_url`` (no broker is used); its engines
    are disposed afterwards. For fixtures: ``yield from store_app(any_db_url)``."""
    from celery_reliable.store.engine import dispose
    from celery_reliable.store.migrate import upgrade

    app = Celery(name, broker="memory://", set_as_current=False)
    app.conf.reliable_database_url = db_url
    upgrade(app)
    yield app
    dispose(app)
    app.close()


def unique_queue(request: pytest.FixtureRequest) -> str:
    return f"rt-{request.node.name[:30]}-{uuid.uuid4().hex[:8]}".replace("[", "-").replace("]", "")


def broker_depth(broker_url: str, queue: str) -> tuple[int, int]:
    """(ready messages in ``queue``, unacknowledged messages that belong to it)."""
    if broker_url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(broker_url)
        try:
            ready = int(client.llen(queue)) + int(client.llen(stage_list(queue)))  # + the fetch's stage list
            unacked = 0
            for value in client.hvals("unacked"):
                try:
                    _payload, _exchange, routing_key = json.loads(value)
                except (ValueError, TypeError):
                    continue
                unacked += routing_key == queue
            return ready, unacked
        finally:
            client.close()
    from kombu import Connection

    with Connection(broker_url) as conn:
        channel = conn.channel()
        try:
            _name, count, _consumers = channel.queue_declare(queue=queue, passive=True)
        except Exception:
            return 0, 0
        return int(count), 0


def drop_queue(broker_url: str, queue: str) -> None:
    if broker_url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(broker_url)
        try:
            # the list, its priority lists, and the binding keys kombu keeps for its exchange
            bindings = (f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
            client.delete(queue, *[f"{queue}\x06\x16{p}" for p in range(10)], stage_list(queue), *bindings)
        finally:
            client.close()
        return
    from kombu import Connection

    try:
        with Connection(broker_url) as conn:
            conn.channel().queue_delete(queue=queue)
    except Exception:
        pass


@dataclass
class Scenario:
    """One test's broker queue, database and worker processes."""

    broker_url: str
    queue: str
    db: TestDatabase
    tmp: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)
    _producer: Celery | None = None

    def env(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(ROOT),
            RELIABLE_TEST_BROKER=self.broker_url,
            RELIABLE_TEST_QUEUE=self.queue,
            RELIABLE_TEST_DB=self.db.url,
        )
        env.update(self.env_overrides)
        env.update(overrides)
        return env

    def worker(self, name: str = "w1", concurrency: int = 1, start: bool = True, **overrides: str) -> Worker:
        worker = Worker(self.env(**overrides), self.tmp / f"{name}.log", f"{name}-{self.queue}", concurrency)
        self.workers.append(worker)
        if start:
            worker.start()
        return worker

    @property
    def producer(self) -> Celery:
        if self._producer is None:
            self._producer = Celery("producer", broker=self.broker_url)
            self._producer.conf.update(task_default_queue=self.queue, broker_connection_retry_on_startup=True)
        return self._producer

    def send(self, name: str, *args: Any, task_id: str | None = None, **options: Any) -> str:
        result = self.producer.send_task(name, args, task_id=task_id, queue=self.queue, **options)
        return str(result.id)

    def depth(self) -> tuple[int, int]:
        return broker_depth(self.broker_url, self.queue)

    def wait_empty(self, timeout: float = 30) -> None:
        wait_for(lambda: self.depth() == (0, 0), timeout, what=f"queue {self.queue} empty")

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self._producer is not None:
            self._producer.close()
        drop_queue(self.broker_url, self.queue)
        self.db.dispose()


def make_scenario(request: pytest.FixtureRequest, broker_url: str, db_url: str, tmp: Path) -> Iterator[Scenario]:
    db = TestDatabase(db_url)
    db.prepare()
    scenario = Scenario(broker_url, unique_queue(request), db, tmp)
    try:
        yield scenario
    finally:
        scenario.close()


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def broker_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "amqp_url"))


@pytest.fixture
def scenario(request: pytest.FixtureRequest, broker_url: str, postgres_db: str, tmp_path: Path) -> Iterator[Scenario]:
    """Real broker (Redis and RabbitMQ in turn), real PostgreSQL, workers started by the test."""
    yield from make_scenario(request, broker_url, postgres_db, tmp_path)


@pytest.fixture
def redis_sqlite_scenario(
    request: pytest.FixtureRequest, redis_url: str, sqlite_db: str, tmp_path: Path
) -> Iterator[Scenario]:
    """Real Redis and a SQLite file (the zero-server set-up)."""
    yield from make_scenario(request, redis_url, sqlite_db, tmp_path)
