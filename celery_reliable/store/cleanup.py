"""Library tasks that keep the tables small; scheduled by beat (see ``install``)."""

from __future__ import annotations

import logging
import time

from celery import Task, shared_task

from ..config import get_settings
from .pending import purge_sent
from .processed import purge_processed

logger = logging.getLogger(__name__)


@shared_task(name="celery_reliable.cleanup", bind=True, ignore_result=True, send_events=False)
def cleanup(self: Task) -> int | None:  # type: ignore[type-arg]
    """Delete processed task ids and sent pending rows past their retention.

    A run deletes oldest first and starts no batch after ``reliable_cleanup_time_limit`` (both
    tables share it), so it does not hold a worker slot for long on a large backlog: the next run
    goes on. Returns None when nothing was deleted (the worker then logs the run at DEBUG); no
    task events unless ``reliable_beat_task_events``.
    """
    settings = get_settings(self.app)
    limit = settings.cleanup_time_limit
    start = time.monotonic()
    removed = purge_processed(self.app, settings.idempotency_retention, time_limit=limit)
    left = None if limit is None else max(0.0, limit - (time.monotonic() - start))
    removed += purge_sent(self.app, settings.pending_retention, time_limit=left)
    if not removed:
        return None
    logger.info("celery_reliable.cleanup removed %d processed ids and sent pending rows", removed)
    return removed
