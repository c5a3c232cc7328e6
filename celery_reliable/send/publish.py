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
from .build import SendContext
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


def send_once(
    app: Celery,
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    task_id: str,
    opts: dict[str, Any],
    ctx: SendContext | None = None,
) -> BaseException | None:
    """One try at sending: None when the broker has the message, else the error (the publisher is reset).

    Blocks for at most one bounded broker operation; :func:`publish` and ``apublish()`` share it.

    Raises:
        BadMessageError: the message itself cannot be encoded (no resend can fix it).
    """
    try:
        publisher = get_publisher(app)
        with publisher.lock, kept():  # a failed send must not leave its span current in the caller
            publisher.send(name, args, kwargs, task_id, opts, ctx=ctx)
        return None
    except Exception as exc:
        if is_bad_input(exc):
            raise BadMessageError(f"publish() of {name!r}: {exc}") from exc
        reset_publisher(app)
        return exc


def retry_delay(backoff: float, attempt: int) -> float:
    """Seconds before try ``attempt + 2``: exponential backoff with full jitter."""
    return float(random.random() * backoff * 2**attempt)


def log_retry(name: str, task_id: str, exc: BaseException, attempt: int, tries: int, delay: float) -> None:
    logger.warning(
        "Send of %s[%s] failed (%s: %s); try %d of %d in %.2fs",
        name, task_id, type(exc).__name__, exc, attempt + 2, tries, delay,
    )  # fmt: skip


def keep(app: Celery, name: str, values: PendingValues, last_error: BaseException | None) -> PublishResult:
    """Write a message no try could send to the pending table (blocking: one insert).

    Raises:
        PublishError: the write failed too; the message was neither sent nor kept.
    """
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
    tries = settings.publish_retries + 1
    last_error: BaseException | None = None
    for attempt in range(tries):
        last_error = send_once(app, name, send_args, send_kwargs, values.task_id, opts)
        if last_error is None:
            return PublishResult(values.task_id, sent=True)
        if attempt < settings.publish_retries:
            delay = retry_delay(settings.publish_retry_backoff, attempt)
            log_retry(name, values.task_id, last_error, attempt, tries, delay)
            time.sleep(delay)
    return keep(app, name, values, last_error)
