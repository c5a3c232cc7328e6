"""Events that make reliability transitions visible in Flower.

They are sent only after the task's terminal state (FAILURE) has been announced: Flower ranks
an unknown event state below SUCCESS/FAILURE, so it never hides the real state, and it counts
every ``task-*`` event type in ``flower_events_total``.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

#: A final failure was written to the failed-task table.
FAILURE_STORED = "task-reliable-failure-stored"
#: A failed task was sent again (the event's ``uuid`` is the new delivery).
REPLAYED = "task-reliable-replayed"
#: A message that reached no task (unknown name, invalid) was stored.
MESSAGE_STORED = "task-reliable-message-stored"
#: The relay sent a pending message (the event's ``uuid`` is its original task id).
RESENT = "task-reliable-resent"


def send_from_request(request: Any, event_type: str, **fields: Any) -> None:
    """Send an event through the worker's own dispatcher (in order after ``task-failed``)."""
    from .config import get_settings

    try:
        if not get_settings(request.task.app).failure_events:
            return
        request.send_event(event_type, **fields)
    except Exception:
        logger.warning("Could not send %s for %s", event_type, request.id, exc_info=True)


def send_from_app(app: Any, event_type: str, uuid: str, hostname: str | None = None, **fields: Any) -> None:
    """Send an event from outside a worker (replay API, CLI); never raises."""
    try:
        with app.events.default_dispatcher(hostname=hostname) as dispatcher:
            dispatcher.send(event_type, uuid=uuid, **fields)
    except Exception:
        logger.warning("Could not send %s for %s", event_type, uuid, exc_info=True)


def send_resent(app: Any, rows: Any) -> None:
    """One ``task-reliable-resent`` per message the relay sent, on one dispatcher; never raises.

    Sent only where task events are on (``worker_send_task_events``, what Flower needs), so a
    relay without Flower does not pay for them.
    """
    from .config import get_settings

    if not rows or not app.conf.worker_send_task_events or not get_settings(app).failure_events:
        return
    try:
        with app.events.default_dispatcher() as dispatcher:
            for row in rows:
                dispatcher.send(RESENT, uuid=row.task_id, name=row.task_name, pending_id=row.id)
    except Exception:
        logger.warning("Could not send %s for %d message(s)", RESENT, len(rows), exc_info=True)
