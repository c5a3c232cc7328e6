"""``publish()``: send a task so that it is either in the broker or in the pending table.

The task id is fixed before the first try, so every resend carries it and consumers can dedupe.
A send is retried a few times with backoff; on RabbitMQ it uses publisher confirms, so "sent"
means the broker has the message. When it still fails the message is written to the pending
table exactly as it would have been published, and the relay sends it later. Only when that
write fails too does the caller get an error.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery

from ..config import get_settings
from ..exceptions import BadMessageError, PublishError, StoreError
from ..message.prepare import decoded, prepare, send_options, with_ledger
from ..message.trace import kept, with_context
from ..store.pending import PendingValues, add_pending
from .publisher import get_publisher, is_bad_input, reset_publisher

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishResult:
    """What became of a message: ``sent`` (the broker has it) or kept in the pending table."""

    task_id: str
    sent: bool
    pending_id: int | None = None
    error: str | None = None

    @property
    def pending(self) -> bool:
        return not self.sent

    @property
    def id(self) -> str:
        return self.task_id


def with_message(app: Celery, values: PendingValues, ctx: Any = None) -> PendingValues:
    """``values`` with the message as it will be written to a Redis broker (see :mod:`.redis_wire`).

    Built once, when the row is written, so the relay only sends it. Left out (NULL: the relay
    builds the message when it sends it) for other brokers and for messages kombu must send.
    The trace context active here goes into its headers (see :mod:`celery_reliable.message.trace`).
    """
    values = with_ledger(values)  # a pending row waits for its task's outcome
    values = with_context(values)  # the relay's resend continues the caller's trace
    publisher = get_publisher(app)
    if not publisher.direct_redis():
        return values
    try:
        args = decoded(values.args) if values.args is not None else []
        kwargs = decoded(values.kwargs) if values.kwargs is not None else {}
        entry = publisher.entry(
            values.task_name, args, kwargs, values.task_id, send_options(app, values), ctx or publisher.context()
        )
    except Exception as exc:  # the relay builds it instead; never fail a write for this
        logger.debug("message of %s[%s] not built ahead: %r", values.task_name, values.task_id, exc)
        return values
    if entry is None or entry.content_type != "application/json":  # the relay checks JSON bodies only
        return values
    options = values.options
    if entry.queue and options.get("queue") is None:
        # Where the message goes, kept with the row: the relay derives the list key from it and
        # sends the stored message only if it agrees (see celery_reliable.broker.redis_stored).
        options = {**options, "queue": entry.queue}
    return dataclasses.replace(values, options=options, message=entry.stored())


def publish(
    app: Celery,
    name: str | Any,
    args: Any = None,
    kwargs: Any = None,
    **options: Any,
) -> PublishResult:
    """Send task ``name`` (a name or a task) reliably: sent, or kept for the relay.

    Returns a :class:`PublishResult`; it does not raise for an unreachable broker.

    Raises:
        PublishError: bad input (nothing sent or stored), or the broker is unreachable *and*
            the pending table could not be written — the message was neither sent nor kept.
    """
    if not isinstance(name, str):
        name = name.name
    # the caller's trace context travels in the message's headers, sent or kept for the relay
    values = with_context(prepare(app, name, args, kwargs, options))
    settings = get_settings(app)
    send_args, send_kwargs = list(args or ()), dict(kwargs or {})
    opts = send_options(app, values)
    last_error: BaseException | None = None
    for attempt in range(settings.publish_retries + 1):
        try:
            publisher = get_publisher(app)
            with publisher.lock, kept():
                publisher.send(name, send_args, send_kwargs, values.task_id, opts)
            return PublishResult(values.task_id, sent=True)
        except Exception as exc:
            if is_bad_input(exc):
                raise BadMessageError(f"publish() of {name!r}: {exc}") from exc
            last_error = exc
            reset_publisher(app)
            if attempt < settings.publish_retries:
                delay = random.random() * settings.publish_retry_backoff * 2**attempt
                logger.warning(
                    "Send of %s[%s] failed (%s: %s); try %d of %d in %.2fs",
                    name, values.task_id, type(exc).__name__, exc, attempt + 2,
                    settings.publish_retries + 1, delay,
                )  # fmt: skip
                time.sleep(delay)
    error = f"{type(last_error).__name__}: {last_error}"
    try:
        (pending_id,) = add_pending(app, [with_message(app, values)], source="publish_fallback", error=error)
    except StoreError as store_exc:
        raise PublishError(
            f"{name}[{values.task_id}] was neither sent ({error}) nor stored for the relay "
            f"({store_exc}); the caller must retry or fail"
        ) from store_exc
    logger.warning(
        "Broker unreachable; %s[%s] kept as pending message %d for the relay (%s)",
        name, values.task_id, pending_id, error,
    )  # fmt: skip
    return PublishResult(values.task_id, sent=False, pending_id=pending_id, error=error)
