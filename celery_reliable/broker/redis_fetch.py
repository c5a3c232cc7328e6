"""Atomic fetch for kombu's Redis transport: a message is never out of Redis while a worker holds it.

kombu takes a message with ``BRPOP`` and records it as unacknowledged (``HSET unacked`` +
``ZADD unacked_index``) in a second round trip. A worker killed between the two has taken the
message off the queue without leaving any trace of it: no visibility timeout can bring it back.

Here one pipelined round trip does both inside Redis:

1. ``BLMOVE queue stage RIGHT LEFT <wait>`` waits for a message and moves it to the queue's
   *stage* list (``<queue>\\x06\\x16fetch``): one waiting worker per message is woken, as with
   ``BRPOP``, and the message is still in Redis;
2. a Lua script, run by Redis right after the ``BLMOVE`` (it is already in the connection's
   buffer), pops the oldest message of the stage lists, else of the queue lists (priorities in
   kombu's order), and records it in ``unacked`` in the same atomic step.

A message in a stage list whose worker died before its script ran is taken by the next fetch of
any worker of that queue, since the script empties the stage lists first. The ``unacked`` record
holds the same JSON kombu's ``QoS.append`` writes, so kombu's own ack, reject, restore and
visibility-timeout sweep handle it unchanged; ``QoS.append`` rewrites it with the delivery time.

An entry the worker cannot deliver (not JSON, not UTF-8, no delivery tag, a body that does not
decode...: see :mod:`celery_reliable.broker.redis_envelope`) is moved, in the same atomic step, to the queue's
*quarantine* list (``<queue>\x06\x16quarantine``) instead of being handed to kombu, whose fetch
would stop the worker on it. The worker stores it raw in the failed-task table, then removes it
from the quarantine list; one left there by a dead worker is stored by the next worker that starts
on that queue (or by any worker's periodic sweep). An entry the script recorded but Python finds
undeliverable is moved from ``unacked`` to the quarantine list in one transaction. The script
also counts how often each delivery tag was taken (``reliable.fetch.takes``, cleared when kombu
records the delivery): a message taken :data:`MAX_TAKES` times without being delivered stopped
the worker while it was being decoded each time, and is quarantined instead of taken again.

Only the worker's consuming connection uses this transport (see
:meth:`celery_reliable.worker.consumer.ReliableConsumer.connection_for_read`); producers, Flower and the
CLI keep kombu's transport. It needs Redis 6.2 or later (``BLMOVE``) and scripts allowed;
otherwise it logs why and fetches the way kombu does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from queue import Empty
from time import monotonic, time
from typing import Any, NamedTuple

from kombu import Connection
from kombu.transport import redis as kombu_redis
from redis.exceptions import NoScriptError

from .facts import ATOMIC_FETCH_TRANSPORTS
from .lua import script
from .redis_envelope import Undeliverable, parse
from .redis_liveness import held_key
from .redis_quarantine import MAX_TAKES, MAX_TAKES_TRACKED, TAKES_KEY, FetchQoS, Quarantine, QuarantineHandler
from .redis_wire import stage_list

logger = logging.getLogger(__name__)

#: The atomic-fetch transport for each URL scheme it serves (the one map, in broker/facts.py).
BY_SCHEME = ATOMIC_FETCH_TRANSPORTS
#: This module's transports, as Celery/kombu name them: for redis:// and rediss:// (TLS), and for
#: sentinel:// URLs.
TRANSPORT = BY_SCHEME["redis"]
SENTINEL_TRANSPORT = BY_SCHEME["sentinel"]
#: Oldest Redis with ``BLMOVE``.
MIN_REDIS = (6, 2)
#: Wait while idle when messages may arrive on a key other than the one waited on (several queues,
#: or priorities in use): such a message is taken within this many seconds.
SHORT_WAIT = 0.1
#: How long a message seen on another key keeps the short wait on.
SHORT_WAIT_FOR = 60.0
#: The take (``lua/take.lua``): see the module docstring. Its replies are described in the file.
TAKE_SCRIPT = (
    script("take.lua").replace("MAX_TAKES_TRACKED", str(MAX_TAKES_TRACKED)).replace("MAX_TAKES", str(MAX_TAKES))
)


#: kombu's Redis channels; their private fetch methods (``_brpop_start``/``_brpop_read``, stable
#: since kombu 3) are what this module replaces, and the type stubs do not describe them.
_RedisChannel: Any = kombu_redis.Channel
_SentinelChannel: Any = kombu_redis.SentinelChannel


def version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


#: Packed fetches kept per channel (one per queue set and wait: a handful in practice).
MAX_PACKED = 64


class _Packed(NamedTuple):
    """A fetch's commands as RESP bytes (see AtomicFetch._pack)."""

    pairs: list[tuple[str, str]]  # (queue, list key) in the script's key order
    blmove: bytes
    evalsha: bytes  # the EVALSHA command up to its time and entry id
    last: bytes  # its last argument, the worker id


def _bulk(value: str) -> bytes:
    """One RESP bulk string."""
    data = value.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _command(args: tuple[str, ...]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(_bulk(arg) for arg in args)


class AtomicFetch(Quarantine):
    """Takes and records each message in one atomic step; mixed into kombu's Redis channels."""

    QoS = FetchQoS

    # provided by kombu's channel
    client: Any
    connection: Any
    connection_errors: tuple[type[BaseException], ...]
    active_queues: Any
    codecs: Any
    qos: Any
    _queue_cycle: Any
    _q_for_pri: Any
    priority_steps: Any
    global_keyprefix: str
    unacked_key: str
    unacked_index_key: str
    sep: str
    ResponseError: type[Exception]
    _in_poll: Any
    _brpop_sent_at: float | None
    conn_or_acquire: Any

    #: None: not decided yet; True: atomic fetch; False: kombu's BRPOP (old Redis, no scripts).
    _atomic: bool | None = None
    _take_sha: str | None = None
    _fetch_keys: list[tuple[str, str]] | None = None
    _fetch_id: str = ""
    _short_wait_until = 0.0
    _fetch_waited = 0
    #: the delivery tag of the message being delivered (see FetchQoS.append)
    _taken_tag: str | None = None
    #: the fetch's commands packed once per (queues, wait, script, worker): see _pack
    _packed: dict[tuple[Any, ...], _Packed] | None = None

    @property
    def worker_id(self) -> str | None:
        """The id of the worker this channel fetches for (set on the connection by the worker's
        consumer; see :mod:`.redis_liveness`), or None: messages taken are not tracked per worker."""
        client = getattr(self.connection, "client", None)
        value = getattr(client, "reliable_worker_id", None)
        return value if isinstance(value, str) and value else None

    @property
    def held_key(self) -> str | None:
        """The worker's held set (unprefixed, as kombu's client prefixes it), or None."""
        worker_id = self.worker_id
        return held_key(worker_id) if worker_id else None

    def _decide(self) -> bool:
        """Atomic fetch if this Redis can do it (asked once per channel)."""
        if self._atomic is None:
            try:
                version = str(self.client.info("server").get("redis_version", "0"))
                if version_tuple(version) < MIN_REDIS:
                    raise RuntimeError(f"Redis {version} has no BLMOVE (6.2 or later needed)")
                self._load_script()
                self._atomic = True
            except self.connection_errors:
                raise
            except Exception as exc:
                logger.warning(
                    "celery_reliable: atomic fetch is off (%s); a worker killed between taking a message and "
                    "recording it as unacknowledged loses that message. Use Redis 6.2 or later with scripts allowed.",
                    exc,
                )
                self._atomic = False
        return self._atomic

    def _load_script(self) -> None:
        self._take_sha = str(self.client.script_load(TAKE_SCRIPT))

    def _stage(self, queue: str) -> str:
        return stage_list(queue, self.sep)

    def _brpop_start(self, timeout: float | None = None) -> None:
        if not self._decide():
            super()._brpop_start(timeout)  # type: ignore[misc]
            return
        if self._take_sha is None:  # the server lost its script cache (restart): load it again
            self._load_script()
        if timeout is None:  # kombu >= 5.6 passes None and reads brpop_timeout; kombu 5.5 passes 1
            timeout = getattr(self, "brpop_timeout", 1)
        if monotonic() >= self._quarantine_due:
            self._sweep_quarantine()
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        wait = float(timeout or 0)
        if len(queues) > 1 or monotonic() < self._short_wait_until:
            wait = min(wait, SHORT_WAIT) if wait else SHORT_WAIT
        worker_id = self.worker_id or ""
        cache_key = (tuple(queues), wait, self._take_sha, worker_id)
        cache = self._packed
        if cache is None or len(cache) >= MAX_PACKED:
            cache = self._packed = {}
        packed = cache.get(cache_key)
        if packed is None:
            packed = cache[cache_key] = self._pack(queues, wait, worker_id)
        self._fetch_id = self._next_entry_id()
        connection = self.client.connection
        self._fetch_keys = packed.pairs
        self._fetch_waited = len(queues)  # index of the list BLMOVE waits on: the first queue's main list
        self._in_poll = connection
        self._brpop_sent_at = monotonic()
        # the time and the entry id change with every fetch; the rest is packed once per queue set
        tail = _bulk(repr(time())) + _bulk(self._fetch_id) + packed.last
        connection.send_packed_command([packed.blmove, packed.evalsha + tail])

    def _pack(self, queues: list[str], wait: float, worker_id: str) -> _Packed:
        """The fetch's two commands as RESP bytes, but for the EVALSHA's time and entry id."""
        pairs = [(queue, self._stage(queue)) for queue in queues]
        pairs += [(queue, self._q_for_pri(queue, pri)) for pri in self.priority_steps for queue in queues]
        prefix = self.global_keyprefix or ""
        keys = [prefix + key for _, key in pairs]
        quarantines = [prefix + self._quarantine(queue) for queue, _ in pairs]
        blmove = ("BLMOVE", keys[len(queues)], keys[0], "RIGHT", "LEFT", f"{wait:g}")
        held = prefix + held_key(worker_id)
        static = (
            "EVALSHA", self._take_sha or "", str(2 * len(keys) + 4), *keys, *quarantines,
            prefix + self.unacked_key, prefix + self.unacked_index_key, prefix + TAKES_KEY, held,
        )  # fmt: skip
        head = b"*%d\r\n" % (len(static) + 3) + b"".join(_bulk(arg) for arg in static)
        return _Packed(pairs, _command(blmove), head, _bulk(worker_id))

    def _read_replies(self, connection: Any) -> Any:
        """Both replies, always (an error left unread would answer the next command)."""
        replies: list[Any] = []
        for _ in range(2):
            try:
                replies.append(connection.read_response())
            except self.ResponseError as exc:
                replies.append(exc)
        wake, reply = replies
        if isinstance(reply, NoScriptError):
            self._take_sha = None  # nothing was taken (a moved message waits in its stage list)
            raise Empty()
        if isinstance(reply, Exception):
            raise reply
        if isinstance(wake, Exception) and not reply:
            raise wake
        return reply

    def _brpop_read(self, **options: Any) -> bool:
        if not self._atomic:
            return bool(super()._brpop_read(**options))  # type: ignore[misc]
        connection = self.client.connection
        try:
            try:
                reply = self._read_replies(connection)
            except self.connection_errors:
                # what the script took is recorded as unacknowledged, what BLMOVE moved is staged
                connection.disconnect()
                raise
            if not reply:
                raise Empty()
            number, item, recorded, tag = reply
            pairs = self._fetch_keys or []
            queue = pairs[int(number) - 1][0]
            if int(number) - 1 > self._fetch_waited:  # from a list nobody waits on: wait less
                self._short_wait_until = monotonic() + SHORT_WAIT_FOR
            self._queue_cycle.rotate(queue)
            if int(recorded) != 1:
                why = (
                    f"taken {MAX_TAKES} times without being delivered: each time, the worker that took it "
                    "stopped before it could deliver it"
                    if int(recorded) == 2
                    else None
                )
                self._quarantined(queue, self._fetch_id, item, why)
                return True
            self._deliver_entry(queue, item, tag if isinstance(tag, bytes) else str(tag).encode())
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _deliver_entry(self, queue: str, item: bytes, raw_tag: bytes) -> None:
        """Hand a taken message to kombu, unless it cannot be delivered (then quarantine it).

        ``raw_tag`` is the delivery tag as the script read it (bytes: possibly not UTF-8).
        """
        try:
            message = parse(item, self.codecs)
            tag = message["properties"]["delivery_tag"]
            if tag.encode("utf-8") != raw_tag:
                raise Undeliverable("its delivery tag reads differently in Python than in Redis")
        except Undeliverable as exc:
            self._move_to_quarantine(queue, item, raw_tag, str(exc))
            return
        self._taken_tag = tag
        try:
            self.connection._deliver(message, queue)
        except self._io_errors():
            raise  # it is recorded as unacknowledged: given back once the broker answers again
        except Exception as exc:
            # Nothing of kombu's or Celery's should fail on a checked message; if something does,
            # the message is kept rather than the worker stopped.
            logger.exception("celery_reliable: delivering a message of queue %s failed; it is quarantined", queue)
            self._move_to_quarantine(queue, item, raw_tag, f"delivering it failed ({type(exc).__name__}: {exc})")
            if tag in getattr(self.qos, "_delivered", {}):
                self.qos.ack(tag)  # kombu counted it as held: release it
        finally:
            self._taken_tag = None


class Channel(AtomicFetch, _RedisChannel):  # type: ignore[misc]
    """kombu's Redis channel with the atomic fetch."""


class SentinelChannel(AtomicFetch, _SentinelChannel):  # type: ignore[misc]
    """kombu's Redis Sentinel channel with the atomic fetch."""


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the atomic fetch (``redis://`` URLs)."""

    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Redis Sentinel transport with the atomic fetch (``sentinel://`` URLs)."""

    Channel = SentinelChannel


class FetchConnection(Connection):
    """A kombu connection that keeps the atomic-fetch transport when it fails over.

    With several broker URLs, kombu's ``Connection.switch()`` takes the transport from the next
    URL's scheme, which would quietly bring kombu's own fetch back after the first failover.
    """

    #: Stores an entry of a queue that is not a deliverable message (set by the worker's consumer).
    reliable_quarantine_handler: QuarantineHandler | None = None
    #: The id of the worker consuming on this connection (see :mod:`.redis_liveness`).
    reliable_worker_id: str | None = None

    #: The scheme of the broker URL (``redis``, ``rediss``, ``sentinel``), shown in logs.
    reliable_scheme: str | None = None

    def switch(self, conn_str: str) -> None:
        super().switch(conn_str)
        scheme = str(self.transport_cls)
        transport = BY_SCHEME.get(scheme)
        if transport is not None:
            self.reliable_scheme = scheme
            self.transport_cls = transport

    def as_uri(
        self, include_password: bool = False, mask: str = "**", getfields: Callable[..., Any] | None = None
    ) -> str:
        """The URL with the scheme the user wrote (``redis://``), not the transport's import path.

        The worker logs ``Connected to <this>``; kombu would write the transport class
        (``celery_reliable.broker.redis_fetch:Transport://``).
        """
        if getfields is None:
            uri = str(super().as_uri(include_password, mask))
        else:
            uri = str(super().as_uri(include_password, mask, getfields))
        transport = f"{self.transport_cls}://"
        if not uri.startswith(transport):
            return uri
        scheme = self.reliable_scheme or (
            "sentinel" if self.transport_cls == BY_SCHEME.get("sentinel") else "rediss" if self.ssl else "redis"
        )
        return f"{scheme}://{uri[len(transport) :]}"


def fetch_connection(connection: Connection, transport: str) -> FetchConnection:
    """``connection`` (as Celery made it, with all its settings) on the atomic-fetch ``transport``."""
    fetching = FetchConnection(**dict(connection._info(resolve=False), transport=transport))
    fetching.reliable_scheme = str(connection.transport_cls)
    return fetching
