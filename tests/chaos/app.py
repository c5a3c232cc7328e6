"""The Celery app of the chaos runs, as a worker, a beat and a producer
(``celery -A tests.chaos.app worker``), configured from ``CHAOS_*`` environment variables.

``CHAOS_MODE`` picks what is compared:

* ``reliable``: tasks are ``celery_reliable.ReliableTask`` (library defaults, shorter waits);
* ``plain_default``: plain Celery tasks with Celery's defaults (early ack, prefetch 4, Redis
  visibility timeout 1 h);
* ``plain_tuned``: plain Celery hand-tuned for late ack: ``task_acks_late=True``,
  ``task_reject_on_worker_lost=True``, prefetch 1, and on Redis the same visibility timeout and
  restore sweep as the reliable runs.

Every task writes one effect row per run that gets that far (no unique key: duplicates show),
after a start row that tells the harness a task is in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from tests.apps.effects import Effect
from tests.chaos.models import Start

MODE = os.environ.get("CHAOS_MODE", "reliable")
MODES = ("reliable", "plain_default", "plain_tuned")
if MODE not in MODES:
    raise RuntimeError(f"CHAOS_MODE must be one of {MODES}, got {MODE!r}")
RELIABLE = MODE == "reliable"
QUEUE = os.environ.get("CHAOS_QUEUE", "chaos")
BROKER = os.environ.get("CHAOS_BROKER", "redis://127.0.0.1:6379/9")
DB = os.environ.get("CHAOS_DB", "sqlite:///chaos.sqlite3")
#: The visibility timeout of the reliable and tuned runs; "default": the library's (600 s) and kombu's (1 h).
VT: float | None = None if os.environ.get("CHAOS_VT") == "default" else float(os.environ.get("CHAOS_VT", "6"))
#: How the producers send (the doctor of an outbox-only run is told so: ``reliable_outbox_only``).
PUBLISHING = os.environ.get("CHAOS_PUBLISHING", "")
#: Attempts 0..FLAKY_RETRIES-1 of chaos.flaky fail on about 30% of the keys; later ones succeed.
FLAKY_RETRIES = 3
FLAKY_PERCENT = 30


if RELIABLE:
    import celery_reliable  # noqa: F401  (the task class named below)

app = Celery("chaos", task_cls="celery_reliable:ReliableTask" if RELIABLE else "celery:Task")
app.conf.update(
    broker_url=BROKER,
    result_backend=None,
    task_default_queue=QUEUE,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_lost_wait=5,
    # read only by celery_reliable (inert for plain tasks); lets the doctor judge every mode
    reliable_database_url=DB,
)
if RELIABLE:
    app.conf.update(
        reliable_max_retries=int(os.environ.get("CHAOS_MAX_RETRIES", "5")),
        reliable_retry_backoff=0.2,
        reliable_retry_backoff_max=1.0,
        reliable_restore_interval=1.0,
        reliable_relay_interval=float(os.environ.get("CHAOS_RELAY_INTERVAL", "2")),
        reliable_relay_backoff=0.5,
        reliable_relay_backoff_max=2.0,
        reliable_relay_lease=30.0,
        reliable_outbox_grace=float(os.environ.get("CHAOS_OUTBOX_GRACE", "3")),
        reliable_publish_retries=1,
        reliable_publish_retry_backoff=0.05,
        reliable_publish_timeout=2.0,
        reliable_cleanup_interval=None,
        # off only to show what kombu's own fetch loses (scenario fetch_kill_kombu)
        reliable_redis_atomic_fetch=os.environ.get("CHAOS_ATOMIC_FETCH", "1") == "1",
        # a database outage outlasts the few quick retries a bug deserves
        reliable_outbox_only=PUBLISHING == "outbox",
        reliable_retry_policies={
            "sqlalchemy.exc.OperationalError": {"max_retries": 60, "backoff": 0.2, "backoff_max": 1.0},
        },
    )
    if VT is not None:
        app.conf.reliable_visibility_timeout = VT
    if os.environ.get("CHAOS_HEARTBEAT") == "off":  # as before the heartbeats: only the timeout gives back
        app.conf.reliable_worker_heartbeat = None
# a sentinel:// broker needs master_name, which a URL cannot carry (JSON)
_transport = json.loads(os.environ.get("CHAOS_TRANSPORT_OPTIONS") or "{}")
if _transport:
    app.conf.broker_transport_options = dict(_transport)
if MODE == "plain_tuned":
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1)
    if BROKER.startswith("redis"):
        app.conf.broker_transport_options = {
            **_transport, "unacked_restore_interval": 1.0, "unacked_restore_throttle": 1,
        }  # fmt: skip
        if VT is not None:
            app.conf.broker_transport_options["visibility_timeout"] = VT

_engines: dict[int, Engine] = {}


def engine() -> Engine:
    """This process's engine (a pool process must not reuse its parent's connections)."""
    engine = _engines.get(os.getpid())
    if engine is None:
        engine = _engines[os.getpid()] = create_engine(DB, pool_pre_ping=True)
    return engine


@contextmanager
def session() -> Iterator[Session]:
    """A transaction on the run's database (the library's own engine in reliable mode)."""
    if RELIABLE:
        from celery_reliable.store.engine import get_sessionmaker

        with get_sessionmaker(app).begin() as s:
            yield s
    else:
        with Session(engine()) as s, s.begin():
            yield s


def _start(key: str) -> None:
    with session() as s:
        s.add(Start(key=key, pid=os.getpid(), at=time.time()))


def _effect(task: Any, key: str, record: bool = False) -> None:
    with session() as s:
        s.add(Effect(key=key, task_id=task.request.id or "", pid=os.getpid()))
        if record and RELIABLE:
            task.record_completion(s)


class TransientError(ConnectionError):
    """A failure that goes away when tried again."""


def fails_now(key: str, retries: int) -> bool:
    """Deterministic: about FLAKY_PERCENT% of (key, attempt) pairs fail, never after FLAKY_RETRIES."""
    digest = int(hashlib.sha1(f"{key}:{retries}".encode()).hexdigest(), 16)
    return retries < FLAKY_RETRIES and digest % 100 < FLAKY_PERCENT


#: Plain Celery users retry transient errors themselves; the reliable tasks retry every exception.
#: (``default_retry_delay`` is a task option: Celery reads no app setting for it.)
_plain_retry: dict[str, Any] = (
    {} if RELIABLE else {"autoretry_for": (TransientError,), "max_retries": FLAKY_RETRIES, "retry_backoff": False}
)
_idem: dict[str, Any] = {"idempotent": True} if RELIABLE else {}
_delay: dict[str, Any] = {"default_retry_delay": 0.2}


@app.task(bind=True, name="chaos.work", **_delay)
def work(self: Any, key: str, seconds: float = 0.0) -> None:
    """Not idempotent: every run that finishes writes an effect."""
    _start(key)
    time.sleep(seconds)
    _effect(self, key)


@app.task(bind=True, name="chaos.idem", **_idem, **_delay)
def idem(self: Any, key: str, seconds: float = 0.0) -> None:
    """Idempotent (reliable mode): the effect and the completion record commit together."""
    _start(key)
    time.sleep(seconds)
    _effect(self, key, record=True)


@app.task(bind=True, name="chaos.flaky", **_delay, **_idem, **_plain_retry)
def flaky(self: Any, key: str, seconds: float = 0.0) -> None:
    _start(key)
    time.sleep(seconds)
    if fails_now(key, int(self.request.retries or 0)):
        raise TransientError(f"transient failure of {key} on attempt {self.request.retries}")
    _effect(self, key, record=True)


@app.task(bind=True, name="chaos.poison", **_delay, **_plain_retry)
def poison(self: Any, key: str, seconds: float = 0.0) -> None:
    """Fails on every attempt: it must end as a stored failure."""
    _start(key)
    raise ValueError(f"poison message {key}")


@app.task(bind=True, name="chaos.kill_always", **_delay, **_plain_retry)
def kill_always(self: Any, key: str, seconds: float = 0.0) -> None:
    """Kills the pool process running it, every time."""
    _start(key)
    os.kill(os.getpid(), signal.SIGKILL)


#: Tasks whose message never completes; each must end as a stored failure (reliable mode).
POISON_TASKS = ("chaos.poison", "chaos.kill_always")
