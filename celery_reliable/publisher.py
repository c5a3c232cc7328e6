"""``publish()``: send a task so that it is either in the broker or in the pending table.

The task id is fixed before the first try, so every resend carries it and consumers can dedupe.
A send is retried a few times with backoff; on RabbitMQ it uses publisher confirms, so "sent"
means the broker has the message. When it still fails the message is written to the pending
table exactly as it would have been published, and the relay sends it later. Only when that
write fails too does the caller get an error.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Celery, uuid
from celery.canvas import Signature
from kombu.exceptions import EncodeError

from .config import get_settings
from .exceptions import BadMessageError, PublishError, StoreError
from .install import AMQP_SCHEMES, REDIS_SCHEMES, broker_scheme
from .store.models import PendingStatus
from .store.payload import NotJSONError, from_stored, to_stored
from .store.pending import PendingValues, add_pending

logger = logging.getLogger(__name__)

#: Options publish() accepts; each can be stored in a pending row and replayed as it was given.
ALLOWED_OPTIONS = frozenset(
    {
        "task_id", "queue", "exchange", "routing_key", "priority", "headers", "countdown", "eta",
        "expires", "link", "link_error", "parent_id", "root_id", "shadow", "time_limit",
        "soft_time_limit", "ignore_result", "retries", "reply_to",
    }
)  # fmt: skip
_PASSTHROUGH = ("queue", "exchange", "routing_key", "priority", "parent_id", "root_id", "shadow",
                "time_limit", "soft_time_limit", "ignore_result", "retries", "reply_to")  # fmt: skip


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


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _signatures(value: Any, name: str) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    result = []
    for item in items:
        if not isinstance(item, dict):
            raise BadMessageError(f"{name} must be a signature or a list of signatures, got {item!r}")
        result.append(dict(item))
    return result


def user_tasks(app: Celery) -> list[str]:
    """Task names the app registers itself (not Celery's or celery_reliable's own).

    An app with none is a pure producer that sends by name; an app with some is expected to
    know every task it sends.
    """
    return [n for n in app.tasks if not n.startswith(("celery.", "celery_reliable."))]


def prepare(
    app: Celery, name: str, args: Any = None, kwargs: Any = None, options: dict[str, Any] | None = None
) -> PendingValues:
    """Validate a message and turn it into what a pending row stores.

    Raises:
        PublishError: unknown option, unserializable arguments, a task name the app does not
            know (when it knows its tasks), or a bad countdown/eta/expires. Nothing is sent.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - ALLOWED_OPTIONS)
    if unknown:
        raise BadMessageError(
            f"publish() of {name!r}: unsupported option(s) {unknown}; these could not be replayed from "
            f"the pending table. Supported: {sorted(ALLOWED_OPTIONS)}."
        )
    if not isinstance(name, str) or not name:
        raise BadMessageError(f"publish(): task name must be a non-empty string, got {name!r}")
    known = user_tasks(app)
    if known and name not in app.tasks:
        import difflib

        near = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise BadMessageError(f"publish(): task {name!r} is not registered in app {app.main!r}.{hint}")
    args = list(args or ())
    kwargs = dict(kwargs or {})
    headers = options.pop("headers", None) or {}
    if not isinstance(headers, dict):
        raise BadMessageError(f"publish() of {name!r}: headers must be a dict, got {headers!r}")
    try:
        stored_args, stored_kwargs, stored_headers = to_stored([args, kwargs, headers])
    except NotJSONError as exc:
        raise BadMessageError(
            f"publish() of {name!r}: arguments {exc}; pass JSON-serializable values (ids rather than objects)."
        ) from None
    now = datetime.now(timezone.utc)
    eta = options.pop("eta", None)
    countdown = options.pop("countdown", None)
    if eta is not None and countdown is not None:
        raise BadMessageError(f"publish() of {name!r}: give eta or countdown, not both")
    if countdown is not None:
        if isinstance(countdown, bool) or not isinstance(countdown, int | float) or countdown < 0:
            raise BadMessageError(f"publish() of {name!r}: countdown must be seconds >= 0, got {countdown!r}")
        eta = now + timedelta(seconds=countdown)
    elif eta is not None:
        if not isinstance(eta, datetime):
            raise BadMessageError(f"publish() of {name!r}: eta must be a datetime, got {eta!r}")
        eta = _aware(eta)
    expires = options.pop("expires", None)
    if expires is not None:
        if isinstance(expires, datetime):
            expires = _aware(expires)
        elif isinstance(expires, int | float) and not isinstance(expires, bool):
            expires = now + timedelta(seconds=expires)
        else:
            raise BadMessageError(f"publish() of {name!r}: expires must be seconds or a datetime, got {expires!r}")
    task_id = str(options.pop("task_id", None) or uuid())
    stored_options: dict[str, Any] = {"headers": stored_headers}
    for key in ("link", "link_error"):
        sigs = _signatures(options.pop(key, None), key)
        if sigs:
            try:
                stored_options[key] = to_stored(sigs)
            except NotJSONError as exc:
                raise BadMessageError(f"publish() of {name!r}: {key} {exc}") from None
    for key in _PASSTHROUGH:
        if options.get(key) is not None:
            stored_options[key] = options[key]
    return PendingValues(task_id, name, stored_args, stored_kwargs, stored_options, eta, expires)


def send_options(app: Celery, values: Any) -> dict[str, Any]:
    """Keyword arguments of ``app.send_task`` for a prepared message or a pending row."""
    stored: dict[str, Any] = dict(values.options or {})
    options: dict[str, Any] = {key: stored[key] for key in _PASSTHROUGH if stored.get(key) is not None}
    headers = from_stored(stored.get("headers") or {})
    if headers:
        options["headers"] = headers
    for key in ("link", "link_error"):
        if stored.get(key):
            options[key] = [Signature(s, app=app) for s in from_stored(stored[key])]
    if values.eta is not None:
        options["eta"] = values.eta
    if values.expires_at is not None:
        options["expires"] = values.expires_at
    return options


class Publisher:
    """A connection and producer of one app in one process, for confirmed, bounded sends."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        settings = get_settings(app)
        self.timeout = settings.publish_timeout
        scheme = broker_scheme(app)
        transport = dict(app.conf.broker_transport_options or {})
        # Fail fast: connecting is retried by publish()'s own loop, not inside kombu.
        transport.update(max_retries=1, interval_start=0, interval_step=0.1, interval_max=0.2)
        if scheme in AMQP_SCHEMES:
            transport["confirm_publish"] = True
        if scheme in REDIS_SCHEMES:
            transport.setdefault("socket_timeout", self.timeout)
            transport["socket_connect_timeout"] = self.timeout
        self.scheme = scheme
        self.connection = app.connection_for_write(transport_options=transport, connect_timeout=self.timeout)
        self.producer: Any = app.amqp.Producer(self.connection, auto_declare=True)
        self.lock = threading.Lock()

    def send(self, name: str, args: Any, kwargs: Any, task_id: str, options: dict[str, Any]) -> None:
        """Publish once; raises whatever the transport raised."""
        extra: dict[str, Any] = {}
        if self.scheme in AMQP_SCHEMES:
            extra["confirm_timeout"] = self.timeout
        self.app.send_task(name, args, kwargs, task_id=task_id, producer=self.producer, retry=False, **options, **extra)

    def close(self) -> None:
        try:
            self.connection.release()
        except Exception:
            logger.debug("closing publisher connection failed", exc_info=True)


_publishers: weakref.WeakKeyDictionary[Celery, tuple[int, Publisher]] = weakref.WeakKeyDictionary()
_publishers_lock = threading.Lock()


def get_publisher(app: Celery) -> Publisher:
    """The publisher of ``app`` in this process (a new one after a fork or a failed send)."""
    import os

    with _publishers_lock:
        entry = _publishers.get(app)
        if entry is None or entry[0] != os.getpid():
            entry = (os.getpid(), Publisher(app))
            _publishers[app] = entry
        return entry[1]


def reset_publisher(app: Celery) -> None:
    """Drop the publisher of ``app`` (its connection is suspect)."""
    with _publishers_lock:
        entry = _publishers.pop(app, None)
    if entry is not None:
        entry[1].close()


def is_bad_input(exc: BaseException) -> bool:
    """Errors that no resend can fix."""
    return isinstance(exc, EncodeError | TypeError)


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
    values = prepare(app, name, args, kwargs, options)
    settings = get_settings(app)
    send_args, send_kwargs = list(args or ()), dict(kwargs or {})
    opts = send_options(app, values)
    last_error: BaseException | None = None
    for attempt in range(settings.publish_retries + 1):
        try:
            publisher = get_publisher(app)
            with publisher.lock:
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
        (pending_id,) = add_pending(app, [values], source="publish_fallback", error=error)
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


__all__ = ["PendingStatus", "PublishResult", "prepare", "publish"]
