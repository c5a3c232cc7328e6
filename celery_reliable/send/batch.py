"""Sending a batch: the relay's ways to the broker, each reporting what became of every message.

:func:`send_batch` takes messages built ahead (Redis list entries, written directly in one
pipeline whose replies are read one by one) and messages still to build (published on a RabbitMQ
confirm-mode channel and their confirms awaited together, or sent one at a time), and says of
each: sent, failed (counted against it), invalid (no broker would take it), or not tried.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..broker import redis_wire
from ..broker.amqp_confirms import Confirms, read_arrived
from ..broker.redis_wire import Entry
from .publisher import Publisher, is_bad_input

#: RabbitMQ: bytes of messages written at once (then the confirms that arrived are read).
WINDOW_BYTES = 256 * 1024

#: A message to build and send: task name, args, kwargs, task id, ``send_task`` options.
Message = tuple[str, Any, Any, str, dict[str, Any]]


@dataclass
class BatchOutcome:
    """What became of each message of a batch (indexes into the batch)."""

    sent: list[int] = field(default_factory=list)
    #: sends that failed: counted against the message (backed off, dead after too many)
    failed: list[tuple[int, str]] = field(default_factory=list)
    #: messages no broker would take as they are (they cannot be encoded or packed)
    invalid: list[tuple[int, str]] = field(default_factory=list)
    #: not tried: the broker went away first
    untried: list[int] = field(default_factory=list)
    #: the rest of the pass would fare no better (broker away, out of memory, replicas behind)
    broker_down: bool = False
    #: the connection is suspect: the next send should use a new publisher
    reset: bool = False

    def shifted(self, by: int) -> BatchOutcome:
        """The same outcome with every index moved by ``by`` (a part of a larger batch)."""
        return BatchOutcome(
            [i + by for i in self.sent], [(i + by, e) for i, e in self.failed], [(i + by, e) for i, e in self.invalid],
            [i + by for i in self.untried], self.broker_down, self.reset,
        )  # fmt: skip

    def add(self, other: BatchOutcome) -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.invalid += other.invalid
        self.untried += other.untried
        self.broker_down = self.broker_down or other.broker_down
        self.reset = self.reset or other.reset


def send_batch(
    publisher: Publisher, entries: Sequence[Entry], messages: Sequence[Message], tags: Sequence[str | None] = ()
) -> BatchOutcome:
    """Send ``entries`` (built ahead, Redis) then ``messages``; index ``i`` of the outcome is
    ``entries[i]``, index ``len(entries) + j`` is ``messages[j]``; ``tags``: delivery tags chosen for
    entries (see :func:`celery_reliable.broker.redis_wire.write_each`). Holds the publisher's lock."""
    outcome = BatchOutcome()
    offset = len(entries)
    with publisher.lock:
        if entries:
            outcome.add(write_entries(publisher, entries, tags))
        if messages and outcome.broker_down:
            outcome.untried += range(offset, offset + len(messages))
        elif messages and publisher.batch_confirms:
            # Publish the batch on a confirm-mode channel, then wait for the confirms: sent = acked.
            confirmed = send_confirmed(publisher, messages)
            confirmed.reset = confirmed.broker_down
            outcome.add(confirmed.shifted(offset))
        elif messages:
            # Redis through kombu (messages it must route itself), other brokers: one at a time. (kombu's
            # publish batch runs a pipeline without reading each reply: after an error reply it cannot
            # tell which messages Redis took, and they would be sent again.)
            outcome.add(send_each(publisher, messages).shifted(offset))
    return outcome


def write_entries(publisher: Publisher, entries: Sequence[Entry], tags: Sequence[str | None] = ()) -> BatchOutcome:
    """One pipeline of LPUSHes (and WAIT): each entry is sent exactly when the LPUSH carrying it
    succeeded; only the entries Redis refused fail. A lost connection counts once (the first)."""
    outcome = BatchOutcome()
    try:
        written = redis_wire.write_each(
            publisher.producer.channel, list(entries), publisher.wait_replicas, publisher.wait_timeout, tags
        )
    except Exception as exc:
        outcome.failed.append((0, f"{type(exc).__name__}: {exc}"))
        outcome.untried += range(1, len(entries))
        outcome.broker_down = outcome.reset = True
        return outcome
    server_refused = False
    for index in range(len(entries)):
        refused = written.errors.get(index)
        if refused is not None:
            outcome.failed.append((index, f"{type(refused).__name__}: {refused}"))
            server_refused = server_refused or not redis_wire.refused_by_key(refused)
        elif written.not_replicated:
            # In Redis but not on enough replicas: sent again later (same task ids).
            outcome.failed.append((index, f"NotReplicated: {written.not_replicated}"))
        else:
            outcome.sent.append(index)
    if server_refused or written.not_replicated:
        # Out of memory, a read-only replica, replicas behind: the rest of this pass would fare no better.
        outcome.broker_down = True
        outcome.reset = server_refused
    return outcome


def send_each(publisher: Publisher, messages: Sequence[Message]) -> BatchOutcome:
    """Each message's own send: bad data makes it invalid, a list key Redis refuses fails it alone,
    anything else is the broker (that message failed, the rest not tried)."""
    outcome = BatchOutcome()
    ctx = publisher.context(detached=True)
    for index, (name, args, kwargs, task_id, options) in enumerate(messages):
        try:
            publisher.send(name, args, kwargs, task_id, options, ctx=ctx)
            outcome.sent.append(index)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if is_bad_input(exc):
                outcome.invalid.append((index, error))
                continue
            if redis_wire.refused_by_key(exc):
                outcome.failed.append((index, error))
                continue
            outcome.failed.append((index, error))
            outcome.untried += range(index + 1, len(messages))
            outcome.broker_down = outcome.reset = True
            break
    return outcome


def send_confirmed(publisher: Publisher, messages: Sequence[Message]) -> BatchOutcome:
    """RabbitMQ: publish a batch on a confirm-mode channel, then wait for every confirm.

    Messages are written a window at a time (:data:`WINDOW_BYTES` in one write), and the
    confirms that have arrived are read after each window; then the rest are awaited. A message
    counts as sent only when the broker acked it. Messages written but not acked (nack, timeout,
    lost connection, a write that failed) fail; after a broker error the rest, and messages
    published but not yet written, are not tried. Each write, and the wait for the last
    confirms, is bounded by ``reliable_publish_timeout``.
    """
    outcome = BatchOutcome()
    spans: list[tuple[int, int, int]] = []  # (message index, first tag, end tag) as batch indexes
    current: int | None = 0  # the message being published when an error struck (connecting: the first)
    written = 0  # spans handed to the socket (spans[written:] are kept, not written)
    tried = 0  # messages looked at (published, or failed as bad input)
    error = ""
    try:
        producer = publisher._confirm_producer()
        confirms = publisher.confirms
        channel = producer.channel
        confirms.start()
        ctx = publisher.context()
        for index, (name, args, kwargs, task_id, options) in enumerate(messages):
            current = index
            before = len(confirms.results)
            try:
                publisher.send(name, args, kwargs, task_id, options, producer=producer, ctx=ctx)
            except Exception as exc:
                if is_bad_input(exc) and len(confirms.results) == before:
                    outcome.failed.append((index, f"{type(exc).__name__}: {exc}"))
                    tried = index + 1
                    continue
                raise
            spans.append((index, before, len(confirms.results)))
            current, tried = None, index + 1
            if confirms.unwritten_bytes >= WINDOW_BYTES:
                written = len(spans)
                _write_window(confirms, channel, publisher.timeout)
        current, written = None, len(spans)
        _write_window(confirms, channel, publisher.timeout)
        deadline = time.monotonic() + publisher.timeout
        for _ in range(1_000_000):
            if not confirms.open:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no publisher confirm within {publisher.timeout:g}s")
            publisher.connection.drain_events(timeout=remaining)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        outcome.broker_down = True
        if current is not None:
            outcome.failed.append((current, error))
            tried = current + 1
        outcome.untried = [index for index, _start, _end in spans[written:]] + list(range(tried, len(messages)))
        del spans[written:]
    for index, start, end in spans:
        result = publisher.confirms.confirmed(start, end)
        returned = publisher.confirms.returned.get(messages[index][3])
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


def _write_window(confirms: Confirms, channel: Any, timeout: float) -> None:
    """Write the messages published since the last window; handle the confirms that came meanwhile."""
    confirms.write(channel, timeout)
    read_arrived(channel)
