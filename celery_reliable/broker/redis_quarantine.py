"""Quarantine: what the atomic fetch does with a queue entry it cannot deliver.

kombu's Redis transport trusts every entry of a queue list, and one it cannot read stops the
worker. The fetch script moves such an entry, in the same atomic step that takes it, to the
queue's *quarantine* list (``<queue>\x06\x16quarantine``); an entry the script recorded but
Python finds undeliverable is moved there from ``unacked`` in one script (``lua/move.lua``); an
unacknowledged record kombu's restore cannot give back goes to :data:`QUARANTINE_RESTORE`. The
worker stores each quarantined entry raw in the failed-task table (its consumer sets the handler)
and only then removes it from the list; entries left by a dead worker are stored by the next
worker that starts on that queue, or by any worker's periodic sweep. The fetch script also counts
how often each delivery tag was taken (:data:`TAKES_KEY`): a message taken :data:`MAX_TAKES` times
without being delivered stopped its worker each time, and is quarantined instead of taken again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from time import monotonic
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import loads

from .lua import script
from .redis_envelope import Undeliverable, check, parse

logger = logging.getLogger(__name__)


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
#: Moves an entry the take script recorded to a quarantine list (``lua/move.lua``).
MOVE_SCRIPT = script("move.lua")


def _call(client: Any, *args: Any) -> Any:
    """Run a command with its keys exactly as given: kombu's client adds the global key prefix to
    the keys of some commands only (not LRANGE, LREM, EVAL), so keys here are prefixed by hand."""
    execute: Any = redis.Redis.execute_command
    return execute(client, *args)


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

    def _remove_from_indices(self, delivery_tag: Any, pipe: Any = None) -> Any:
        """kombu's removal from ``unacked`` (ack, reject, restore), and from the worker's held set."""
        pipe = super()._remove_from_indices(delivery_tag, pipe)  # type: ignore[misc]
        held = getattr(self.channel, "held_key", None)
        return pipe.srem(held, delivery_tag) if held else pipe

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


class Quarantine:
    """Moves undeliverable entries to quarantine lists and stores them; mixed into the fetch channels."""

    # provided by kombu's channel
    connection: Any
    connection_errors: tuple[type[BaseException], ...]
    active_queues: Any
    codecs: Any
    global_keyprefix: str
    unacked_key: str
    unacked_index_key: str
    sep: str
    conn_or_acquire: Any

    #: when the quarantine lists of this channel's queues are next looked at
    _quarantine_due = 0.0
    _fetches = 0
    _run_id = ""

    def _quarantine(self, queue: str) -> str:
        return quarantine_list(queue, self.sep)

    def _next_entry_id(self) -> str:
        """A new id for an entry the script may quarantine: unique across workers and restarts."""
        if not self._run_id:
            self._run_id = os.urandom(8).hex()
        self._fetches += 1
        return f"{self._run_id}{self._fetches:x}"

    def _move_to_quarantine(self, queue: str, item: bytes, tag: bytes, why: str) -> None:
        """Move an entry the script recorded as unacknowledged to the quarantine list, atomically."""
        entry_id = self._next_entry_id()
        prefix = self.global_keyprefix or ""
        keys = (self._quarantine(queue), self.unacked_key, self.unacked_index_key, TAKES_KEY)
        with self.conn_or_acquire() as client:
            element = entry_id.encode() + b":" + item
            _call(client, "EVAL", MOVE_SCRIPT, len(keys), *(prefix + k for k in keys), element, tag)
        self._quarantined(queue, entry_id, item, why)

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
