"""A worker consumer that stores messages Celery would drop before it drops them, and that
fetches from Redis atomically.

Celery rejects (Redis: deletes) a message whose task name is unknown or which is invalid, and
acknowledges one it cannot decode. Here the raw message is written to the failed-task table
first; if that write fails the message goes back to the broker instead. On Redis, the consuming
connection uses :mod:`celery_reliable.redis_fetch`. Installed through Celery's own
``worker_consumer`` setting when that is left at its default.
"""

from __future__ import annotations

import base64
import logging
import uuid
from typing import Any

from celery.worker.consumer import Consumer
from kombu.message import Message

from . import events
from .config import get_settings
from .install import atomic_fetch
from .redis_fetch import fetch_connection
from .store.failures import FailureRecord, record_failure

logger = logging.getLogger(__name__)

#: Pause after a failed store before the message is handed back, so a database outage does not
#: turn into a tight redelivery loop.
REQUEUE_PAUSE = 1.0


def _body(message: Message) -> Any:
    body: Any = message.body
    if isinstance(body, bytes):
        try:
            return {"text": body.decode("utf-8")}
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(body).decode("ascii")}
    return {"text": str(body)}


def raw_record(message: Message, reason: str, exc: BaseException | None, name: str | None) -> FailureRecord:
    """A failure record holding the whole message, for a message that reached no task."""
    headers = dict(message.headers or {})
    args: Any = None
    kwargs: Any = None
    try:
        payload = message.decode()
        if isinstance(payload, list | tuple) and len(payload) == 3:
            args, kwargs = list(payload[0]), dict(payload[1])
    except Exception:
        payload = None
    delivery = message.delivery_info or {}
    return FailureRecord(
        task_id=str(headers.get("id") or f"raw-{uuid.uuid4()}"),
        task_name=str(name or headers.get("task") or "<unknown>"),
        reason=reason,
        args=args,
        kwargs=kwargs,
        options={
            "exchange": delivery.get("exchange"),
            "routing_key": delivery.get("routing_key"),
            "parent_id": headers.get("parent_id"),
            "root_id": headers.get("root_id"),
        },
        raw_message={
            "headers": headers,
            "properties": dict(message.properties or {}),
            "delivery_info": {k: v for k, v in delivery.items() if isinstance(v, str | int | bool)},
            "content_type": message.content_type,
            "content_encoding": message.content_encoding,
            "body": _body(message),
        },
        exc_type=type(exc).__name__ if exc is not None else "",
        exc_message=str(exc) if exc is not None else "",
    )


def _requeue(message: Message) -> None:
    try:
        message.reject(requeue=True)
    except Exception:
        logger.exception("Could not requeue message; it stays unacknowledged until redelivered")


class ReliableConsumer(Consumer):
    """Stores unknown, invalid and undecodable messages before rejecting them."""

    event_dispatcher: Any  # set by Celery's Events bootstep
    timer: Any

    def connection_for_read(self, heartbeat: float | None = None) -> Any:
        """The consuming connection; on Redis with the atomic fetch (``reliable_redis_atomic_fetch``)."""
        transport = atomic_fetch(self.app)
        if transport is None:
            return super().connection_for_read(heartbeat)
        connection = fetch_connection(self.app.connection_for_read(heartbeat=heartbeat), transport)
        return self.ensure_connected(connection)

    def _store_raw(self, message: Message, reason: str, exc: BaseException | None, name: str | None = None) -> bool:
        if not get_settings(self.app).store_unknown_messages:
            return True  # Celery's own handling
        try:
            failure = raw_record(message, reason, exc, name)
            row_id = record_failure(self.app, failure)
        except Exception as store_exc:
            logger.error(
                "Message %s (%s) could not be stored (%s); returned to the broker",
                (message.headers or {}).get("id"), reason, store_exc,
            )  # fmt: skip
            # Hand it back after a pause, without blocking the worker's event loop.
            self.timer.call_after(REQUEUE_PAUSE, _requeue, (message,))
            return False
        logger.error("Message %s (%s) stored as failed task %d", failure.task_id, reason, row_id)
        if self.event_dispatcher is not None and self.event_dispatcher.enabled:
            try:
                self.event_dispatcher.send(events.MESSAGE_STORED, uuid=failure.task_id, reason=reason)
            except Exception:
                logger.warning("Could not send %s", events.MESSAGE_STORED, exc_info=True)
        return True

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        name = (message.headers or {}).get("task")
        if self._store_raw(message, "unknown_task", exc, name):
            super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        if self._store_raw(message, "invalid_message", exc):
            super().on_invalid_task(body, message, exc)

    def on_unknown_message(self, body: Any, message: Message) -> None:
        if self._store_raw(message, "unknown_message", None):
            super().on_unknown_message(body, message)

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        if self._store_raw(message, "decode_error", exc):
            super().on_decode_error(message, exc)
