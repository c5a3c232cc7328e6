"""The retry of a run whose pool process was lost (or hit its hard time limit), on Celery before 5.7.

Celery 5.7 sends that retry itself (``retry_on_worker_lost``); before it, Celery would requeue the
message as it is, uncounted and unbounded. :func:`send_lost_retry` does what 5.7 does, from the
worker's main process: the new message carries ``retries + 1``, and the original is acknowledged
only once the retry is with the broker.
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.einfo import ExceptionInfo
from celery import signals
from celery.exceptions import Retry
from celery.utils.saferepr import saferepr

logger = logging.getLogger(__name__)


def send_lost_retry(request: Any, exc: BaseException, exc_info: ExceptionInfo, countdown: float) -> bool:
    """Celery before 5.7: send the retry of a lost or timed-out run ourselves.

    The new message carries ``retries + 1``, so the bound holds; the original is acknowledged
    only once the retry is with the broker. Returns False when it could not be sent.
    """
    task: Any = request.task
    context = request._context
    try:
        retries = int(context.retries or 0) + 1
        task.signature_from_request(context, countdown=countdown, retries=retries).apply_async()
    except Exception as send_exc:
        logger.error(
            "Task %s[%s]: retry after a lost worker could not be sent (%r)", request.name, request.id, send_exc
        )
        return False
    if request.store_errors:
        task.backend.mark_as_retry(request.id, exc, exc_info.traceback, request=context)
    if task.acks_late:
        request.acknowledge()
    request.send_event("task-retried", exception=saferepr(exc), traceback=str(exc_info.traceback or ""))
    task.request_stack.push(context)
    try:
        task.on_retry(exc, request.id, request.args, request.kwargs, exc_info)
        signals.task_retry.send(
            sender=task,
            request=context,
            reason=Retry(exc=exc, when=countdown),  # type: ignore[arg-type]
            einfo=exc_info,
        )
    finally:
        task.request_stack.pop()
    logger.info("Task %s[%s] retry %d after %r in %.1fs", request.name, request.id, int(context.retries or 0) + 1,
                exc, countdown)  # fmt: skip
    return True
