"""``publish()``: send a task so that it is either in the broker or in the pending table.

The task id is fixed before the first try, so every resend carries it and consumers can dedupe.
A send is retried a few times with backoff; on RabbitMQ it uses publisher confirms, so "sent"
means the broker has the message. When it still fails the message is written to the pending
table exactly as it would have been published, and the relay sends it later. Only when that
write fails too does the caller get an error.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import random
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Celery, uuid
from celery.app.amqp import AMQP
from celery.canvas import Signature
from celery.utils.functional import maybe_list
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from kombu import Queue
from kombu.common import Broadcast
from kombu.exceptions import EncodeError

from ..broker import redis_wire
from ..broker.versions import SEND_TASK_APPLIES_TASK_OPTIONS, SEND_TASK_IGNORE_RESULT
from ..config import get_settings
from ..exceptions import BadMessageError, NotJSONArgumentsError, PublishError, StoreError
from ..message.protocol import PROTOCOL_HEADERS as PROTOCOL_HEADERS  # the one list; importable from here as before
from ..message.protocol import protocol_clash, without_protocol
from ..message.tasks import ArgumentsMismatchError, Refused, argument_error, check_signatures, short
from ..message.tasks import is_external as is_external  # importable from here as before
from ..message.tasks import is_known_task as is_known_task
from ..message.tasks import user_tasks as user_tasks
from ..store.models import PendingStatus
from ..store.payload import NotJSONError, from_stored, to_stored
from ..store.pending import PendingValues, add_pending
from ..worker.install import AMQP_SCHEMES, REDIS_SCHEMES, broker_scheme

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
            raise BadMessageError(f"{name} must be a signature or a list of signatures, got {short(item)}")
        result.append(dict(item))
    return result


def check_delivery_options(name: str, options: Any) -> None:
    """Refuse delivery options no broker would accept (also run on stored rows by the relay)."""
    if not isinstance(options, dict):
        raise BadMessageError(f"publish() of {name!r}: options must be a mapping, got {short(options)}")
    for key in ("queue", "exchange", "routing_key", "shadow", "reply_to"):
        value = options.get(key)
        if value is not None and not isinstance(value, str):
            raise BadMessageError(f"publish() of {name!r}: {key} must be a string, got {short(value)}")
    priority = options.get("priority")
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 255
    ):
        raise BadMessageError(
            f"publish() of {name!r}: priority must be an integer from 0 to 255, got {short(priority)}"
        )
    for key in ("time_limit", "soft_time_limit"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise BadMessageError(f"publish() of {name!r}: {key} must be seconds > 0, got {short(value)}")
    headers = options.get("headers") or {}
    if not isinstance(headers, dict):
        raise BadMessageError(f"publish() of {name!r}: headers must be a dict, got {short(headers)}")
    clash = protocol_clash(headers)
    if clash:
        raise BadMessageError(
            f"publish() of {name!r}: headers {clash} are Celery's own message headers; "
            "use the matching option (task_id, eta, countdown, expires...) or another header name."
        )


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
    if not is_known_task(app, name):
        import difflib

        near = difflib.get_close_matches(name, user_tasks(app), n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise BadMessageError(
            f"publish(): task {name!r} is not registered in app {app.main!r}.{hint} If it is a task of "
            "another code base, add its name (or a pattern) to reliable_external_tasks."
        )
    if args is not None and not isinstance(args, list | tuple):
        raise BadMessageError(f"publish() of {name!r}: args must be a list or a tuple, got {short(args)}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise BadMessageError(f"publish() of {name!r}: kwargs must be a mapping, got {short(kwargs)}")
    args = list(args or ())
    kwargs = dict(kwargs or {})
    mismatch = argument_error(app, name, args, kwargs)
    if mismatch:
        raise ArgumentsMismatchError(f"publish() of {name!r}: {mismatch}; nothing was sent or stored.")
    headers = options.pop("headers", None) or {}
    check_delivery_options(name, {"headers": headers})
    try:
        stored_args, stored_kwargs, stored_headers = to_stored([args, kwargs, headers])
    except NotJSONError as exc:
        raise NotJSONArgumentsError(
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
                check_signatures(app, stored_options[key], key)
            except NotJSONError as exc:
                raise BadMessageError(f"publish() of {name!r}: {key} {exc}") from None
            except Refused as exc:
                raise BadMessageError(
                    f"publish() of {name!r}: {exc}; register it, add it to reliable_external_tasks, or fix the {key}."
                ) from None
    check_delivery_options(name, options)
    for key in _PASSTHROUGH:
        if options.get(key) is not None:
            stored_options[key] = options[key]
    return PendingValues(task_id, name, stored_args, stored_kwargs, stored_options, eta, expires)


def send_options(app: Celery, values: Any) -> dict[str, Any]:
    """Keyword arguments of ``app.send_task`` for a prepared message or a pending row."""
    stored: dict[str, Any] = dict(values.options or {})
    options: dict[str, Any] = {key: stored[key] for key in _PASSTHROUGH if stored.get(key) is not None}
    headers = without_protocol(decoded(stored.get("headers") or {}))  # never Celery's own (see .protocol)
    if headers:
        options["headers"] = headers
    for key in ("link", "link_error"):
        if stored.get(key):
            options[key] = [Signature(s, app=app) for s in decoded(stored[key])]
    if values.eta is not None:
        options["eta"] = values.eta
    if values.expires_at is not None:
        options["expires"] = values.expires_at
    return options


def with_message(app: Celery, values: PendingValues, ctx: Any = None) -> PendingValues:
    """``values`` with the message as it will be written to a Redis broker (see :mod:`.redis_wire`).

    Built once, when the row is written, so the relay only sends it. Left out (NULL: the relay
    builds the message when it sends it) for other brokers and for messages kombu must send.
    """
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


def _needs_decoding(value: Any) -> bool:
    """Whether ``value`` (JSON read from the database) holds a kombu type marker, or might."""
    kind = type(value)
    if kind is dict:
        if "__type__" in value:
            return True
        for item in value.values():
            if _needs_decoding(item):
                return True
        return False
    if kind is list:
        for item in value:
            if _needs_decoding(item):
                return True
        return False
    return not (kind is str or kind is int or kind is float or kind is bool or value is None)


def decoded(value: Any) -> Any:
    """:func:`from_stored` of ``value``: without the JSON round trip when nothing needs decoding."""
    return from_stored(value) if _needs_decoding(value) else value


def _plain_repr(value: Any, level: int, maxlevels: int, out: list[str]) -> bool:
    """Append saferepr's tokens for plain JSON data; False for anything else."""
    kind = type(value)
    if kind is str:
        out.append("'" + value.replace("'", "\\'") + "'")
    elif kind is int or kind is float or kind is bool:
        out.append(str(value))
    elif value is None:
        out.append("None")
    elif kind is list or kind is dict:
        start, end = ("[", "]") if kind is list else ("{", "}")
        if maxlevels and level >= maxlevels:
            out.append(start + "..." + end)
            return True
        out.append(start)
        if kind is list:
            for index, item in enumerate(value):
                if index:
                    out.append(", ")
                if not _plain_repr(item, level + 1, maxlevels, out):
                    return False
        else:
            for index, (key, item) in enumerate(value.items()):
                if type(key) is not str:
                    return False
                if index:
                    out.append(", ")
                out.append("'" + key.replace("'", "\\'") + "': ")
                if not _plain_repr(item, level + 1, maxlevels, out):
                    return False
        out.append(end)
    else:
        return False
    return True


def fast_saferepr(value: Any, maxlen: int | None, maxlevels: int) -> str:
    """``celery.utils.saferepr.saferepr(value, maxlen, maxlevels)``, the way Celery fills ``argsrepr``.

    For plain JSON data (dicts with str keys, lists, str, int, float, bool, None) whose text is
    shorter than ``maxlen``, saferepr truncates nothing and its output is known exactly: it is
    built directly (saferepr's token stream costs ~10 us per message). Anything else, or longer,
    goes to saferepr itself.
    """
    out: list[str] = []
    try:
        plain = _plain_repr(value, 0, maxlevels, out)
    except (RecursionError, ValueError):
        plain = False
    if plain:
        text = "".join(out)
        if maxlen is None or len(text) < maxlen:
            return text
    return str(saferepr(value, maxlen, maxlevels=maxlevels))


def _fast_path(app: Celery) -> bool:
    """Whether :meth:`Publisher.send` may build messages itself: the app uses Celery's own
    ``send_task``, message protocol 2 and the stock ``as_task_v2`` (what it mirrors; the same
    message on every supported Celery)."""
    return (
        type(app).send_task is Celery.send_task
        and type(app.amqp).as_task_v2 is AMQP.as_task_v2
        and int(app.conf.task_protocol) == 2
    )


#: saferepr's default depth: what Celery before 5.7 (no ``task_repr_maxlevels``) used for argsrepr.
_SAFEREPR_LEVELS = 3


class _Confirms:
    """Publisher confirms of one confirm-mode channel that publishes without waiting.

    RabbitMQ numbers the messages of a confirm-mode channel 1, 2, ...; acks and nacks name a
    delivery tag, ``multiple`` covering every tag up to it.
    """

    def __init__(self) -> None:
        self.published = 0  # tags handed out so far on this channel
        self.first = 1  # first tag of the current batch
        self.results: list[bool | None] = []  # per tag of the batch: acked, nacked, unknown
        self.low = 0  # index of the first unresolved tag of the batch
        self.open = 0  # tags of the batch without an answer
        self.returned: dict[str, str] = {}  # task id -> why RabbitMQ returned it (unroutable)

    def start(self) -> None:
        self.first = self.published + 1
        self.results = []
        self.low = 0
        self.open = 0
        self.returned = {}

    def on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        """basic.return of a mandatory message: RabbitMQ acks it too, but no queue has it."""
        properties = getattr(message, "properties", None) or {}
        task_id = str(properties.get("correlation_id") or "")
        self.returned[task_id] = f"Unroutable: {exc} (exchange {exchange!r}, routing key {routing_key!r})"

    def published_one(self) -> None:
        self.published += 1
        self.results.append(None)
        self.open += 1

    def _resolve(self, tag: int, multiple: bool, acked: bool) -> None:
        index = tag - self.first
        if index >= len(self.results):
            index = len(self.results) - 1
        if multiple:
            for i in range(self.low, index + 1):
                if self.results[i] is None:
                    self.results[i] = acked
                    self.open -= 1
        elif 0 <= index and self.results[index] is None:
            self.results[index] = acked
            self.open -= 1
        while self.low < len(self.results) and self.results[self.low] is not None:
            self.low += 1

    def on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._resolve(delivery_tag, multiple, True)

    def on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._resolve(delivery_tag, multiple, False)

    def confirmed(self, start: int, end: int) -> bool | None:
        """Outcome of the tags ``start..end`` (batch indexes, end exclusive): all acked, some nacked, or not known."""
        outcome: bool | None = True
        for result in self.results[start:end]:
            if result is False:
                return False
            if result is None:
                outcome = None
        return outcome


@dataclass
class BatchOutcome:
    """What became of each message of a batch (indexes into the batch)."""

    sent: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    untried: list[int] = field(default_factory=list)
    broker_down: bool = False


class _Context:
    """The settings and app state ``send_task`` reads for every message, read once per batch."""

    def __init__(self, app: Celery) -> None:
        conf = app.conf
        amqp = app.amqp
        self.app = app
        self.always_eager = bool(conf.task_always_eager)
        # Celery 5.7 reads task_repr_maxlevels; before it, saferepr's own default (3) was used
        self.maxlevels = conf.get("task_repr_maxlevels", _SAFEREPR_LEVELS)
        self.argsrepr_maxsize = amqp.argsrepr_maxsize
        self.kwargsrepr_maxsize = amqp.kwargsrepr_maxsize
        self.sent_event = conf.task_send_sent_event
        self.inherit_priority = conf.task_inherit_parent_priority
        self.parent: Any = app.current_worker_task
        self.reply_to = app.thread_oid
        self._on_task_call: Any = None
        self.route = amqp.router.route
        self.create_task_message = amqp.create_task_message
        self.send_task_message = amqp.send_task_message
        self.registry: Any = app._tasks  # type: ignore[attr-defined]  # what send_task() reads (no finalize)
        self.tasks: dict[str, tuple[Any, dict[str, Any]]] = {}

    def on_task_call(self, producer: Any, task_id: str) -> None:
        if self._on_task_call is None:
            self._on_task_call = self.app.backend.on_task_call
        self._on_task_call(producer, task_id)

    def task(self, name: str) -> tuple[Any, dict[str, Any]]:
        """The registered task of ``name`` (or None) and its execution options that are set."""
        entry = self.tasks.get(name)
        if entry is None:
            task_type = self.registry.get(name)
            defaults: dict[str, Any] = {}
            if task_type is not None and hasattr(task_type, "_get_exec_options"):
                get_exec_options = task_type._get_exec_options
                exec_options = get_exec_options() if inspect.ismethod(get_exec_options) else None
                if exec_options:
                    defaults = {k: v for k, v in exec_options.items() if v is not None}
            entry = self.tasks[name] = (task_type, defaults)
        return entry


@dataclass
class Built:
    """A task message as ``send_task`` builds it, and the options it passes on to ``send_task_message``."""

    message: Any  # celery.app.amqp.task_message: headers, properties, body, sent_event
    opts: dict[str, Any]
    ignore_result: bool
    expiration: float | None  # seconds left before ``expires`` (RabbitMQ's per-message TTL)
    eta: bool


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
        # RabbitMQ: ``mandatory`` makes a message no queue takes (its queue was deleted after we
        # declared it) come back as basic.return instead of being acked and dropped.
        self.extra: dict[str, Any] = {}
        if scheme in AMQP_SCHEMES:
            self.extra = {"confirm_timeout": self.timeout, "mandatory": True}
        self.fast = _fast_path(app)
        self.origin = anon_nodename()
        #: (id(queue), id(channel)) -> (queue, channel, copy of the queue bound to the channel)
        self.bound: dict[tuple[int, int], tuple[Queue, Any, Queue]] = {}
        self.confirm_producer: Any = None  # RabbitMQ: producer on a channel publishing without waiting
        self.confirms = _Confirms()
        self.facts = redis_wire.Facts.of(app)
        self._direct: bool | None = None  # Redis: write entries directly (decided on first use)
        self.declared: set[str] = set()
        self.wait_replicas = settings.redis_wait_replicas
        self.wait_timeout = settings.redis_wait_timeout

    def context(self, detached: bool = False) -> _Context:
        """What :meth:`send` reads from the app, read once for a batch of messages.

        ``detached``: messages sent on behalf of another process (the relay) do not become
        children of the task running here.
        """
        ctx = _Context(self.app)
        if detached:
            ctx.parent = None
        return ctx

    def send(
        self,
        name: str,
        args: Any,
        kwargs: Any,
        task_id: str,
        options: dict[str, Any],
        producer: Any = None,
        ctx: _Context | None = None,
    ) -> None:
        """Publish once, as ``app.send_task(..., producer=..., retry=False)``; raises whatever the transport raised.

        The message is the one ``send_task`` builds, with the same routing, signals and events;
        for a message without eta or expires (most) it is built here with the per-message work
        only (``ctx``: the settings read once per batch), the rest go through ``send_task``.
        """
        producer = producer or self.producer
        ctx = ctx or _Context(self.app)
        built = None
        if producer is self.producer and self.direct_redis():
            built = self.build(name, args, kwargs, task_id, options, ctx)
            found = None if built is None else redis_wire.entry_of(self, name, built)
            if built is not None and found is not None:
                entry, queue = found
                with producer.connection._reraise_as_library_errors():
                    self.declare_once(queue)
                    if not built.ignore_result:
                        ctx.on_task_call(producer, task_id)
                    redis_wire.write(self, [entry], self.wait_replicas, self.wait_timeout)
                self._add_trail(ctx, task_id, built.ignore_result)
                return
        self._send_kombu(name, args, kwargs, task_id, options, producer, ctx, built)
        if self.wait_replicas and self.scheme in REDIS_SCHEMES:
            # kombu wrote on the pool's one connection of this (locked) publisher: WAIT there
            redis_wire.write(self, [], self.wait_replicas, self.wait_timeout)

    def _send_kombu(
        self,
        name: str,
        args: Any,
        kwargs: Any,
        task_id: str,
        options: dict[str, Any],
        producer: Any,
        ctx: _Context,
        built: Built | None = None,
    ) -> None:
        """Publish through kombu; ``built``: the message, if :meth:`build` already made it."""
        timed = options.get("eta") is not None or options.get("expires") is not None
        if built is None and not timed and self.fast:
            built = self.build(name, args, kwargs, task_id, options, ctx)
        if built is None or timed:  # eta/expires: send_task's own conversions
            self._send_task(name, args, kwargs, task_id, options, producer)
            return
        opts = built.opts
        queue = opts.get("queue")
        if opts.get("declare") is None and isinstance(queue, Queue) and not isinstance(queue, Broadcast):
            # What send_task_message() declares, bound to the channel once (kombu copies an
            # unbound queue on every publish just to find it is declared already).
            opts["declare"] = [self._bound(queue, producer)]
        with producer.connection._reraise_as_library_errors():
            if not built.ignore_result:
                ctx.on_task_call(producer, task_id)
            ctx.send_task_message(producer, name, built.message, **opts)
        self._add_trail(ctx, task_id, built.ignore_result)

    def build(
        self, name: str, args: Any, kwargs: Any, task_id: str, options: dict[str, Any], ctx: _Context
    ) -> Built | None:
        """The message ``send_task`` would build (Celery 5.7, protocol 2), or None: use send_task itself.

        Built with the per-message work only (``ctx``: what is the same for a batch, read once).
        """
        if ctx.always_eager:
            return None
        # What Celery 5.7's send_task() does, for the options publish() accepts.
        task_type, defaults = ctx.task(name)
        opts: dict[str, Any] = {**options, "retry": False, **self.extra}
        if defaults:
            opts = dict(defaults, **opts)
        eta, expires = opts.pop("eta", None), opts.pop("expires", None)
        link, link_error = opts.pop("link", None), opts.pop("link_error", None)
        root_id, parent_id = opts.pop("root_id", None), opts.pop("parent_id", None)
        shadow, retries = opts.pop("shadow", None), opts.pop("retries", 0)
        time_limit, soft_time_limit = opts.pop("time_limit", None), opts.pop("soft_time_limit", None)
        ignore_result = opts.pop("ignore_result", SEND_TASK_IGNORE_RESULT)
        reply_to = opts.pop("reply_to", None) or ctx.reply_to
        opts = ctx.route(opts, name, args, kwargs, task_type)
        expiration: float | None = None
        if expires is not None:
            if not isinstance(expires, datetime):
                return None  # relative or text: send_task's own conversions
            expiration = max(0.0, (_aware(expires) - _aware(self.app.now())).total_seconds())
            opts["expiration"] = expiration
        if eta is not None and not isinstance(eta, datetime):
            return None
        parent = ctx.parent
        if (not root_id or not parent_id) and parent:
            if not root_id:
                root_id = parent.request.root_id or parent.request.id
            if not parent_id:
                parent_id = parent.request.id
            if ctx.inherit_priority:
                delivery_info: Any = parent.request.delivery_info
                opts.setdefault("priority", delivery_info.get("priority"))
        given = {  # as_task_v2 represents `args or ()` and `kwargs or {}`
            "argsrepr": fast_saferepr(args or (), ctx.argsrepr_maxsize, ctx.maxlevels),
            "kwargsrepr": fast_saferepr(kwargs or {}, ctx.kwargsrepr_maxsize, ctx.maxlevels),
            "origin": self.origin,
        }
        if "argsrepr" in opts or "kwargsrepr" in opts or "origin" in opts:
            given = {key: value for key, value in given.items() if key not in opts}
        message = ctx.create_task_message(
            task_id, name, args, kwargs, None, eta, None, None, expires, retries, None,
            maybe_list(link), maybe_list(link_error), reply_to, time_limit, soft_time_limit,
            ctx.sent_event, root_id, parent_id, shadow, None,
            ignore_result=ignore_result, replaced_task_nesting=0, **given, **opts,
        )  # fmt: skip
        if "stamped_headers" in opts:
            for stamp in opts.pop("stamped_headers") or ():
                opts.pop(stamp)
        return Built(message, opts, bool(ignore_result), expiration, eta is not None)

    def entry(
        self, name: str, args: Any, kwargs: Any, task_id: str, options: dict[str, Any], ctx: _Context
    ) -> redis_wire.Entry | None:
        """The Redis list entry of a message, built without a connection; None: kombu must send it."""
        if not self.direct_redis():
            return None
        built = self.build(name, args, kwargs, task_id, options, ctx)
        found = None if built is None else redis_wire.entry_of(self, name, built)
        return None if found is None else found[0]

    def direct_redis(self) -> bool:
        """Whether messages may be written to Redis directly (see :mod:`celery_reliable.broker.redis_wire`)."""
        if self._direct is None:
            self._direct = redis_wire.usable(self)
        return self._direct and not redis_wire.signals_connected()

    def declare_once(self, queue: Queue | None) -> None:
        """Declare a queue (on Redis: its binding) the first time this publisher sends to it."""
        if queue is None or queue.name in self.declared:
            return
        self.producer.maybe_declare(self._bound(queue, self.producer))
        self.declared.add(queue.name)

    def _add_trail(self, ctx: _Context, task_id: str, ignore_result: bool) -> None:
        if ctx.parent:
            result = self.app.AsyncResult(task_id)
            result.ignored = ignore_result
            ctx.parent.add_trail(result)

    def _send_task(
        self, name: str, args: Any, kwargs: Any, task_id: str, options: dict[str, Any], producer: Any
    ) -> None:
        if not SEND_TASK_APPLIES_TASK_OPTIONS:  # Celery < 5.7: as apply_async would, and as build() does
            _task_type, defaults = _Context(self.app).task(name)
            options = dict(defaults, **options)
        self.app.send_task(name, args, kwargs, task_id=task_id, producer=producer, retry=False, **options, **self.extra)

    def _bound(self, queue: Queue, producer: Any) -> Queue:
        channel = producer.channel
        key = (id(queue), id(channel))
        entry = self.bound.get(key)
        if entry is None or entry[0] is not queue or entry[1] is not channel:
            entry = self.bound[key] = (queue, channel, queue.bind(channel))
        return entry[2]

    @property
    def batch_confirms(self) -> bool:
        """Whether :meth:`send_confirmed` can be used: RabbitMQ through py-amqp (not librabbitmq)."""
        return self.scheme in AMQP_SCHEMES and self.connection.transport.driver_name == "py-amqp"

    def send_confirmed(self, messages: list[tuple[str, Any, Any, str, dict[str, Any]]]) -> BatchOutcome:
        """RabbitMQ: publish a batch on a confirm-mode channel, then wait for every confirm.

        A message counts as sent only when the broker acked it. Messages published but not acked
        (nack, timeout, lost connection) fail; after a broker error the rest are not tried. The
        whole wait is bounded by ``reliable_publish_timeout``.
        """
        outcome = BatchOutcome()
        spans: list[tuple[int, int, int]] = []  # (message index, first tag, end tag) as batch indexes
        current: int | None = 0  # the message being published when an error struck (connecting: the first)
        error = ""
        try:
            producer = self._confirm_producer()
            confirms = self.confirms
            confirms.start()
            ctx = self.context()
            for index, (name, args, kwargs, task_id, options) in enumerate(messages):
                current = index
                before = len(confirms.results)
                try:
                    self.send(name, args, kwargs, task_id, options, producer=producer, ctx=ctx)
                except Exception as exc:
                    if is_bad_input(exc) and len(confirms.results) == before:
                        outcome.failed.append((index, f"{type(exc).__name__}: {exc}"))
                        continue
                    raise
                spans.append((index, before, len(confirms.results)))
            current = None
            deadline = time.monotonic() + self.timeout
            for _ in range(1_000_000):
                if not confirms.open:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no publisher confirm within {self.timeout:g}s")
                self.connection.drain_events(timeout=remaining)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            outcome.broker_down = True
            if current is not None:
                outcome.failed.append((current, error))
                outcome.untried = list(range(current + 1, len(messages)))
        for index, start, end in spans:
            result = self.confirms.confirmed(start, end)
            returned = self.confirms.returned.get(messages[index][3])
            if returned:
                outcome.failed.append((index, returned))
                outcome.broker_down = True  # declared queues are gone: a new connection declares them again
            elif result:
                outcome.sent.append(index)
            elif result is False:
                outcome.failed.append((index, "MessageNacked: the broker refused the message"))
                outcome.broker_down = True
            else:
                outcome.failed.append((index, error or "no publisher confirm"))
        return outcome

    def _confirm_producer(self) -> Any:
        """A producer on a channel of its own, in confirm mode, that does not wait per message."""
        if self.confirm_producer is None:
            channel: Any = self.connection.channel()
            channel.confirm_select()
            channel._confirm_selected = True
            confirms = self.confirms = _Confirms()
            publish = channel._basic_publish

            def publish_no_wait(*args: Any, **kwargs: Any) -> Any:
                kwargs.pop("confirm_timeout", None)
                result = publish(*args, **kwargs)
                confirms.published_one()
                return result

            channel.basic_publish = publish_no_wait
            channel.events["basic_ack"].add(confirms.on_ack)
            channel.events["basic_nack"].add(confirms.on_nack)
            channel.events["basic_return"].add(confirms.on_return)
            self.confirm_producer = self.app.amqp.Producer(channel, auto_declare=True)
        return self.confirm_producer

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


def _transient_errors() -> tuple[type[BaseException], ...]:
    from amqp import exceptions as amqp_errors
    from kombu import exceptions as kombu_errors

    errors: list[type[BaseException]] = [
        kombu_errors.OperationalError, kombu_errors.ConnectionError, kombu_errors.ChannelError,
        amqp_errors.ConnectionError, amqp_errors.ChannelError, amqp_errors.MessageNacked,
        OSError, TimeoutError,
    ]  # fmt: skip
    try:
        import redis.exceptions as redis_errors

        errors += [redis_errors.ConnectionError, redis_errors.TimeoutError]
    except ImportError:  # pragma: no cover - redis is a dependency through celery[redis]
        pass
    return tuple(errors)


#: Errors a later send may not hit again (the broker or the network); anything else is the message.
TRANSIENT_ERRORS = _transient_errors()


def is_bad_input(exc: BaseException) -> bool:
    """True for errors that no resend can fix: the message itself cannot be encoded or packed."""
    import struct

    return isinstance(exc, EncodeError | TypeError | struct.error) and not isinstance(exc, TRANSIENT_ERRORS)


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


__all__ = ["PendingStatus", "PublishResult", "prepare", "publish"]
