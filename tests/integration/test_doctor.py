"""``reliable doctor`` against real servers: private redis-servers started with good and bad
settings, uniquely named RabbitMQ queues of each kind, real databases, and the real CLI."""

from __future__ import annotations

import importlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, Task
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu import Connection, Queue

from celery_reliable.ops.doctor import Report, Status, run_checks
from celery_reliable.ops.doctor.tasks import task_facts
from celery_reliable.ops.doctor.timeouts import check_retry_delays, check_time_limits
from celery_reliable.store.engine import dispose
from celery_reliable.store.migrate import upgrade
from celery_reliable.worker.consumer import ReliableConsumer
from tests.harness import ROOT, RedisServer, reliable_cli, wait_for

pytestmark = pytest.mark.integration

NOWHERE_REDIS = "redis://127.0.0.1:1/0"  # never connected to: the checks that read settings only


def make_app(broker: str, db_url: str, **conf: Any) -> Celery:
    """An app configured the way the docs recommend, with one ReliableTask; ``conf`` overrides."""
    app = Celery(f"doctor_{uuid.uuid4().hex[:8]}", broker=broker, task_cls="celery_reliable:ReliableTask")
    app.conf.update(
        {
            "reliable_database_url": db_url,
            "worker_send_task_events": True,
            "task_send_sent_event": True,
            "task_time_limit": 60,
            "broker_connection_retry_on_startup": True,
            **conf,
        }
    )
    app.task(shared=False, name="doctor.work")(_work)
    return app


def _work() -> None:
    """The body of every test task; the checks read only the task's options."""


def statuses(report: Report) -> dict[str, Status]:
    return {r.check: r.status for r in report.results}


@pytest.fixture
def apps() -> Iterator[Callable[..., Celery]]:
    """``make_app`` whose database engines are disposed after the test."""
    made: list[Celery] = []

    def factory(broker: str, db_url: str, **conf: Any) -> Celery:
        made.append(make_app(broker, db_url, **conf))
        return made[-1]

    yield factory
    for app in made:
        dispose(app)
        app.close()


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Private redis-servers; each stopped by PID at teardown."""
    servers: list[RedisServer] = []

    def start(**options: Any) -> RedisServer:
        servers.append(RedisServer(tmp_path / f"redis-{len(servers)}", **options))
        return servers[-1].start()

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def migrated_sqlite(sqlite_db: str) -> str:
    upgrade(sqlite_db)
    return sqlite_db


# -- Redis --------------------------------------------------------------------------------------


@pytest.mark.redis
def test_durable_redis_and_a_recommended_app_pass(
    redis_servers: Callable[..., RedisServer], apps: Callable[..., Celery], migrated_sqlite: str
) -> None:
    # Given a Redis with AOF fsynced on every write and no eviction, and a migrated database
    server = redis_servers(persistent=True)  # --appendonly yes --appendfsync always; noeviction is the default
    app = apps(server.url, migrated_sqlite)

    report = run_checks(app)

    found = statuses(report)
    assert found["redis.persistence"] is Status.PASS, report
    assert found["redis.appendfsync"] is Status.PASS, report
    assert found["redis.maxmemory_policy"] is Status.PASS, report
    assert found["redis.replicas"] is Status.NOTE  # a lone server: said, not counted against it
    assert found["db.schema"] is Status.PASS
    # every other check passes too, so even --strict exits 0
    assert [r for r in report.results if r.status in (Status.WARN, Status.FAIL)] == []
    assert report.exit_code(strict=True) == 0


@pytest.mark.redis
def test_everysec_fsync_and_an_evicting_policy_without_limit_warn(
    redis_servers: Callable[..., RedisServer], apps: Callable[..., Celery], migrated_sqlite: str
) -> None:
    server = redis_servers(
        persistent=False,
        extra=("--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "volatile-lru"),
    )
    report = run_checks(apps(server.url, migrated_sqlite))

    found = statuses(report)
    assert found["redis.persistence"] is Status.PASS
    assert found["redis.appendfsync"] is Status.WARN
    assert "machine" in report.get("redis.appendfsync").detail  # precise: a process crash loses nothing
    assert found["redis.maxmemory_policy"] is Status.WARN  # no maxmemory: nothing evicted yet
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 1


@pytest.mark.redis
def test_redis_without_persistence_and_with_eviction_fails_through_the_cli(
    redis_servers: Callable[..., RedisServer], migrated_sqlite: str, tmp_path: Path
) -> None:
    # Given a password-protected Redis with no persistence that evicts keys when full
    server = redis_servers(
        persistent=False, password="s3cret-pw", extra=("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    )
    (tmp_path / "doctorproj.py").write_text(
        "from celery import Celery\n"
        "app = Celery('doctorproj', task_cls='celery_reliable:ReliableTask')\n"
        f"app.conf.update(broker_url={server.url!r}, reliable_database_url={migrated_sqlite!r},\n"
        "                worker_send_task_events=True, task_send_sent_event=True, task_time_limit=60)\n"
        "@app.task(name='doctorproj.work', shared=False)\n"
        "def work():\n"
        "    pass\n"
    )

    as_json = _celery(tmp_path, "doctor", "--json")
    as_table = _celery(tmp_path, "doctor")

    assert as_json.returncode == 1, as_json.stderr
    data = json.loads(as_json.stdout)
    found = {r["check"]: r["status"] for r in data["results"]}
    assert found["redis.persistence"] == "FAIL"
    assert found["redis.maxmemory_policy"] == "FAIL"
    assert "CONFIG SET appendonly yes" in next(r["fix"] for r in data["results"] if r["check"] == "redis.persistence")
    assert data["exit_code"] == 1 and data["counts"]["FAIL"] == 2
    assert as_table.returncode == 1
    lines = as_table.stdout.splitlines()
    assert lines[0].split() == ["STATUS", "CHECK", "DETAIL", "FIX"]
    assert any(line.startswith("FAIL") and "redis.persistence" in line for line in lines)
    assert "2 FAIL" in as_table.stdout
    for output in (as_json, as_table):
        assert "s3cret-pw" not in output.stdout + output.stderr
        assert "127.0.0.1" in output.stdout  # the URL is shown, with the password masked


@pytest.mark.redis
def test_config_refused_degrades_to_notes(
    redis_servers: Callable[..., RedisServer], apps: Callable[..., Celery], migrated_sqlite: str
) -> None:
    # Given a Redis where CONFIG is renamed away, as on many managed services
    server = redis_servers(persistent=True, extra=("--rename-command", "CONFIG", ""))
    report = run_checks(apps(server.url, migrated_sqlite))

    found = statuses(report)
    # INFO still tells AOF and the eviction policy; appendfsync only CONFIG can tell
    assert found["redis.persistence"] is Status.PASS
    assert found["redis.maxmemory_policy"] is Status.PASS
    assert found["redis.appendfsync"] is Status.NOTE
    assert "CONFIG GET is not allowed" in report.get("redis.appendfsync").detail
    assert report.exit_code() == 0


@pytest.mark.redis
def test_replicas_against_reliable_redis_wait_replicas(
    redis_servers: Callable[..., RedisServer], apps: Callable[..., Celery], migrated_sqlite: str
) -> None:
    import redis

    primary = redis_servers(persistent=True)
    redis_servers(persistent=True, extra=("--replicaof", "127.0.0.1", str(primary.port)))
    client = redis.Redis.from_url(primary.url)
    try:
        wait_for(lambda: client.info("replication")["connected_slaves"] >= 1, 20, what="replica connected")
    finally:
        client.close()

    one = run_checks(apps(primary.url, migrated_sqlite, reliable_redis_wait_replicas=1)).get("redis.replicas")
    two = run_checks(apps(primary.url, migrated_sqlite, reliable_redis_wait_replicas=2)).get("redis.replicas")

    assert one.status is Status.PASS and "1 connected replica" in one.detail
    assert two.status is Status.FAIL and "every publish() counts as failed" in two.detail


# -- RabbitMQ -----------------------------------------------------------------------------------


@pytest.mark.redis
def test_fetch_without_the_atomic_step_warns_and_says_why(
    redis_servers: Callable[..., RedisServer], apps: Callable[..., Celery], migrated_sqlite: str
) -> None:
    server = redis_servers(persistent=True)

    def fetch(**conf: Any) -> Any:
        report = run_checks(apps(server.url, migrated_sqlite, **conf))
        return report.get("redis.fetch")

    assert fetch().status is Status.PASS
    off = fetch(reliable_redis_atomic_fetch=False)
    assert off.status is Status.WARN and "reliable_redis_atomic_fetch is False" in off.detail, off
    assert "BRPOP" in off.detail and "reliable_redis_atomic_fetch = True" in off.fix
    own = fetch(worker_consumer="celery.worker.consumer:Consumer")  # Celery's own, chosen explicitly
    assert own.status is Status.PASS  # the default is replaced: indistinguishable from left alone
    custom = fetch(worker_consumer="tests.integration.test_doctor:OwnConsumer")
    assert custom.status is Status.WARN and "OwnConsumer" in custom.detail, custom
    derived = fetch(worker_consumer="tests.integration.test_doctor:DerivedConsumer")
    assert derived.status is Status.PASS, derived


def test_restore_sweep_period_and_lock(apps: Callable[..., Celery], migrated_sqlite: str) -> None:
    def sweep(**conf: Any) -> Any:
        return run_checks(apps(NOWHERE_REDIS, migrated_sqlite, **conf)).get("redis.restore_sweep")

    ours = sweep()
    assert ours.status is Status.PASS and "every 10 s" in ours.detail and "at most 20 s" in ours.detail, ours
    kombus = sweep(reliable_apply_transport_defaults=False)  # kombu's: 10 s x 10, and a 300 s lock
    assert kombus.status is Status.WARN, kombus
    assert "every 100 s" in kombus.detail and "lasts 300 s" in kombus.detail, kombus
    assert "unacked_mutex_expire 20" in kombus.fix
    lock = sweep(broker_transport_options={"unacked_mutex_expire": 300})
    assert lock.status is Status.WARN and "lasts 300 s" in lock.detail and "scans every" not in lock.detail, lock


class OwnConsumer(CeleryConsumer):
    """A user's own worker consumer (not built on celery_reliable's)."""


class DerivedConsumer(ReliableConsumer):
    """A user's own worker consumer built on celery_reliable's: keeps the atomic fetch."""


@pytest.fixture
def rabbit_queues(amqp_url: str) -> Iterator[dict[str, str]]:
    """Uniquely named queues of each kind, declared on the shared RabbitMQ; deleted afterwards."""
    prefix = f"rt-doctor-{uuid.uuid4().hex[:8]}"
    names = {kind: f"{prefix}-{kind}" for kind in ("classic", "quorum", "transient", "capped", "wrongtype", "missing")}
    with Connection(amqp_url) as conn:
        channel = conn.channel()
        channel.queue_declare(names["classic"], durable=True, auto_delete=False)
        channel.queue_declare(names["quorum"], durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"})
        channel.queue_declare(names["transient"], durable=False, auto_delete=False)
        channel.queue_declare(
            names["capped"], durable=True, auto_delete=False, arguments={"x-max-length": 10, "x-message-ttl": 60000}
        )
        channel.queue_declare(names["wrongtype"], durable=True, auto_delete=False)
    try:
        yield names
    finally:
        with Connection(amqp_url) as conn:
            channel = conn.channel()
            for name in names.values():
                channel.queue_delete(name)


def _queue_exists(amqp_url: str, name: str) -> bool:
    from amqp.exceptions import NotFound

    with Connection(amqp_url) as conn:
        try:
            conn.channel().queue_declare(name, passive=True)
        except NotFound:
            return False
    return True


@pytest.mark.rabbitmq
def test_rabbitmq_queue_kinds(
    amqp_url: str, rabbit_queues: dict[str, str], apps: Callable[..., Celery], migrated_sqlite: str
) -> None:
    quorum = {"x-queue-type": "quorum"}
    app = apps(
        amqp_url,
        migrated_sqlite,
        task_queues=[
            Queue(rabbit_queues["classic"]),
            Queue(rabbit_queues["quorum"], queue_arguments=quorum),
            Queue(rabbit_queues["transient"], durable=False),
            Queue(rabbit_queues["capped"], queue_arguments={"x-max-length": 10, "x-message-ttl": 60000}),
            Queue(rabbit_queues["wrongtype"], queue_arguments=quorum),  # the broker's is classic
            Queue(rabbit_queues["missing"]),
        ],
        task_default_queue=rabbit_queues["classic"],
    )

    report = run_checks(app)

    def result(kind: str) -> Any:
        return report.get(f"rabbitmq.queue {rabbit_queues[kind]}")

    assert result("classic").status is Status.WARN
    assert "quorum" in result("classic").fix
    assert result("quorum").status is Status.PASS
    assert result("transient").status is Status.FAIL
    assert "non-durable" in result("transient").detail
    assert (result("capped").status, "classic" in result("capped").detail) == (Status.WARN, True)
    assert result("wrongtype").status is Status.FAIL
    assert "PRECONDITION_FAILED" in result("wrongtype").detail
    assert result("missing").status is Status.WARN
    assert "not declared yet" in result("missing").detail
    assert not _queue_exists(amqp_url, rabbit_queues["missing"])  # the probe created nothing
    delayed = report.get("rabbitmq.delayed_delivery")  # quorum queues on the default direct exchange
    assert delayed.status is Status.WARN and rabbit_queues["quorum"] in delayed.detail
    assert report.get("rabbitmq.delivery_mode").status is Status.PASS
    assert report.get("rabbitmq.confirm_publish").status is Status.WARN
    assert report.get("tasks.time_limit").status is Status.PASS  # 60 s < consumer_timeout 1800 s
    assert report.exit_code() == 1


@pytest.mark.rabbitmq
def test_rabbitmq_quorum_default_queue_with_confirms_passes(
    amqp_url: str, rabbit_queues: dict[str, str], apps: Callable[..., Celery], migrated_sqlite: str
) -> None:
    app = apps(
        amqp_url,
        migrated_sqlite,
        task_default_queue=rabbit_queues["quorum"],
        task_default_queue_type="quorum",
        task_default_exchange=rabbit_queues["quorum"],
        task_default_exchange_type="topic",  # countdowns wait in the broker (native delayed delivery)
        broker_transport_options={"confirm_publish": True},
    )
    report = run_checks(app)
    assert [(r.check, r.status) for r in report.results if r.check.startswith("rabbitmq.")] == [
        (f"rabbitmq.queue {rabbit_queues['quorum']}", Status.PASS),
        ("rabbitmq.delayed_delivery", Status.PASS),
        ("rabbitmq.delivery_mode", Status.PASS),
        ("rabbitmq.confirm_publish", Status.PASS),
    ]
    assert report.exit_code(strict=True) == 0, report


# -- database, relay, tasks ---------------------------------------------------------------------


@pytest.mark.postgres
def test_database_not_migrated_fails_until_upgraded(apps: Callable[..., Celery], postgres_db: str) -> None:
    app = apps("memory://", postgres_db)
    before = run_checks(app).get("db.schema")
    upgrade(app)
    after = run_checks(app).get("db.schema")
    assert before.status is Status.FAIL and "no reliability tables" in before.detail
    assert "reliable db upgrade" in before.fix
    assert after.status is Status.PASS


def test_missing_or_unreachable_database_fails_without_side_effects(
    apps: Callable[..., Celery], tmp_path: Path
) -> None:
    missing = tmp_path / "absent.sqlite3"
    result = run_checks(apps("memory://", f"sqlite:///{missing}")).get("db.schema")
    assert result.status is Status.FAIL and "does not exist" in result.detail
    assert not missing.exists()  # checking did not create the file

    empty = tmp_path / "empty.sqlite3"
    sqlite3.connect(empty).close()
    assert run_checks(apps("memory://", f"sqlite:///{empty}")).get("db.schema").status is Status.FAIL

    unreachable = run_checks(apps("memory://", "postgresql+psycopg://nobody:pw-secret@127.0.0.1:1/none"))
    assert unreachable.get("db.schema").status is Status.FAIL
    assert "not reachable" in unreachable.get("db.schema").detail
    assert "pw-secret" not in json.dumps([r.as_dict() for r in unreachable.results])


def test_relay_schedule(apps: Callable[..., Celery], migrated_sqlite: str) -> None:
    scheduled = run_checks(apps("memory://", migrated_sqlite)).get("beat.relay")
    unscheduled = run_checks(apps("memory://", migrated_sqlite, reliable_relay_interval=None)).get("beat.relay")
    stored = run_checks(
        apps(
            "memory://",
            migrated_sqlite,
            reliable_relay_interval=None,
            beat_scheduler="django_celery_beat.schedulers:DatabaseScheduler",
        )
    ).get("beat.relay")
    assert scheduled.status is Status.PASS
    assert unscheduled.status is Status.WARN and "reliable_relay_interval = None" in unscheduled.detail
    assert stored.status is Status.NOTE and "django_celery_beat" in stored.detail


def test_plain_tasks_are_named(apps: Callable[..., Celery], migrated_sqlite: str) -> None:
    app = apps("memory://", migrated_sqlite, worker_send_task_events=False)
    app.task(shared=False, name="doctor.early", base=Task)(_work)
    app.task(shared=False, name="doctor.late_unguarded", base=Task, acks_late=True)(_work)
    report = run_checks(app)
    acks = report.get("tasks.acks_late")
    lost = report.get("tasks.worker_lost")
    # both lose the task they run: a crash mid-task / a killed pool process
    assert acks.status is Status.FAIL and "doctor.early" in acks.detail and "doctor.work" not in acks.detail
    assert lost.status is Status.FAIL and "doctor.late_unguarded" in lost.detail
    assert report.exit_code() == 1
    assert report.get("worker.events").status is Status.WARN
    assert report.get("broker.connection").status is Status.NOTE  # memory:// has nothing to check


def test_time_limits_and_retry_waits_against_the_visibility_timeout(apps: Callable[..., Celery]) -> None:
    # A visibility timeout the user set is used as is (not raised above the time limits)
    app = apps(NOWHERE_REDIS, "sqlite://", broker_transport_options={"visibility_timeout": 100})
    # ReliableTask caps its backoff below the timeout; its self.retry() without countdown waits 10 s
    app.task(shared=False, name="doctor.capped", retry_backoff_max=1000, default_retry_delay=10)(_work)
    app.task(shared=False, name="doctor.long", time_limit=200)(_work)
    app.task(
        shared=False,
        name="doctor.backoff",
        base=Task,
        autoretry_for=(OSError,),
        retry_backoff=True,
        retry_backoff_max=300,
    )(_work)
    tasks = task_facts(app)
    limits = check_time_limits(app, tasks)
    waits = check_retry_delays(app, tasks)
    assert limits is not None and limits.status is Status.FAIL
    assert "doctor.long" in limits.detail and "visibility_timeout': 260" in limits.fix
    assert waits is not None and waits.status is Status.WARN
    assert "doctor.backoff" in waits.detail and "doctor.capped" not in waits.detail
    assert "doctor.work" in waits.detail  # default_retry_delay 180 s: a self.retry() without countdown

    # ReliableTask's own timeout is raised above each time_limit, so the same task passes
    fitted = apps(NOWHERE_REDIS, "sqlite://")
    fitted.task(shared=False, name="doctor.long", time_limit=2000)(_work)
    result = check_time_limits(fitted, task_facts(fitted))
    assert result is not None and result.status is Status.PASS

    # RabbitMQ: a run longer than consumer_timeout (30 min) has its channel closed and runs again
    amqp = apps("amqp://guest@127.0.0.1:1//", "sqlite://")
    amqp.task(shared=False, name="doctor.hours", time_limit=7200)(_work)
    result = check_time_limits(amqp, task_facts(amqp))
    assert result is not None and result.status is Status.FAIL and "consumer_timeout" in result.detail


def _celery(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return reliable_cli(cwd, "doctorproj", *args)


# -- the quorum-queue recommendation, with a real worker ------------------------------------------

QUORUM_APP = """
import sqlite3
from celery import Celery

app = Celery("quorumproj", broker={broker!r}, task_cls="celery_reliable:ReliableTask")
app.conf.update(
    task_default_queue="work", task_default_queue_type="quorum", task_default_exchange_type="topic",
    broker_transport_options={{"confirm_publish": True}}, task_ignore_result=True,
    worker_send_task_events=True, task_send_sent_event=True, task_time_limit=60,
    reliable_database_url={db!r}, reliable_retry_backoff=0.5, reliable_retry_backoff_max=1.0,
    reliable_retry_jitter=False, broker_connection_retry_on_startup=True,
)


def record(kind, key):
    with sqlite3.connect({effects!r}, timeout=10) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS e (kind TEXT, key TEXT)")
        conn.execute("INSERT INTO e VALUES (?, ?)", (kind, key))
        return conn.execute("SELECT count(*) FROM e WHERE kind = ? AND key = ?", (kind, key)).fetchone()[0]


@app.task(name="quorumproj.ok", shared=False)
def ok(key):
    record("effect", key)


@app.task(name="quorumproj.flaky", shared=False)
def flaky(key):
    if record("attempt", key) <= 2:
        raise ConnectionError("transient")
    record("effect", key)
"""


@pytest.fixture
def own_vhost(amqp_url: str) -> Iterator[str]:
    """A RabbitMQ vhost of this test (Celery's delayed-delivery exchanges are declared in it)."""
    name = f"rt-doctor-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, capture_output=True, timeout=60)
    try:
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield Connection(amqp_url).clone(virtual_host=name).as_uri(include_password=True)
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=60)


@pytest.mark.rabbitmq
def test_reliable_task_on_a_quorum_queue_countdown_and_retry(
    own_vhost: str, migrated_sqlite: str, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.sqlite3"
    (tmp_path / "quorumproj.py").write_text(
        QUORUM_APP.format(broker=own_vhost, db=migrated_sqlite, effects=str(effects))
    )
    sys.path.insert(0, str(tmp_path))
    try:
        proj = importlib.import_module("quorumproj")
        app: Celery = proj.app
        before = run_checks(app).get("rabbitmq.queue work")
        log = tmp_path / "worker.log"
        with open(log, "wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "quorumproj", "worker", "-P", "prefork", "-c", "1",
                 "-l", "info", "--without-heartbeat", "--without-mingle", "--without-gossip"],
                cwd=tmp_path, env={**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            wait_for(lambda: " ready." in log.read_text(errors="replace"), 60, what="quorum worker ready")
            for i in range(3):
                proj.ok.apply_async((f"late-{i}",), countdown=2)
                proj.flaky.delay(f"flaky-{i}")
            proj.ok.reliable_apply_async(("published",), countdown=2)

            def counts() -> dict[str, int]:
                if not effects.exists():
                    return {}
                with sqlite3.connect(effects, timeout=10) as conn:
                    rows = conn.execute("SELECT kind || ':' || key, count(*) FROM e GROUP BY 1").fetchall()
                return {str(k): int(n) for k, n in rows}

            wait_for(lambda: sum(n for k, n in counts().items() if k.startswith("effect:")) >= 7, 40, what="7 effects")
            time.sleep(1.5)  # a duplicate would show up within the retry and countdown waits
            after = run_checks(app)
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=10)
            dispose(app)
            app.close()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("quorumproj", None)

    expected = {f"effect:late-{i}": 1 for i in range(3)}
    expected |= {f"effect:flaky-{i}": 1 for i in range(3)} | {f"attempt:flaky-{i}": 3 for i in range(3)}
    expected["effect:published"] = 1
    assert counts() == expected
    assert before.status is Status.NOTE and "quorum" in before.detail  # not declared until the worker starts
    assert after.get("rabbitmq.queue work").status is Status.PASS
    assert after.get("rabbitmq.delayed_delivery").status is Status.PASS


@pytest.mark.redis
def test_a_redis_without_persistence_is_a_delay_when_every_message_goes_through_the_ledger(
    redis_servers: Callable[..., RedisServer], apps: Callable[..., Celery], migrated_sqlite: str
) -> None:
    server = redis_servers(persistent=False)
    plain = run_checks(apps(server.url, migrated_sqlite))
    ledgered = run_checks(apps(server.url, migrated_sqlite, reliable_outbox_only=True))
    off = run_checks(apps(server.url, migrated_sqlite, reliable_outbox_only=True, reliable_reconcile_after=None))
    assert plain.get("redis.persistence").status is Status.FAIL
    assert "reliable_outbox_only" in plain.get("redis.persistence").fix
    found = ledgered.get("redis.persistence")
    assert found.status is Status.WARN and "delivery ledger sends each again" in found.detail
    assert "publish() or apply_async" in found.detail  # what it does not cover
    assert off.get("redis.persistence").status is Status.FAIL  # no ledger, no excuse
    assert ledgered.get("redis.recovery").status is Status.PASS
