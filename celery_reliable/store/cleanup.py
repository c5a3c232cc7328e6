"""Library tasks that keep the tables small; scheduled by beat (see ``install``)."""

from __future__ import annotations

import logging

from celery import Task, shared_task

from ..config import get_settings
from .pending import purge_sent
from .processed import purge_processed

logger = logging.getLogger(__name__)


@shared_task(name="celery_reliable.cleanup", bind=True, ignore_result=True)
def cleanup(self: Task) -> int:  # type: ignore[type-arg]
    """Delete processed task ids and sent pending rows past their retention."""
    settings = get_settings(self.app)
    removed = purge_processed(self.app, settings.idempotency_retention)
    removed += purge_sent(self.app, settings.pending_retention)
    if removed:
        logger.info("celery_reliable.cleanup removed %d processed ids", removed)
    return removed
