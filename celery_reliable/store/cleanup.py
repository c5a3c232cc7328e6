"""Library tasks that keep the tables small; scheduled by beat (see ``install``)."""

from __future__ import annotations

import logging

from celery import Task, shared_task

from ..config import get_settings
from .pending import purge_sent
from .processed import purge_processed

logger = logging.getLogger(__name__)


@shared_task(name="celery_reliable.cleanup", bind=True, ignore_result=True, send_events=False)
def cleanup(self: Task) -> int | None:  # type: ignore[type-arg]
    """Delete processed task ids and sent pending rows past their retention.

    Returns None when nothing was deleted (the worker then logs the run at DEBUG); no task
    events unless ``reliable_beat_task_events``.
    """
    settings = get_settings(self.app)
    removed = purge_processed(self.app, settings.idempotency_retention)
    removed += purge_sent(self.app, settings.pending_retention)
    if not removed:
        return None
    logger.info("celery_reliable.cleanup removed %d processed ids and sent pending rows", removed)
    return removed
