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

import hashlib
import logging
import os
from collections.abc import Callable
from queue import Empty
from time import monotonic, time
from typing import Any

import redis
from kombu import Connection
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import loads
from redis.exceptions import NoScriptError

from .redis_envelope import Undeliverable, check, parse

logger = logging.getLogger(__name__)

#: This module's transports, as Celery/kombu name them: for redis:// and rediss:// (TLS), and for
#: sentinel:// URLs.
TRANSPORT = "celery_reliable.broker.redis_fetch:Transport"
SENTINEL_TRANSPORT = "celery_reliable.broker.redis_fetch:SentinelTransport"
#: The atomic-fetch transport for each URL scheme it serves.
BY_SCHEME = {"redis": TRANSPORT, "rediss": TRANSPORT, "sentinel": SENTINEL_TRANSPORT}
#: Oldest Redis with ``BLMOVE``.
MIN_REDIS = (6, 2)
#: Wait while idle when messages may arrive on a key other than the one waited on (several queues,
#: or priorities in use): such a message is taken within this many seconds.
SHORT_WAIT = 0.1
#: How long a message seen on another key keeps the short wait on.
SHORT_WAIT_FOR = 60.0
#: Suffix of a queue's stage list (after kombu's separator, like its priority lists' numbers): see stage_list().
STAGE = "fetch"
#: Suffix of a queue's quarantine list: entries that cannot be delivered, waiting to be stored.
QUARANTINE = "quarantine"
#: Hash counting how often each delivery tag was taken without kombu recording its delivery.
TAKES_KEY = "reliable.fetch.takes"
#: A tag taken this many times without being delivered is quarantined instead of taken again:
#: each of the earlier takes ended with the worker gone before it delivered the message.
MAX_TAKES = 3
#: Entries of the takes hash beyond which it is emptied (only takes whose worker died stay in it).
MAX_TAKES_TRACKED = 10_000
#: Seconds between sweeps of the quarantine lists of a worker's queues (the first at its start).
QUARANTINE_SWEEP = 60.0
#: Entries stored per quarantine list and sweep.
QUARANTINE_BATCH = 100
#: Pause before a quarantine list is looked at again after its entry could not be stored.
QUARANTINE_RETRY = 5.0

#: The quarantine list of unacknowledged records that cannot be given back to a queue (found by
#: kombu's restore sweep, of any queue of the database): swept by every worker.
QUARANTINE_RESTORE = "_reliable.quarantine"

#: Stores one quarantined entry: (entry bytes, queue, what is wrong, entry id) -> stored?
QuarantineHandler = Callable[[bytes, str, str, str], bool]

#: KEYS: the n lists in the order to take from (stage lists first), the quarantine list of each,
#: then the unacked hash and index and the takes hash. ARGV[1]: the time to index the delivery
#: under; ARGV[2]: the id to quarantine an entry under. Returns {key number, entry, 1, tag} for a
#: message taken and recorded, {key number, entry, 0 (cannot be delivered) or 2 (taken MAX_TAKES
#: times), ''} for an entry moved to the quarantine list, or nil. The hash value is built around
#: the raw entry (never re-encoded), exactly as ``json.dumps([message, exchange, routing_key])``
#: would.
TAKE_SCRIPT = """
local n = (#KEYS - 3) / 2
local takes = KEYS[2 * n + 3]
for i = 1, n do
  local raw = redis.call('RPOP', KEYS[i])
  if raw then
    local why = 0
    local ok, msg = pcall(cjson.decode, raw)
    if ok and type(msg) == 'table' and type(msg.properties) == 'table' then
      local props = msg.properties
      local info = props.delivery_info
      local tag = props.delivery_tag
      if type(tag) == 'string' and tag ~= '' and type(info) == 'table'
          and type(info.exchange) == 'string' and type(info.routing_key) == 'string'
          and (msg.headers == nil or type(msg.headers) == 'table')
          and (msg.body == nil or type(msg.body) == 'string') then
        if redis.call('HINCRBY', takes, tag, 1) < MAX_TAKES then
          if redis.call('HLEN', takes) > MAX_TAKES_TRACKED then
            redis.call('DEL', takes)
          end
          redis.call('ZADD', KEYS[2 * n + 2], ARGV[1], tag)
          redis.call('HSET', KEYS[2 * n + 1], tag,
            '[' .. raw .. ', ' .. cjson.encode(info.exchange) .. ', ' .. cjson.encode(info.routing_key) .. ']')
          return {i, raw, 1, tag}
        end
        redis.call('HDEL', takes, tag)
        why = 2
      end
    end
    redis.call('LPUSH', KEYS[n + i], ARGV[2] .. ':' .. raw)
    return {i, raw, why, ''}
  end
end
return false
""".replace("MAX_TAKES_TRACKED", str(MAX_TAKES_TRACKED)).replace("MAX_TAKES", str(MAX_TAKES))


#: Moves an entry the take script recorded to a quarantine list, atomically. KEYS: the quarantine
#: list, unacked, its index, the takes hash; ARGV: the quarantine element, the delivery tag.
MOVE_SCRIPT = """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
return 1
"""


def _call(client: Any, *args: Any) -> Any:
    """Run a command with its keys exactly as given: kombu's client adds the global key prefix to
    the keys of some commands only (not LRANGE, LREM, EVAL), so keys here are prefixed by hand."""
    execute: Any = redis.Redis.execute_command
    return execute(client, *args)


#: kombu's Redis channels; their private fetch methods (``_brpop_start``/``_brpop_read``, stable
#: since kombu 3) are what this module replaces, and the type stubs do not describe them.
_RedisChannel: Any = kombu_redis.Channel
_SentinelChannel: Any = kombu_redis.SentinelChannel


def stage_list(queue: str, sep: str = "\x06\x16") -> str:
    """The stage list of ``queue``: where a fetch moves a message for an instant (see above)."""
    return f"{queue}{sep}{STAGE}"


def quarantine_list(queue: str, sep: str = "\x06\x16") -> str:
    """The quarantine list of ``queue``: entries that cannot be delivered, until they are stored."""
    return f"{queue}{sep}{QUARANTINE}"


def split_entry(element: bytes) -> tuple[str, bytes]:
    """(entry id, entry) of a quarantine list element (``<id>:<entry>``).

    An element that is not in that form (written by something else) is its own entry, under an id
    made from its content.
    """
    entry_id, sep, entry = element.partition(b":")
    if sep and 0 < len(entry_id) <= 64 and entry_id.isalnum():
        return entry_id.decode("ascii"), entry
    return "h" + hashlib.sha256(element).hexdigest()[:32], element


def version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


class FetchQoS(kombu_redis.QoS):
    """kombu's Redis QoS; a delivery the take script already recorded is not recorded again.

    kombu records every delivery in ``unacked`` (``QoS.append``: a round trip that writes the whole
    message again). For a message the script took, that record exists already; the same round
    trip clears the message's take count instead, now that it was delivered.
    """

    channel: Any

    def append(self, message: Any, delivery_tag: str) -> None:
        channel = self.channel
        if delivery_tag != getattr(channel, "_taken_tag", None):
            super().append(message, delivery_tag)  # not from the script (basic_get): kombu's record
            return
        channel._taken_tag = None
        with channel.conn_or_acquire() as client:  # kombu's client prefixes HDEL's key, as for its own acks
            client.hdel(TAKES_KEY, delivery_tag)
        virtual.QoS.append(self, message, delivery_tag)

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        """kombu's restore of an unacknowledged message, for records it cannot restore.

        kombu's restore (a requeue, the visibility-timeout sweep) would raise on a record that is
        not UTF-8 JSON, stopping the worker that sweeps, and drops one whose ``headers`` is not an
        object ("Could not restore message"). A worker killed between the fetch script and its
        check leaves such a record; it is moved to the quarantine list instead, and stored.
        """
        channel = self.channel
        with channel.conn_or_acquire(client) as client:
            record = client.hget(self.unacked_key, tag)
            why = channel._unrestorable(record)
            if why is None:
                try:
                    super().restore_by_tag(tag, client=client, leftmost=leftmost)
                    return
                except channel._io_errors():
                    raise
                except Exception as exc:
                    why = f"kombu could not give it back to its queue ({type(exc).__name__}: {exc})"
            channel._quarantine_record(client, tag, record, why)


class AtomicFetch:
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
    #: when the quarantine lists of this channel's queues are next looked at
    _quarantine_due = 0.0
    _fetches = 0
    _run_id = ""

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

    def _quarantine(self, queue: str) -> str:
        return quarantine_list(queue, self.sep)

    def _next_entry_id(self) -> str:
        """A new id for an entry the script may quarantine: unique across workers and restarts."""
        if not self._run_id:
            self._run_id = os.urandom(8).hex()
        self._fetches += 1
        return f"{self._run_id}{self._fetches:x}"

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
        pairs = [(queue, self._stage(queue)) for queue in queues]
        pairs += [(queue, self._q_for_pri(queue, pri)) for pri in self.priority_steps for queue in queues]
        prefix = self.global_keyprefix or ""
        keys = [prefix + key for _, key in pairs]
        quarantines = [prefix + self._quarantine(queue) for queue, _ in pairs]
        waited = len(queues)  # index of the list BLMOVE waits on: the first queue's main list
        wait = float(timeout or 0)
        if len(queues) > 1 or monotonic() < self._short_wait_until:
            wait = min(wait, SHORT_WAIT) if wait else SHORT_WAIT
        self._fetch_id = self._next_entry_id()
        commands = [
            ("BLMOVE", keys[waited], keys[0], "RIGHT", "LEFT", f"{wait:g}"),
            (
                "EVALSHA", self._take_sha, 2 * len(keys) + 3, *keys, *quarantines,
                prefix + self.unacked_key, prefix + self.unacked_index_key, prefix + TAKES_KEY,
                repr(time()), self._fetch_id,
            ),
        ]  # fmt: skip
        connection = self.client.connection
        self._fetch_keys = pairs
        self._fetch_waited = waited
        self._in_poll = connection
        self._brpop_sent_at = monotonic()
        connection.send_packed_command(connection.pack_commands(commands))

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

    def _move_to_quarantine(self, queue: str, item: bytes, tag: bytes, why: str) -> None:
        """Move an entry the script recorded as unacknowledged to the quarantine list, atomically."""
        entry_id = self._next_entry_id()
        prefix = self.global_keyprefix or ""
        keys = (self._quarantine(queue), self.unacked_key, self.unacked_index_key, TAKES_KEY)
        with self.conn_or_acquire() as client:
            element = entry_id.encode() + b":" + item
            _call(client, "EVAL", MOVE_SCRIPT, len(keys), *(prefix + k for k in keys), element, tag)
        self._quarantined(queue, entry_id, item, why)

    # -- quarantine ---------------------------------------------------------------------------

    def _io_errors(self) -> tuple[type[BaseException], ...]:
        """The connection errors that are about the connection (kombu counts KeyError among them)."""
        return tuple(e for e in self.connection_errors if not issubclass(e, LookupError))

    def _unrestorable(self, record: bytes | None) -> str | None:
        """Why an unacknowledged record cannot be restored by kombu, or None if it can (or is gone)."""
        if record is None:
            return None
        try:
            text = record.decode("utf-8")
        except UnicodeDecodeError:
            return "its unacknowledged record is not UTF-8 text"
        try:
            entry = loads(text)
        except Exception:
            return "its unacknowledged record is not JSON"
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], dict)):
            return "its unacknowledged record is not [message, exchange, routing key]"
        try:
            check(entry[0], self.codecs)
        except Undeliverable as exc:
            return str(exc)
        return None

    def _quarantine_record(self, client: Any, tag: Any, record: bytes | None, why: str) -> None:
        """Move an unacknowledged record to the restore quarantine list (atomically), to be stored."""
        prefix = self.global_keyprefix or ""
        if record is None:
            return
        element = self._next_entry_id().encode() + b":" + record
        keys = (QUARANTINE_RESTORE, self.unacked_key, self.unacked_index_key, TAKES_KEY)
        _call(client, "EVAL", MOVE_SCRIPT, len(keys), *(prefix + k for k in keys), element, tag)
        logger.error("celery_reliable: an unacknowledged message cannot be given back to its queue (%s); "
                     "it is quarantined to be stored", why)  # fmt: skip
        self._quarantine_due = 0.0  # stored by this worker's next fetch

    def _quarantine_handler(self) -> QuarantineHandler | None:
        client = getattr(self.connection, "client", None)
        handler: QuarantineHandler | None = getattr(client, "reliable_quarantine_handler", None)
        return handler

    def _quarantined(self, queue: str, entry_id: str, item: bytes, why: str | None) -> None:
        """Store an entry just quarantined, then take it off the quarantine list."""
        handler = self._quarantine_handler()
        if handler is None:
            logger.error(
                "celery_reliable: an entry of queue %s cannot be delivered (%s); it is kept in list %r",
                queue, why or self._why(item), self._quarantine(queue),
            )  # fmt: skip
            return
        if not self._store_element(handler, queue, entry_id, item, entry_id.encode() + b":" + item, why):
            self._quarantine_due = min(self._quarantine_due, monotonic() + QUARANTINE_RETRY)

    def _sweep_quarantine(self) -> None:
        """Store the entries left in the quarantine lists of this channel's queues (by a dead worker)."""
        self._quarantine_due = monotonic() + QUARANTINE_SWEEP
        handler = self._quarantine_handler()
        if handler is None:
            return
        prefix = self.global_keyprefix or ""
        lists = [(queue, self._quarantine(queue)) for queue in self.active_queues]
        for queue, key in [*lists, ("", QUARANTINE_RESTORE)]:
            with self.conn_or_acquire() as client:
                elements = _call(client, "LRANGE", prefix + key, -QUARANTINE_BATCH, -1)
            for element in reversed(elements):  # oldest first
                entry_id, item = split_entry(element)
                why = None
                if key == QUARANTINE_RESTORE:
                    why = f"unacknowledged, and kombu cannot give it back to a queue: {self._unrestorable(item)}"
                if not self._store_element(handler, queue, entry_id, item, element, why, key):
                    self._quarantine_due = monotonic() + QUARANTINE_RETRY
                    return

    def _why(self, item: bytes) -> str:
        try:
            parse(item, self.codecs)
        except Undeliverable as exc:
            return str(exc)
        return "the fetch script could not read it as a message"

    def _store_element(
        self,
        handler: QuarantineHandler,
        queue: str,
        entry_id: str,
        item: bytes,
        element: bytes,
        why: str | None,
        key: str | None = None,
    ) -> bool:
        """Store one quarantined entry with ``handler``; once stored, remove ``element`` from its list."""
        try:
            stored = handler(item, queue, why or self._why(item), entry_id)
        except Exception:
            logger.exception("celery_reliable: storing a quarantined entry of queue %s failed", queue)
            stored = False
        if stored:
            prefix = self.global_keyprefix or ""
            with self.conn_or_acquire() as client:
                _call(client, "LREM", prefix + (key or self._quarantine(queue)), 1, element)
        return bool(stored)


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

    def switch(self, conn_str: str) -> None:
        super().switch(conn_str)
        transport = BY_SCHEME.get(str(self.transport_cls))
        if transport is not None:
            self.transport_cls = transport


def fetch_connection(connection: Connection, transport: str) -> FetchConnection:
    """``connection`` (as Celery made it, with all its settings) on the atomic-fetch ``transport``."""
    return FetchConnection(**dict(connection._info(resolve=False), transport=transport))
