"""A worker consumer that stores messages Celery would drop before it drops them, that survives
any message, and that fetches from Redis atomically.

Celery rejects (Redis: deletes) a message whose task name is unknown or which is invalid, and
acknowledges one it cannot decode. Here the raw message is written to the failed-task table
first; if that write fails (the database is away) the message goes back to the broker instead,
after a pause. A message that makes Celery's own handling raise (a ``task`` header that is a list,
a body that is not the protocol's 3-tuple...) would otherwise stop the worker: it is stored the
same way (``invalid_message``) and acknowledged. On Redis, the consuming connection uses
:mod:`celery_reliable.broker.redis_fetch`, whose quarantined entries (not messages at all) are stored
here too (``undecodable``). Installed through Celery's own ``worker_consumer`` setting when that
is left at its default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery.worker import state
from celery.worker.consumer import Consumer
from kombu.message import Message

from .. import events
from ..broker.redis_fetch import fetch_connection
from ..broker.redis_liveness import new_worker_id
from ..config import get_settings
from ..exceptions import StoreError
from ..store.failures import FailureRecord
from . import ledger, requeue
from .failure_store import store
from .install import atomic_fetch
from .raw import REASON_UNDECODABLE, entry_record, message_record

logger = logging.getLogger(__name__)

#: Pause after a failed store before the message is handed back, so a database outage does not
#: turn into a tight redelivery loop.
REQUEUE_PAUSE = 1.0
#: Reason of a message that made Celery's own handling raise.
REASON_INVALID = "invalid_message"


def raw_record(message: Message, reason: str, exc: BaseException | None, name: str | None) -> FailureRecord:
    """A failure record holding the whole message, for a message that reached no task."""
    return message_record(message, reason, exc, name, trust_id=reason == "unknown_task")


def _requeue(message: Message) -> None:
    try:
        message.reject(requeue=True)
    except Exception:
        logger.exception("Could not requeue message; it stays unacknowledged until redelivered")


def io_errors(errors: tuple[type[BaseException], ...]) -> tuple[type[BaseException], ...]:
    """A transport's connection errors that really are about the connection.

    kombu counts ``KeyError`` among Redis's connection errors (a stale file descriptor); raised by
    Celery's handling of a message that lacks a header, it would make the worker reconnect and
    hand the same message back, again and again.
    """
    return tuple(error for error in errors if not issubclass(error, LookupError))


def _message_id(message: Message) -> Any:
    try:
        headers = message.headers
        return headers.get("id") if isinstance(headers, dict) else None
    except Exception:
        return None


class ReliableConsumer(Consumer):
    """Stores unknown, invalid and undecodable messages before rejecting them; never stops on one."""

    event_dispatcher: Any  # set by Celery's Events bootstep
    timer: Any
    controller: Any
    connection_errors: tuple[type[BaseException], ...]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        requeue.use_timer(self.timer)  # paced hand-backs of ReliableRequest, off the event loop

    def connection_for_read(self, heartbeat: float | None = None) -> Any:
        """The consuming connection; on Redis with the atomic fetch (``reliable_redis_atomic_fetch``)."""
        transport = atomic_fetch(self.app)
        if transport is None:
            return super().connection_for_read(heartbeat)
        connection = fetch_connection(self.app.connection_for_read(heartbeat=heartbeat), transport)
        connection.reliable_quarantine_handler = self.store_quarantined
        if get_settings(self.app).worker_heartbeat is not None:
            connection.reliable_worker_id = self.reliable_worker_id  # what it takes is tracked (liveness)
        return self.ensure_connected(connection)

    @property
    def reliable_worker_id(self) -> str:
        """This worker's id on the broker (its heartbeat and held set), kept across reconnections."""
        worker_id: str | None = self.__dict__.get("_reliable_worker_id")
        if worker_id is None:
            worker_id = self.__dict__["_reliable_worker_id"] = new_worker_id()
        return worker_id

    # -- storing -------------------------------------------------------------------------

    def _stored(self, failure: FailureRecord) -> int:
        row_id = store(self.app, failure)
        if self.event_dispatcher is not None and self.event_dispatcher.enabled:
            try:
                self.event_dispatcher.send(events.MESSAGE_STORED, uuid=failure.task_id, reason=failure.reason)
            except Exception:
                logger.warning("Could not send %s", events.MESSAGE_STORED, exc_info=True)
        return row_id

    def _store_raw(self, message: Message, reason: str, exc: BaseException | None, name: str | None = None) -> bool:
        """Store ``message`` raw; False when it could not be (it is handed back after a pause)."""
        if not get_settings(self.app).store_unknown_messages:
            return True  # Celery's own handling
        failure = raw_record(message, reason, exc, name)
        try:
            row_id = self._stored(failure)
        except Exception as store_exc:
            logger.error(
                "Message %s (%s) could not be stored (%s); returned to the broker",
                _message_id(message), reason, store_exc, exc_info=not isinstance(store_exc, StoreError),
            )  # fmt: skip
            # Hand it back after a pause, without blocking the worker's event loop.
            self.timer.call_after(REQUEUE_PAUSE, _requeue, (message,))
            return False
        logger.error("Message %s (%s) stored as failed task %d", failure.task_id, reason, row_id)
        try:  # its outcome, for the ledger: stored
            ledger.note(self.app, _message_id(message), message.headers)
        except Exception:
            logger.debug("the outcome of message %s was not noted", _message_id(message), exc_info=True)
        return True

    def store_quarantined(self, entry: bytes, queue: str, problem: str, entry_id: str) -> bool:
        """Store a Redis queue entry that is not a deliverable message (see redis_fetch); True once stored."""
        if not get_settings(self.app).store_unknown_messages:
            logger.error("An entry of queue %s is not a message (%s); dropped (reliable_store_unknown_messages)",
                         queue, problem)  # fmt: skip
            return True
        failure = entry_record(
            entry, reason=REASON_UNDECODABLE, problem=problem, queue=queue, task_id=f"raw-{entry_id}",
            hostname=self.hostname,
        )  # fmt: skip
        try:
            row_id = self._stored(failure)
        except Exception as exc:
            logger.error(
                "An entry of queue %s that is not a message (%s) could not be stored (%s); it stays quarantined",
                queue, problem, exc, exc_info=not isinstance(exc, StoreError),
            )  # fmt: skip
            return False
        logger.error("An entry of queue %s is not a message (%s); stored as failed task %d", queue, problem, row_id)
        return True

    def _then(self, message: Message, celery_handler: Callable[[], None]) -> None:
        """Celery's own handling of a message already stored; if it raises, the message is acked."""
        try:
            celery_handler()
        except io_errors(self.connection_errors):
            raise
        except Exception:
            logger.warning("Celery could not handle stored message %s; acknowledged", _message_id(message),
                           exc_info=True)  # fmt: skip
            self._settle(message, ack=True)

    def _settle(self, message: Message, ack: bool) -> None:
        if message.acknowledged:
            return
        try:
            message.ack() if ack else message.reject(requeue=False)
        except io_errors(self.connection_errors):
            logger.warning("Could not acknowledge message %s (connection lost); it is redelivered",
                           _message_id(message), exc_info=True)  # fmt: skip

    # -- Celery's hooks --------------------------------------------------------------------

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        headers = message.headers
        name = headers.get("task") if isinstance(headers, dict) else None
        if self._store_raw(message, "unknown_task", exc, name):
            self._then(message, lambda: super(ReliableConsumer, self).on_unknown_task(body, message, exc))

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        if self._store_raw(message, REASON_INVALID, exc):
            self._then(message, lambda: super(ReliableConsumer, self).on_invalid_task(body, message, exc))

    def on_unknown_message(self, body: Any, message: Message) -> None:
        if self._store_raw(message, "unknown_message", None):
            self._then(message, lambda: super(ReliableConsumer, self).on_unknown_message(body, message))

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        if self._store_raw(message, "decode_error", exc):
            self._then(message, lambda: super(ReliableConsumer, self).on_decode_error(message, exc))

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's message handler, made unable to stop the worker on a message.

        Celery catches the decode and validation errors it expects; anything else a malformed
        message makes it raise (``TypeError: unhashable type`` for a list as the task name, a body
        that does not unpack, a header of the wrong type) would end the worker with "Unrecoverable
        error". Such a message is stored raw (``invalid_message``) and acknowledged instead.
        """
        handler = super().create_task_handler(*args, **kwargs)
        connection_errors = io_errors(self.connection_errors)

        def on_task_received(message: Message) -> Any:
            try:
                return handler(message)
            except connection_errors:
                raise
            except Exception as exc:
                self._on_handler_error(message, exc)
                return None

        return on_task_received

    def _on_handler_error(self, message: Message, exc: Exception) -> None:
        task_id = _message_id(message)
        request = state.requests.get(task_id) if isinstance(task_id, str) else None
        if request is not None and getattr(request, "_message", None) is message:
            if getattr(request, "_apply_result", None) is not None or request.acknowledged:
                # It went to the pool: its ack belongs to that run.
                logger.error("Celery raised after accepting message %s: %r", task_id, exc, exc_info=True)
                return
            # Reserved, never sent to the pool: Celery took a pool slot for it that nothing gives back.
            state.task_ready(request)
            semaphore = getattr(self.controller, "semaphore", None)
            if semaphore is not None:
                semaphore.release()
        if message.acknowledged:
            logger.error("Celery raised on message %s after settling it: %r", task_id, exc, exc_info=True)
            return
        logger.error("Celery could not handle message %s (%r); it is stored raw", task_id, exc, exc_info=True)
        if self._store_raw(message, REASON_INVALID, exc):
            self._settle(message, ack=get_settings(self.app).store_unknown_messages)
