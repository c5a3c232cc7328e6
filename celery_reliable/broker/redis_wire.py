"""Task messages written to a Redis broker directly: the list entry kombu's Redis transport makes.

kombu spends about 60 us publishing one message (two JSON encodings, base64, a delivery tag,
routing, its batch bookkeeping): more than the relay's whole budget per message. Here a message
is turned into its Redis list entry once, when a pending row is written, and sending it is adding
a delivery tag and an LPUSH in a pipeline. The entry is byte for byte what kombu's ``_put`` writes
(a test compares them), for messages routed the way Celery routes most: a direct exchange, so the
queue name is the list. Anything else (topic or fanout exchanges, compression, queues with
``x-expires``, publish signal receivers) goes through kombu as before.

With ``reliable_redis_wait_replicas`` the same pipeline ends with ``WAIT``: the messages count as
sent only once that many replicas have them.
"""

from __future__ import annotations

import uuid
from bisect import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from celery import Celery, signals
from kombu import Queue
from kombu.common import Broadcast
from kombu.entity import maybe_delivery_mode
from kombu.serialization import dumps as serialize
from kombu.transport.virtual.base import Base64
from kombu.utils.json import dumps as json_dumps

from .lua import script

#: Suffix of a queue's stage list (after kombu's separator, like its priority lists' numbers): see stage_list().
STAGE = "fetch"


def stage_list(queue: str, sep: str = "\x06\x16") -> str:
    """The stage list of ``queue``: where the atomic fetch (redis_fetch) moves a message for an instant."""
    return f"{queue}{sep}{STAGE}"


#: What kombu's Redis transport adds to every message; the entry text ends with these braces.
_TAIL = "}}"
#: Values per LPUSH command (bounds the size of one command).
_VALUES_PER_LPUSH = 1000
#: send_task_message() parameters that are not message properties.
_NOT_PROPERTIES = frozenset(
    {"retry", "retry_policy", "declare", "timeout", "confirm_timeout", "event_dispatcher"}
)  # fmt: skip


class NotReplicated(Exception):
    """``WAIT`` returned fewer replicas than ``reliable_redis_wait_replicas`` asked for."""


class Entry(NamedTuple):
    """A message as kombu keeps it in a Redis list, less its delivery tag.

    Read back from a pending row only through :func:`celery_reliable.broker.redis_stored.verified_entry`,
    which checks it against the row (the stored text is input).
    """

    key: str  # the list: the queue name, with kombu's suffix for a priority above 0
    text: str  # kombu's JSON envelope; the delivery tag is added per send
    queue: str = ""  # the queue the key belongs to ("" when not known)
    content_type: str = ""  # of the body ("" when not known)

    def tagged(self, tag: str) -> str:
        return f'{self.text[: -len(_TAIL)]}, "delivery_tag": "{tag}"{_TAIL}'

    def stored(self) -> str:
        """The form kept in the pending table's ``message`` column: the key, a newline, the envelope."""
        return f"{self.key}\n{self.text}"


@dataclass(frozen=True)
class Facts:
    """What kombu's Redis channel would use to store a message, read without connecting."""

    sep: str
    priority_steps: tuple[int, ...]
    body_encoding: str | None
    default_priority: int = 0
    min_priority: int = 0
    max_priority: int = 9

    @classmethod
    def of(cls, app: Celery) -> Facts:
        options = app.conf.broker_transport_options or {}
        return cls(
            sep=str(options.get("sep", _redis_channel().sep)),
            priority_steps=tuple(options.get("priority_steps", _redis_channel().priority_steps)),
            body_encoding=options.get("body_encoding", _redis_channel().body_encoding),
        )

    def key(self, queue: str, priority: Any) -> str:
        """kombu's ``_q_for_pri(queue, _get_message_priority(message))``."""
        try:
            value = max(min(int(priority), self.max_priority), self.min_priority)
        except (TypeError, ValueError):
            value = self.default_priority
        step = self.priority_steps[bisect(self.priority_steps, value) - 1]
        return f"{queue}{self.sep}{step}" if step else queue


def _redis_channel() -> Any:
    """kombu's Redis channel class (imported on use: an app on RabbitMQ never loads redis-py)."""
    from kombu.transport.redis import Channel

    return Channel


def _response_error() -> type[Exception]:
    from redis.exceptions import ResponseError

    return ResponseError


def signals_connected() -> bool:
    """Whether publish signal receivers expect to see (and may change) each message as it is sent."""
    return bool(signals.before_task_publish.receivers or signals.after_task_publish.receivers)


def usable(app: Celery, scheme: str, facts: Facts) -> bool:
    """Whether an app's messages may be written directly: a ``redis://``, ``rediss://`` or ``sentinel://``
    broker, no compression, no ``task-sent`` events (kombu's path sends them), kombu's base64 bodies."""
    if scheme not in ("redis", "rediss", "sentinel"):
        return False
    conf = app.conf
    return not conf.task_compression and not conf.task_send_sent_event and facts.body_encoding == "base64"


def entry_of(app: Celery, facts: Facts, message: Any, options: dict[str, Any]) -> tuple[Entry, Queue | None] | None:
    """The Redis entry of a built task message and the queue to declare, or None: kombu must send it.

    ``message`` is Celery's ``task_message`` (headers, properties, body, sent_event) and
    ``options`` what ``send_task`` passes on to ``send_task_message``. Mirrors Celery's
    ``send_task_message`` and kombu's ``Producer.publish`` / Redis ``_put`` for a message to a
    direct exchange.
    """
    headers, properties, body, _sent_event = message
    opts = dict(options)
    user_headers = opts.pop("headers", None)
    queue: Any = opts.pop("queue", None)
    exchange = opts.pop("exchange", None)
    routing_key = opts.pop("routing_key", None)
    delivery_mode = opts.pop("delivery_mode", None)
    exchange_type = opts.pop("exchange_type", None)
    serializer = opts.pop("serializer", None) or app.conf.task_serializer
    if opts.pop("compression", None):
        return None
    priority = opts.pop("priority", None)
    expiration = opts.pop("expiration", None)
    for key in _NOT_PROPERTIES:
        opts.pop(key, None)
    if {"mandatory", "immediate", "content_type", "content_encoding"} & set(opts):
        return None
    headers = dict(headers)
    if user_headers:
        headers.update(user_headers)
    properties = {**properties, **opts}
    qname = queue
    if queue is None and exchange is None:
        queue = app.amqp.default_queue
    if queue is not None:
        if isinstance(queue, str):
            qname, queue = queue, app.amqp.queues[queue]
        else:
            qname = queue.name
    if isinstance(queue, Broadcast) or not isinstance(qname, str):
        return None
    if delivery_mode is None:
        delivery_mode = getattr(getattr(queue, "exchange", None), "delivery_mode", None)
        delivery_mode = delivery_mode or app.conf.task_default_delivery_mode
    if exchange_type is None:
        exchange_type = getattr(getattr(queue, "exchange", None), "type", "direct")
    if not ((not exchange or not routing_key) and exchange_type == "direct"):
        return None  # routed through an exchange's bindings: kombu's path
    if isinstance(queue, Queue) and (
        getattr(queue, "expires", None) is not None or "x-expires" in (queue.queue_arguments or {})
    ):
        return None  # kombu refreshes the queue's expiry with every message
    content_type, content_encoding, payload = serialize(body, serializer=serializer)
    reply_to = properties.get("reply_to")
    if isinstance(reply_to, Queue):
        properties["reply_to"] = reply_to.name
    if expiration is not None:
        properties["expiration"] = str(int(expiration * 1000))
    properties["delivery_mode"] = maybe_delivery_mode(delivery_mode)
    properties.setdefault("delivery_info", {})
    properties.setdefault("priority", priority or facts.default_priority)
    encoded = Base64().encode(payload)
    properties["body_encoding"] = "base64"
    properties["delivery_info"] = {**properties["delivery_info"], "exchange": "", "routing_key": qname}
    envelope = {
        "body": encoded,
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": properties,
    }
    key = facts.key(qname, properties["priority"])
    text = json_dumps(envelope)
    if not text.endswith(_TAIL):  # properties are always last and never empty
        return None
    return Entry(key, text, qname, content_type), queue if isinstance(queue, Queue) else None


@dataclass
class Written:
    """What Redis answered to a pipeline of LPUSHes: per entry, and for the ``WAIT``."""

    #: entry index -> the error Redis replied to the LPUSH that carried it (that entry is not in Redis)
    errors: dict[int, Exception] = field(default_factory=dict)
    #: why the entries Redis took are not on enough replicas ("" when they are, or none was asked for)
    not_replicated: str = ""

    def check(self) -> None:
        """Raise the first error (an entry Redis refused), or :class:`NotReplicated`."""
        if self.errors:
            raise next(iter(self.errors.values()))
        if self.not_replicated:
            raise NotReplicated(self.not_replicated)


def write(channel: Any, entries: list[Entry], wait_replicas: int, wait_timeout: float) -> None:
    """LPUSH the entries in one pipeline (and ``WAIT`` for replicas); raises if Redis did not take them all.

    A connection error means none of them is known to be in Redis; an error reply is Redis's
    (an entry it refused); :class:`NotReplicated` means they are on the primary but not on
    enough replicas. See :func:`write_each` for what became of each entry.
    """
    write_each(channel, entries, wait_replicas, wait_timeout).check()


def write_each(
    channel: Any, entries: list[Entry], wait_replicas: int, wait_timeout: float, tags: Sequence[str | None] = ()
) -> Written:
    """LPUSH the entries in one pipeline (and ``WAIT``); return Redis's answer for each entry.

    ``channel``: a kombu Redis channel (its connection pool is used, as kombu's own publish does).
    ``tags``: the delivery tag of each entry where the caller chose one (the ledger looks for it
    later); the others get a fresh one.

    Redis runs every command of a pipeline even when one fails (a list key holding another type,
    out of memory, a read-only replica): each command's reply is read, so an entry counts as
    written exactly when the LPUSH that carried it succeeded. Raises only when the connection
    failed (then none of them is known to be in Redis).
    """
    written = Written()
    if not entries and not wait_replicas:
        return written
    # One LPUSH per list with many values (pushed in order, so consumed in order): one command and
    # one reply per batch instead of one per message.
    # Delivery tags only need to be unique (kombu's unacked hash is keyed by them): one random
    # UUID per batch and a counter, instead of a UUID per message.
    base = uuid.uuid4()
    by_key: dict[str, list[int]] = {}
    for index, entry in enumerate(entries):
        by_key.setdefault(entry.key, []).append(index)
    commands: list[list[int]] = []  # per LPUSH: the indexes of the entries it carries
    with channel.conn_or_acquire() as client:
        pipe = client.pipeline(transaction=False)
        for key, indexes in by_key.items():
            for start in range(0, len(indexes), _VALUES_PER_LPUSH):
                chunk = indexes[start : start + _VALUES_PER_LPUSH]
                pipe.lpush(key, *[entries[i].tagged((tags[i] if i < len(tags) else None) or f"{base}-{i:x}")
                                  for i in chunk])  # fmt: skip
                commands.append(chunk)
        if wait_replicas:
            pipe.execute_command("WAIT", wait_replicas, int(wait_timeout * 1000))
        results = pipe.execute(raise_on_error=False)
    for chunk, result in zip(commands, results, strict=False):
        if isinstance(result, Exception):
            for index in chunk:
                written.errors[index] = result
    if wait_replicas and (not entries or len(written.errors) < len(entries)):  # WAIT for what was written
        replicas = results[-1]
        if isinstance(replicas, Exception):
            written.not_replicated = f"Redis WAIT failed: {type(replicas).__name__}: {replicas}"
        elif int(replicas) < wait_replicas:
            written.not_replicated = (
                f"Redis WAIT: {int(replicas)} of {wait_replicas} replica(s) acknowledged the write "
                f"within {wait_timeout:g} s (reliable_redis_wait_replicas)"
            )
    return written


def refused_by_key(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is Redis refusing one list key (``WRONGTYPE``: the key
    holds another type), not the server refusing writes (out of memory, read-only replica)."""
    for _ in range(10):
        if isinstance(exc, _response_error()):
            return "WRONGTYPE " in str(exc)  # redis-py prefixes a pipeline command's error with its number
        cause = exc.__cause__ or exc.__context__
        if cause is None:
            return False
        exc = cause
    return False


#: Entries of one list the presence check looks at before it says it cannot tell.
PRESENCE_SCAN = 100_000


def present(client: Any, unacked: str, stage: str, key: str, tag: str, scan: int = PRESENCE_SCAN) -> bool | None:
    """Whether Redis holds the message with delivery ``tag`` (unacknowledged, in ``stage`` or in list
    ``key``; keys given whole, prefix included): True, False, or None when a list longer than ``scan``
    entries did not show it. ``client``: a plain redis-py client (no key prefixing)."""
    import redis

    execute: Any = redis.Redis.execute_command
    needle = f'"delivery_tag": "{tag}"'
    reply = execute(client, "EVAL", script("present.lua"), 3, unacked, stage, key, tag, needle, scan)
    return None if int(reply) < 0 else bool(int(reply))
