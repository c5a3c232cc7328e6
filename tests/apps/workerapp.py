"""The Celery app that test workers run (``celery -A tests.apps.workerapp worker``).

Configured from environment variables set by the test that starts the worker, so each test
has its own broker database or vhost, queue and SQL database.
"""

from __future__ import annotations

import json
import os
import signal
import time

from celery import Celery

from celery_reliable import PermanentError, RetryPolicy
from celery_reliable.store.engine import get_sessionmaker
from tests.apps.effects import Attempt, Effect

QUEUE = os.environ.get("RELIABLE_TEST_QUEUE", "reliable-test")

app = Celery("workerapp", task_cls="celery_reliable:ReliableTask")
app.conf.update(
    broker_url=os.environ.get("RELIABLE_TEST_BROKER", "redis://127.0.0.1:6379/9"),
    result_backend=None,
    task_default_queue=QUEUE,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    reliable_database_url=os.environ.get("RELIABLE_TEST_DB", "sqlite:///reliable-test.sqlite3"),
    reliable_max_retries=int(os.environ.get("RELIABLE_TEST_MAX_RETRIES", "3")),
    reliable_retry_backoff=float(os.environ.get("RELIABLE_TEST_BACKOFF", "0.2")),
    reliable_retry_backoff_max=2.0,
    reliable_visibility_timeout=float(os.environ.get("RELIABLE_TEST_VT", "600")),
    reliable_restore_interval=float(os.environ.get("RELIABLE_TEST_RESTORE", "10")),
    worker_lost_wait=5,
    worker_send_task_events=True,
)
app.conf.task_default_retry_delay = 0.2
if os.environ.get("RELIABLE_TEST_GC_FREEZE"):
    app.conf.reliable_worker_gc_freeze = os.environ["RELIABLE_TEST_GC_FREEZE"] == "1"
if os.environ.get("RELIABLE_TEST_FLUSH_INTERVAL"):
    _interval = os.environ["RELIABLE_TEST_FLUSH_INTERVAL"]
    app.conf.reliable_idempotency_flush_interval = None if _interval == "none" else float(_interval)
# a sentinel:// broker needs master_name, which a URL cannot carry (JSON)
app.conf.broker_transport_options = json.loads(os.environ.get("RELIABLE_TEST_TRANSPORT_OPTIONS", "{}"))


class TransientError(Exception):
    """Retried under its own policy (one retry, no wait)."""


def _attempt(key: str) -> int:
    with get_sessionmaker(app).begin() as session:
        row = session.get(Attempt, key)
        if row is None:
            row = Attempt(key=key, count=0)
            session.add(row)
        row.count += 1
        return row.count


def _effect(key: str, task_id: str | None) -> None:
    with get_sessionmaker(app).begin() as session:
        session.add(Effect(key=key, task_id=task_id or "", pid=os.getpid()))


@app.task(bind=True, name="t.ok")
def ok(self, key):
    _effect(key, self.request.id)
    return key


@app.task(bind=True, name="t.gc_frozen")
def gc_frozen(self, key):
    """The effect's key names how many objects this pool process has in the permanent generation."""
    import gc

    _effect(f"{key}={gc.get_freeze_count()}", self.request.id)


@app.task(bind=True, name="t.flaky")
def flaky(self, key, fail_times):
    if _attempt(key) <= fail_times:
        raise ConnectionError(f"transient failure for {key}")
    _effect(key, self.request.id)


@app.task(bind=True, name="t.always_fail")
def always_fail(self, key):
    _attempt(key)
    raise ValueError(f"always fails: {key}")


@app.task(bind=True, name="t.permanent")
def permanent(self, key):
    _attempt(key)
    raise PermanentError(f"bad input: {key}")


@app.task(bind=True, name="t.custom_permanent", permanent_exceptions=(KeyError,))
def custom_permanent(self, key):
    _attempt(key)
    raise KeyError(key)


@app.task(bind=True, name="t.policy", retry_policies={TransientError: RetryPolicy(max_retries=1, countdown=0)})
def policy(self, key):
    _attempt(key)
    raise TransientError(key)


@app.task(bind=True, name="t.kill_once")
def kill_once(self, key):
    if _attempt(key) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    _effect(key, self.request.id)


@app.task(bind=True, name="t.kill_always")
def kill_always(self, key):
    _attempt(key)
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(bind=True, name="t.slow")
def slow(self, key, seconds):
    time.sleep(seconds)
    _effect(key, self.request.id)


@app.task(bind=True, name="t.slow_first")
def slow_first(self, key, seconds):
    """Slow on its first run only: a worker killed meanwhile surely held it; the run after is quick."""
    if _attempt(key) == 1:
        time.sleep(seconds)
    _effect(key, self.request.id)


@app.task(bind=True, name="t.hang", time_limit=2)
def hang(self, key):
    _attempt(key)
    time.sleep(30)


@app.task(bind=True, name="t.idem", idempotent=True)
def idem(self, key):
    with get_sessionmaker(app).begin() as session:
        session.add(Effect(key=key, task_id=self.request.id, pid=os.getpid()))
        self.record_completion(session)


@app.task(bind=True, name="t.idem_plain", idempotent=True)
def idem_plain(self, key, seconds=0.0):
    """Idempotent without record_completion: the effect commits on its own, the record after it."""
    time.sleep(seconds)
    _effect(key, self.request.id)


@app.task(bind=True, name="t.idem_slow", idempotent=True)
def idem_slow(self, key, seconds):
    time.sleep(seconds)
    with get_sessionmaker(app).begin() as session:
        session.add(Effect(key=key, task_id=self.request.id, pid=os.getpid()))
        self.record_completion(session)


@app.task(bind=True, name="t.retry_then_ok")
def retry_then_ok(self, key, pause):
    if _attempt(key) == 1:
        time.sleep(pause)
        raise self.retry(countdown=0.5)
    _effect(key, self.request.id)


@app.task(bind=True, name="t.retry_later")
def retry_later(self, key, countdown):
    """Its first run asks for a retry in ``countdown`` seconds (the worker holds it meanwhile)."""
    if _attempt(key) == 1:
        raise self.retry(countdown=countdown)
    _effect(key, self.request.id)


@app.task(bind=True, name="t.fail_then_ok")
def fail_then_ok(self, key):
    """Fails until the key is 'fixed' (by an edited replay)."""
    _attempt(key)
    if not key.endswith("-fixed"):
        raise PermanentError(f"cannot handle {key}")
    _effect(key, self.request.id)


# --- hostile input ---


@app.task(bind=True, name="t.type_error_inside")
def type_error_inside(self, key):
    """A TypeError from the task's own code: an ordinary exception, retried."""
    _attempt(key)
    return len(key, key)  # TypeError: len() takes exactly one argument


@app.task(bind=True, name="t.retry_unencodable")
def retry_unencodable(self, key):
    """Its retry can never be sent: the new arguments cannot be encoded as JSON."""
    _attempt(key)
    raise self.retry(args=[object()], countdown=0.1)


@app.task(bind=True, name="t.retry_always", max_requeues=3)
def retry_always(self, key):
    """Asks for a retry on every run (the broker it publishes to may be down)."""
    _attempt(key)
    raise self.retry(countdown=0.1)


@app.task(bind=True, name="t.requeue_always", max_requeues=3)
def requeue_always(self, key):
    """Hands its message back to the broker on every run."""
    from celery.exceptions import Reject

    _attempt(key)
    raise Reject(f"handing {key} back", requeue=True)


# --- fault tasks ---


@app.task(bind=True, name="t.fault_permanent")
def fault_permanent(self, key):
    """Fails for good without touching the database: storing the failure is its only write."""
    raise PermanentError(f"bad input: {key}")


@app.task(bind=True, name="t.fault_idem_race", idempotent=True)
def fault_idem_race(self, key, seconds):
    """Counts every run that got past the duplicate check (own transaction), then writes its
    effect and its completion record in one transaction."""
    _attempt(key)
    time.sleep(seconds)
    with get_sessionmaker(app).begin() as session:
        session.add(Effect(key=key, task_id=self.request.id, pid=os.getpid()))
        self.record_completion(session)


# A visibility timeout set by the user in broker_transport_options is used as is. The one from
# reliable_visibility_timeout (RELIABLE_TEST_VT) is raised to 62 s here, above t.hang's
# time_limit=2 (celery_reliable.worker.install.fit_visibility_timeout), so fault tests that need a
# short one set RELIABLE_TEST_FAULT_VT.
if os.environ.get("RELIABLE_TEST_FAULT_VT"):
    app.conf.broker_transport_options = {
        "visibility_timeout": float(os.environ["RELIABLE_TEST_FAULT_VT"]),
    }

# Publish to another broker than the one consumed from (Celery's broker_write_url), so a test
# can break publishing (self.retry()) while the worker's consumer connection stays up.
if os.environ.get("RELIABLE_TEST_FAULT_WRITE_BROKER"):
    app.conf.broker_write_url = os.environ["RELIABLE_TEST_FAULT_WRITE_BROKER"]
