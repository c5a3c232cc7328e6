"""Prometheus metrics read from the reliability tables at scrape time.

The tables are the one place every process writes to (workers, relays, replays from any host),
so gauges computed from them are exact cluster-wide, whichever process serves them: Flower's
``/metrics`` (when the Reliability page is loaded) or a text file written by
``celery -A proj reliable metrics --output`` for node_exporter's textfile collector.
Counters of events (failures stored, replays, retries) are Flower's own
``flower_events_total{type=...}``: Flower receives every worker's events.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from celery import Celery
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select

from ..exceptions import ReliableError
from ..store.failures import session_scope
from ..store.models import FailureStatus, PendingMessage
from ..text import printable
from .status import Summary, pending_statuses, summary

logger = logging.getLogger(__name__)

PREFIX = "celery_reliable"
#: Seconds a scrape result is reused: scrapes from several Prometheus servers cost one query set.
DEFAULT_CACHE_SECONDS = 5.0
#: Longest reuse accepted: metrics older than this would hide what is happening now.
MAX_CACHE_SECONDS = 3600.0


@dataclass(frozen=True)
class Snapshot:
    """What one scrape reads: the summary and the failed send attempts per pending status."""

    summary: Summary
    send_failures: dict[str, int]


def send_failures(app: Celery) -> dict[str, int]:
    """Failed send attempts recorded on the pending rows still in the table, by row status.

    A row's ``attempts`` counts the relay's failed sends of it (a successful send adds none).
    """
    with session_scope(app) as session:
        rows = session.execute(
            select(PendingMessage.status, func.coalesce(func.sum(PendingMessage.attempts), 0)).group_by(
                PendingMessage.status
            )
        ).all()
    counts = dict.fromkeys(pending_statuses(), 0)
    counts.update({str(status): int(total) for status, total in rows})
    return counts


def snapshot(app: Celery) -> Snapshot:
    """Read everything the metrics show (four grouped queries)."""
    return Snapshot(summary(app), send_failures(app))


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))


def _up() -> GaugeMetricFamily:
    return _gauge("up", "1 if the reliability tables could be read at the last scrape, else 0.")


def _labels(counts: dict[str, int]) -> dict[str, int]:
    """Counts keyed by label value: control characters of stored names escaped (the text stays safe to
    print), and names that become equal summed (a series appears once)."""
    labelled: dict[str, int] = {}
    for name, count in counts.items():
        label = printable(name)
        labelled[label] = labelled.get(label, 0) + count
    return labelled


def families(snap: Snapshot | None) -> list[Metric]:
    """The metric families of ``snap``; ``None`` gives the families without samples (describe)."""
    up = _up()
    pending = _gauge("pending_messages", "Rows in the pending-message table, by status.", ["status"])
    oldest = _gauge(
        "oldest_pending_age_seconds",
        "Age of the oldest pending or claimed (not yet sent) message; 0 when there is none.",
    )
    attempts = _gauge(
        "pending_send_failures",
        "Failed send attempts recorded on pending rows still in the table, by row status.",
        ["status"],
    )
    by_task = _gauge("failed_tasks", "Failed tasks waiting for a replay or a purge, by task name.", ["task"])
    by_exc = _gauge(
        "failed_tasks_by_exception", "Failed tasks waiting for a replay or a purge, by exception type.", ["exception"]
    )
    by_status = _gauge("failed_task_rows", "Rows in the failed-task table, by status.", ["status"])
    replayed = _gauge("replayed_tasks", "Failed tasks that were replayed (rows still in the table).")
    processed = _gauge("processed_task_ids", "Completed task ids kept to skip duplicate runs of idempotent tasks.")
    attention = _gauge("attention", "Number of conditions that need a person (0 when healthy).")
    result: list[Metric] = [
        up, pending, oldest, attempts, by_task, by_exc, by_status, replayed, processed, attention,
    ]  # fmt: skip
    if snap is None:
        return result
    s = snap.summary
    up.add_metric([], 1)
    for status, count in s.pending.items():
        pending.add_metric([status], count)
    oldest.add_metric([], s.oldest_pending_age or 0.0)
    for status, count in snap.send_failures.items():
        attempts.add_metric([status], count)
    for task, count in _labels(s.failed_by_task).items():
        by_task.add_metric([task], count)
    for exc, count in _labels(s.failed_by_exception).items():
        by_exc.add_metric([exc], count)
    for status in FailureStatus.ALL:
        by_status.add_metric([status], s.failed_by_status.get(status, 0))
    replayed.add_metric([], s.replayed)
    processed.add_metric([], s.processed_ids)
    attention.add_metric([], len(s.attention))
    return result


class ReliableCollector:
    """A Prometheus collector that reads the tables when scraped, reusing a result for a few seconds.

    A database error does not fail the scrape: ``celery_reliable_up`` becomes 0 (alert on it).
    """

    def __init__(self, app: Celery, cache_seconds: float = DEFAULT_CACHE_SECONDS) -> None:
        if not (math.isfinite(cache_seconds) and 0 <= cache_seconds <= MAX_CACHE_SECONDS):
            raise ValueError(f"cache_seconds must be a number from 0 to {MAX_CACHE_SECONDS:g}, got {cache_seconds!r}")
        self.app = app
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, Snapshot | None] | None = None  # a failed reading is reused too
        #: Why the last reading failed (masked URL, cause, fix); None after a good one.
        self.last_error: str | None = None

    def describe(self) -> list[Metric]:
        """The metric names, without touching the database (used when registering)."""
        return families(None)

    def read(self) -> Snapshot | None:
        """The current snapshot (cached), or ``None`` when the database cannot be read."""
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.cache_seconds:
                return self._cached[1]
            try:
                snap = snapshot(self.app)
            except ReliableError as exc:
                logger.warning("celery_reliable metrics: %s", exc)
                self._failed(now, str(exc))
                return None
            except Exception as exc:  # a row the code did not expect must not fail the whole scrape
                logger.exception("celery_reliable metrics: reading the tables failed")
                self._failed(now, f"{type(exc).__name__}: {exc}")
                return None
            self._cached = (now, snap)
            self.last_error = None
            return snap

    def _failed(self, now: float, reason: str) -> None:
        self._cached = (now, None)
        self.last_error = reason

    def collect(self) -> Iterator[Metric]:
        snap = self.read()
        if snap is None:
            up = _up()
            up.add_metric([], 0)
            yield up
            return
        yield from families(snap)


def register(
    app: Celery, registry: CollectorRegistry = REGISTRY, cache_seconds: float = DEFAULT_CACHE_SECONDS
) -> ReliableCollector:
    """Add a :class:`ReliableCollector` for ``app`` to ``registry`` (Prometheus' default one)."""
    collector = ReliableCollector(app, cache_seconds)
    registry.register(collector)
    return collector


def read_once(app: Celery) -> tuple[CollectorRegistry, str | None]:
    """A registry holding one reading of the tables, and why the database could not be read
    (``None`` if it could; the registry then holds only ``celery_reliable_up 0``)."""
    registry = CollectorRegistry(auto_describe=True)
    collector = register(app, registry, cache_seconds=MAX_CACHE_SECONDS)
    collector.read()
    return registry, collector.last_error


def exposition(app: Celery) -> tuple[bytes, bool]:
    """The metrics in Prometheus' text format, read now; False if the database could not be read
    (the text then holds ``celery_reliable_up 0``)."""
    registry, error = read_once(app)
    return generate_latest(registry), error is None


def write_textfile(app: Celery, path: str) -> bool:
    """Write the metrics to ``path`` atomically (a temporary file renamed over it).

    node_exporter's textfile collector reads ``*.prom`` files; it never sees a half-written one.
    Returns False if the database could not be read (the file then says ``celery_reliable_up 0``).
    """
    registry, error = read_once(app)
    write_to_textfile(path, registry)
    return error is None
