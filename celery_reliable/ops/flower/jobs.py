"""Bulk actions of the Reliability page, run in the background in batches.

"Replay all" over ten thousand rows takes half a minute (each row is claimed, sent and marked on
its own, so no row is ever sent twice). Done inside the request, that blocks the form and times
out proxies; so a bulk action is a job: the request starts it and returns at once, a thread of
the Flower process works through the rows a batch at a time, and the page shows its progress.
One job runs at a time per Flower process. No tornado here: plain threads and the store.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

from celery import Celery
from sqlalchemy import Select, func, select

from ...exceptions import ReliableError, ReplayError
from ...send.replay import replay
from ...store.failures import FailureFilter, purge_failures, session_scope
from ...store.models import FailedTask

logger = logging.getLogger(__name__)

#: Rows read and worked through per batch (one short query each, progress updated after each).
BATCH = 200
#: Errors kept for the page (the count covers all of them).
KEPT_ERRORS = 10
#: A replay job stops after this many failed rows in a row (the broker is down: every send would
#: wait for its timeout); the rows stay ``failed`` for a later try.
MAX_ERRORS_IN_A_ROW = 20


class Busy(ReliableError):
    """Another bulk action of this Flower process is still running."""


@dataclass(frozen=True)
class Progress:
    """What a job has done so far (a copy: safe to read from any thread)."""

    action: str
    total: int
    done: int = 0
    succeeded: int = 0
    error_count: int = 0
    errors: tuple[str, ...] = ()
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    stopped: str = ""

    @property
    def running(self) -> bool:
        return self.finished_at is None

    def as_dict(self) -> dict[str, object]:
        return {
            "action": self.action, "total": self.total, "done": self.done, "succeeded": self.succeeded,
            "error_count": self.error_count, "errors": list(self.errors), "running": self.running,
            "started_at": self.started_at, "finished_at": self.finished_at, "stopped": self.stopped,
        }  # fmt: skip


def _next_ids(app: Celery, selected: FailureFilter, after: int, last: int) -> list[int]:
    """The next batch of selected row ids above ``after``, up to the highest id at the start."""
    query = selected.apply(select(FailedTask.id)).where(FailedTask.id > after, FailedTask.id <= last)
    with session_scope(app) as session:
        return [int(i) for i in session.execute(query.order_by(FailedTask.id).limit(BATCH)).scalars()]


def _scope(app: Celery, selected: FailureFilter) -> tuple[int, int]:
    """How many rows match now, and the highest id among them (rows written later are left out)."""
    counted = select(func.count(), func.max(FailedTask.id)).select_from(FailedTask)
    query = selected.apply(cast("Select[Any]", counted))
    with session_scope(app) as session:
        count, highest = session.execute(query).one()
    return int(count), int(highest or 0)


class Job:
    """One bulk replay or purge over the rows ``selected`` matched when it started."""

    def __init__(self, app: Celery, action: str, selected: FailureFilter) -> None:
        if action not in ("replay", "purge"):
            raise ValueError(f"unknown bulk action {action!r}")
        self.app = app
        self.selected = selected
        self._lock = threading.Lock()
        self._stop = threading.Event()
        total, self._last_id = _scope(app, selected)
        self._progress = Progress(action, total)
        self._thread = threading.Thread(target=self._run, name=f"reliable-{action}-all", daemon=True)

    def start(self) -> Job:
        self._thread.start()
        return self

    def progress(self) -> Progress:
        with self._lock:
            return self._progress

    def stop(self, wait: float = 0.0) -> None:
        """Ask the job to stop after the row it is on; wait up to ``wait`` seconds for it."""
        self._stop.set()
        if wait and self._thread.is_alive():
            self._thread.join(wait)

    def _update(self, **changes: object) -> None:
        with self._lock:
            self._progress = replace(self._progress, **changes)  # type: ignore[arg-type]

    def _error(self, message: str) -> None:
        with self._lock:
            p = self._progress
            kept = p.errors if len(p.errors) >= KEPT_ERRORS else (*p.errors, message[:300])
            self._progress = replace(p, done=p.done + 1, error_count=p.error_count + 1, errors=kept)

    def _run(self) -> None:
        try:
            stopped = self._work()
        except ReliableError as exc:  # the database went away: what is done is done, the rest waits
            logger.warning("celery_reliable: %s all stopped: %s", self._progress.action, exc)
            stopped = "stopped: the celery_reliable store could not be read or written (the Flower log says why)"
        except Exception:
            logger.exception("celery_reliable: %s all failed", self._progress.action)
            stopped = "stopped by an unexpected error (the Flower log has the traceback)"
        self._update(finished_at=time.time(), stopped=stopped)

    def _work(self) -> str:
        after = 0
        replaying = self._progress.action == "replay"
        step: Callable[[list[int]], str] = self._replay_batch if replaying else self._purge_batch
        for _ in range(self._last_id + 1):  # ids only grow, so this ends by itself long before
            if self._stop.is_set():
                return "stopped: Flower is shutting down"
            ids = _next_ids(self.app, self.selected, after, self._last_id)
            if not ids:
                return ""
            stopped = step(ids)
            if stopped:
                return stopped
            after = ids[-1]
        return ""

    def _purge_batch(self, ids: list[int]) -> str:
        deleted = purge_failures(self.app, FailureFilter(ids=ids))
        with self._lock:
            p = self._progress
            self._progress = replace(p, done=p.done + len(ids), succeeded=p.succeeded + deleted)
        return ""

    def _replay_batch(self, ids: list[int]) -> str:
        in_a_row = 0
        for failure_id in ids:
            if self._stop.is_set():
                return "stopped: Flower is shutting down"
            try:
                replay(self.app, failure_id)
            except ReplayError as exc:
                self._error(str(exc))
                in_a_row += 1
                if in_a_row >= MAX_ERRORS_IN_A_ROW:
                    return f"stopped after {in_a_row} rows in a row could not be replayed; the rest stay failed"
                continue
            in_a_row = 0
            with self._lock:
                p = self._progress
                self._progress = replace(p, done=p.done + 1, succeeded=p.succeeded + 1)
        return ""


class Jobs:
    """The bulk action of one Flower process: the running one, or the last one finished."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current: Job | None = None

    def start(self, app: Celery, action: str, selected: FailureFilter) -> Job:
        """Start a job over the rows ``selected`` matches now.

        Raises:
            Busy: a job is still running.
            StoreError: the rows cannot be counted.
        """
        with self._lock:
            if self.current is not None and self.current.progress().running:
                p = self.current.progress()
                raise Busy(f"a {p.action} of all matching rows is still running ({p.done} of {p.total} done)")
            self.current = Job(app, action, selected).start()
            return self.current

    def progress(self) -> Progress | None:
        current = self.current
        return current.progress() if current is not None else None

    def stop(self, wait: float = 5.0) -> None:
        current = self.current
        if current is not None:
            current.stop(wait)


_jobs: weakref.WeakKeyDictionary[Any, Jobs] = weakref.WeakKeyDictionary()
_jobs_lock = threading.Lock()


def jobs_of(application: Any) -> Jobs:
    """The jobs of one Flower application (created on first use; stopped when the process exits)."""
    with _jobs_lock:
        jobs = _jobs.get(application)
        if jobs is None:
            jobs = _jobs[application] = Jobs()
            atexit.register(jobs.stop)
        return jobs
