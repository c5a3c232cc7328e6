"""The worker's half of the delivery ledger: it records the outcome of each message that came from a
pending row (the ledger header), so the row is done and the relay stops looking for it.

The worker's main process notes the task id when the task completed, was skipped as already done,
or had its failure stored (:func:`note`); a thread writes the ids in one UPDATE every
:data:`FLUSH_INTERVAL` seconds and at shutdown, off the tasks' path. A worker killed before its
next write loses the notes of the last fraction of a second: the relay then finds those messages
gone from the broker with no outcome, and sends them again (an idempotent task skips them).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from celery import Celery, bootsteps

from ..broker.facts import REDIS_SCHEMES, broker_scheme
from ..config import get_settings
from ..message.prepare import LEDGER_HEADER
from ..store.ledger import check_after_retry, mark_done
from ..store.models import utcnow

logger = logging.getLogger(__name__)

#: Seconds between writes of the outcomes noted.
FLUSH_INTERVAL = 0.5
#: Outcomes kept while the database cannot be written (beyond: the oldest go; the relay resends them).
MAX_KEPT = 100_000


def carries_ledger(headers: Any) -> bool:
    """Whether a message's headers (or a request's) say it came from a pending row."""
    return isinstance(headers, Mapping) and headers.get(LEDGER_HEADER) == 1


class Outcomes:
    """Task ids whose outcome is reached, written in batches by a thread of their own."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.ids: list[str] = []
        #: task id -> when the relay may look for it again (a retry of it was sent)
        self.retries: dict[str, datetime] = {}
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        self.failing = False

    def note(self, task_id: str) -> None:
        with self.lock:
            self.ids.append(task_id)
            if len(self.ids) > MAX_KEPT:
                del self.ids[: len(self.ids) - MAX_KEPT]
            self._running()

    def note_retry(self, task_id: str, due: datetime) -> None:
        with self.lock:
            if len(self.retries) < MAX_KEPT:
                self.retries[task_id] = due
            self._running()

    def _running(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._run, name="celery_reliable-ledger", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            self.stopped.wait(FLUSH_INTERVAL)
            self.flush()

    def flush(self) -> int:
        """Write the outcomes noted so far; kept for the next try if the database is away."""
        with self.lock:
            ids, self.ids = self.ids, []
            retries, self.retries = self.retries, {}
        if not ids and not retries:
            return 0
        try:
            check_after_retry(self.app, list(retries.items()))
            retries = {}
            done = mark_done(self.app, ids)
        except Exception as exc:
            with self.lock:
                self.ids[:0] = ids
                self.retries = {**retries, **self.retries}
            if not self.failing:
                logger.warning("celery_reliable: %d task outcome(s) not recorded yet (%r); trying again", len(ids), exc)
            self.failing = True
            return 0
        self.failing = False
        return done

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.flush()


_outcomes: weakref.WeakKeyDictionary[Celery, Outcomes] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def outcomes(app: Celery) -> Outcomes:
    with _lock:
        found = _outcomes.get(app)
        if found is None:
            found = _outcomes[app] = Outcomes(app)
        return found


def note(app: Celery, task_id: Any, headers: Any) -> None:
    """Note the outcome of ``task_id`` if its message came from a pending row."""
    if task_id and carries_ledger(headers):
        outcomes(app).note(str(task_id))


def note_retry(app: Celery, task_id: Any, headers: Any, delay: float) -> None:
    """A retry of ``task_id`` was sent to run in ``delay`` seconds: if its message came from a pending
    row, the relay's next look for that row's message is put off until the retry is due plus
    ``reliable_reconcile_after`` (the retry is another message, under another delivery tag, which a
    worker may hold until its countdown ends; the row's own message is gone by design)."""
    if not (task_id and carries_ledger(headers)):
        return
    settings = get_settings(app)
    redis = broker_scheme(app) in REDIS_SCHEMES
    after = (settings.reconcile_after if redis else settings.reconcile_rabbitmq_after) or 0.0
    due = utcnow() + timedelta(seconds=max(0.0, float(delay)) + after)
    outcomes(app).note_retry(str(task_id), due)


def retry_delay(exc: Any) -> float:
    """Seconds until a retry is due, from Celery's ``Retry`` (``when``: a countdown or an eta)."""
    when = getattr(exc, "when", None)
    if isinstance(when, datetime):
        now = datetime.now(when.tzinfo) if when.tzinfo else datetime.now()
        return max(0.0, (when - now).total_seconds())
    if isinstance(when, int | float):
        return max(0.0, float(when))
    return 0.0


class LedgerStep(bootsteps.StartStopStep):
    """Consumer step: the outcomes noted are written before the worker stops."""

    name = "celery_reliable.ledger"

    def shutdown(self, c: Any) -> None:
        found = _outcomes.get(c.app)
        if found is not None:
            found.stop()
