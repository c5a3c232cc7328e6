"""The Celery app that benchmark workers run (``celery -A bench.benchapp worker``).

One variant per worker run, chosen with ``BENCH_VARIANT``; only the task of that variant is
defined, so the plain variants never import celery_reliable (binding a ReliableTask changes the
app's settings: prefetch multiplier, broker transport options, consumer class).

Completion is counted without a result backend: a ``task_postrun`` receiver (sent after the
task's ``on_success``/``on_failure`` hooks, so after a failure row is written) increments a
counter in Redis and stores the wall-clock time of the last task; ``worker_ready`` stores the time
the worker started consuming. Every key lives under ``BENCH_PREFIX`` (also kombu's
``global_keyprefix``), so the runner can delete all of them afterwards.

Environment: ``BENCH_VARIANT``, ``BENCH_BROKER`` (redis URL with the db number), ``BENCH_PREFIX``,
``BENCH_RUN`` (run id, part of the counter keys), ``BENCH_QUEUE``, ``BENCH_TOTAL`` (tasks to wait
for) and ``BENCH_DB`` (SQLAlchemy URL of the reliability tables, ReliableTask variants only).
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery, signals

from bench import TASK_NAME, keys

VARIANTS = (
    "defaults", "acks_late", "reliable", "idempotent", "fail_plain", "fail_reliable", "sql_lean",
)  # fmt: skip

VARIANT = os.environ.get("BENCH_VARIANT", "defaults")
BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/12")
PREFIX = os.environ.get("BENCH_PREFIX", "reliable-bench:")
RUN = os.environ.get("BENCH_RUN", "run")
QUEUE = os.environ.get("BENCH_QUEUE", "reliable-bench")
TOTAL = int(os.environ.get("BENCH_TOTAL", "0"))
DB_URL = os.environ.get("BENCH_DB", "")

if VARIANT not in VARIANTS:
    raise RuntimeError(f"BENCH_VARIANT={VARIANT!r}: expected one of {', '.join(VARIANTS)}")


class BenchFailure(Exception):
    """Raised by the failing tasks of variant (e)."""


KEYS = keys(PREFIX, RUN)

app = Celery("benchapp")
app.conf.update(
    broker_url=BROKER,
    broker_transport_options={"global_keyprefix": PREFIX},
    broker_connection_retry_on_startup=True,
    result_backend=None,
    task_ignore_result=True,
    task_default_queue=QUEUE,
    # No pidbox (fanout) traffic: the same for every variant, and no keys outside PREFIX.
    worker_enable_remote_control=False,
)

if VARIANT == "defaults":

    @app.task(name=TASK_NAME)
    def noop() -> None:
        return None

elif VARIANT in ("acks_late", "fail_plain"):
    # The late-ack settings ReliableTask uses, on a plain Celery task.
    app.conf.worker_prefetch_multiplier = 1
    if VARIANT == "acks_late":

        @app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)
        def noop() -> None:
            return None

    else:

        @app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)
        def fail() -> None:
            raise BenchFailure("bench failure")

elif VARIANT == "sql_lean":
    # Reference, not ReliableTask: what the idempotency check and record cost when done leanly,
    # by a plain late-ack task on a connection each pool process keeps open (Core, no ORM
    # Session, no pre-ping): SELECT the id, run, INSERT it, COMMIT (one transaction).
    from sqlalchemy import create_engine, text

    app.conf.worker_prefetch_multiplier = 1
    _engine: Any = None
    _conn: Any = None
    _conn_pid = 0
    _SELECT = text("SELECT 1 FROM celery_reliable_processed_task WHERE task_id = :task_id")
    _INSERT = text(
        "INSERT INTO celery_reliable_processed_task (task_id, task_name, completed_at) "
        "VALUES (:task_id, 'bench', CURRENT_TIMESTAMP)"
    )

    @app.task(bind=True, name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)
    def noop(self: Any) -> None:
        global _engine, _conn, _conn_pid
        if _conn is None or _conn_pid != os.getpid():
            _engine = create_engine(DB_URL, pool_size=1)
            _conn, _conn_pid = _engine.connect(), os.getpid()
        if _conn.execute(_SELECT, {"task_id": self.request.id}).first() is not None:
            _conn.rollback()
            return None
        _conn.execute(_INSERT, {"task_id": self.request.id})
        _conn.commit()
        return None

else:
    from celery_reliable import ReliableTask

    app.conf.reliable_database_url = DB_URL
    if VARIANT == "reliable":

        @app.task(name=TASK_NAME, base=ReliableTask)
        def noop() -> None:
            return None

    elif VARIANT == "idempotent":

        @app.task(name=TASK_NAME, base=ReliableTask, idempotent=True)
        def noop() -> None:
            return None

    else:

        @app.task(name=TASK_NAME, base=ReliableTask, max_retries=0)
        def fail() -> None:
            raise BenchFailure("bench failure")


_client: redis.Redis | None = None
_client_pid = 0


def _redis() -> redis.Redis:
    """One client per process (pool processes are forked)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(BROKER, socket_timeout=10, socket_connect_timeout=5)
        _client_pid = os.getpid()
    return _client


@signals.worker_ready.connect
def _worker_ready(**_: Any) -> None:
    _redis().set(KEYS["ready"], repr(time.time()))


@signals.task_postrun.connect
def _task_done(**_: Any) -> None:
    now = time.time()
    client = _redis()
    done = int(client.incr(KEYS["done"]))
    if done == 1:
        client.set(KEYS["first"], repr(now))
    if done >= TOTAL:
        client.set(KEYS["end"], repr(now), nx=True)
