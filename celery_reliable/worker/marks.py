"""Completion records of idempotent tasks, written in batches by a thread of each process.

A task that returned hands its id to this process's writer and is acknowledged at once; the
writer waits ``reliable_idempotency_flush_interval`` for more ids and writes them all in one
statement. The record only matters to a later delivery of the same id, and until it is written
a delivery to this same process is still recognised (:func:`holds`). What a process killed
before its writer wrote is forgotten: a later duplicate of one of those ids runs again
(docs/guarantees.md). A pool process that ends normally (warm shutdown, ``max_tasks_per_child``)
writes what waits first (:func:`flush_all`, from ``worker_process_shutdown``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from datetime import datetime

from celery import Celery

from ..store.models import utcnow
from ..store.processed import mark_processed_many

logger = logging.getLogger(__name__)

#: Most ids in one INSERT.
BATCH = 1000
#: Ids waiting beyond which the task that adds one writes them itself (a slow or absent
#: database): memory stays bounded and the task fails as if its record had been synchronous.
MAX_WAITING = 20_000
#: Longest pause of the writer after failed writes, seconds.
BACKOFF_MAX = 5.0

#: A waiting record: (task name, completion time), by task id.
_Mark = tuple[str, datetime]


class _Writer:
    """The ids of one app waiting in this process, and the thread that writes them."""

    def __init__(self, app: Celery, interval: float) -> None:
        self.app = app
        self.interval = interval
        self.pid = os.getpid()
        self.lock = threading.Lock()  # guards the two dicts
        self.writing_lock = threading.Lock()  # one write at a time
        self.waiting: dict[str, _Mark] = {}
        self.writing: dict[str, _Mark] = {}
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    def add(self, task_id: str, task_name: str) -> None:
        with self.lock:
            self.waiting[task_id] = (task_name, utcnow())
            waiting = len(self.waiting)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="celery_reliable.marks", daemon=True)
                self.thread.start()
        if waiting == 1:
            self.wake.set()
        elif waiting >= MAX_WAITING:
            self.flush()

    def holds(self, task_id: str) -> bool:
        return task_id in self.waiting or task_id in self.writing

    def flush(self) -> int:
        """Write every waiting id now; raises :class:`~celery_reliable.StoreError` (kept waiting)."""
        with self.writing_lock:
            with self.lock:
                if not self.waiting:
                    return 0
                self.writing, self.waiting = self.waiting, {}
            marks = [(task_id, name, when) for task_id, (name, when) in self.writing.items()]
            try:
                for start in range(0, len(marks), BATCH):
                    mark_processed_many(self.app, marks[start : start + BATCH])
            except BaseException:
                with self.lock:  # written again with the next batch (duplicates are ignored)
                    self.waiting = {**self.writing, **self.waiting}
                raise
            finally:
                self.writing = {}
            return len(marks)

    def _run(self) -> None:
        failures = 0
        while True:
            self.wake.wait()
            time.sleep(self.interval)  # let more ids gather
            self.wake.clear()
            try:
                self.flush()
                failures = 0
            except Exception as exc:
                failures += 1
                pause = min(self.interval * 2**failures + 0.1, BACKOFF_MAX)
                logger.warning(
                    "celery_reliable: %d completion record(s) could not be written (%s); retrying in %.1fs",
                    len(self.waiting), exc, pause,
                )  # fmt: skip
                self.wake.set()
                time.sleep(pause)


_writers: weakref.WeakKeyDictionary[Celery, _Writer] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def add(app: Celery, task_id: str, task_name: str, interval: float) -> None:
    """Record ``task_id`` as completed within ``interval`` seconds (after the acknowledgement)."""
    writer = _writers.get(app)
    if writer is None or writer.pid != os.getpid():
        with _lock:
            writer = _writers.get(app)
            if writer is None or writer.pid != os.getpid():  # a forked child starts empty
                writer = _writers[app] = _Writer(app, interval)
    writer.add(task_id, task_name)


def holds(app: Celery, task_id: str) -> bool:
    """True if ``task_id`` completed in this process and its record is not written yet."""
    writer = _writers.get(app)
    return writer is not None and writer.pid == os.getpid() and writer.holds(task_id)


def flush_all(**_: object) -> None:
    """Write what waits in this process, for every app (a process about to end)."""
    for writer in list(_writers.values()):
        if writer.pid != os.getpid():
            continue
        for attempt in (1, 2, 3):
            try:
                writer.flush()
                break
            except Exception as exc:
                if attempt == 3:
                    logger.error(
                        "celery_reliable: %d completion record(s) lost at process exit (%s); "
                        "a later duplicate of those task ids will run again",
                        len(writer.waiting), exc,
                    )  # fmt: skip
                else:
                    time.sleep(0.5)
