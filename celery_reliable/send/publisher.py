"""The per-process publisher of an app: one connection and producer for confirmed, bounded sends.

:class:`Publisher` sends one message (:meth:`~Publisher.send`) or a batch: on Redis, messages
built ahead are written directly (:mod:`celery_reliable.broker.redis_wire`); on RabbitMQ a batch
is published on a confirm-mode channel and its confirms awaited together
(:mod:`celery_reliable.broker.amqp_confirms`); anything else goes through kombu as ``send_task``
would. It fails fast: retrying is its callers' job (``publish()``, the relay).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import weakref
from typing import Any

from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu import Queue
from kombu.common import Broadcast
from kombu.exceptions import EncodeError

from ..broker import redis_wire
from ..broker.amqp_confirms import Confirms, confirm_channel
from ..broker.facts import AMQP_SCHEMES, REDIS_SCHEMES, SEND_TASK_APPLIES_TASK_OPTIONS, broker_scheme
from ..config import get_settings
from ..message.trace import resumed
from .build import Built, SendContext, build, fast_path

logger = logging.getLogger(__name__)


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
        self.fast = fast_path(app)
        self.origin = anon_nodename()
        #: (id(queue), id(channel)) -> (queue, channel, copy of the queue bound to the channel)
        self.bound: dict[tuple[int, int], tuple[Queue, Any, Queue]] = {}
        self.confirm_producer: Any = None  # RabbitMQ: producer on a channel publishing without waiting
        self.confirms = Confirms()
        self.facts = redis_wire.Facts.of(app)
        self._direct: bool | None = None  # Redis: write entries directly (decided on first use)
        self.declared: set[str] = set()
        self.wait_replicas = settings.redis_wait_replicas
        self.wait_timeout = settings.redis_wait_timeout

    def context(self, detached: bool = False) -> SendContext:
        """What :meth:`send` reads from the app, read once for a batch of messages.

        ``detached``: messages sent on behalf of another process (the relay) do not become
        children of the task running here.
        """
        ctx = SendContext(self.app)
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
        ctx: SendContext | None = None,
    ) -> None:
        """Publish once, as ``app.send_task(..., producer=..., retry=False)``; raises whatever the transport raised.

        The message is the one ``send_task`` builds, with the same routing, signals and events;
        for a message without eta or expires (most) it is built here with the per-message work
        only (``ctx``: the settings read once per batch), the rest go through ``send_task``.
        """
        producer = producer or self.producer
        ctx = ctx or SendContext(self.app)
        built = None
        if producer is self.producer and self.direct_redis():
            built = self.build(name, args, kwargs, task_id, options, ctx)
            found = None if built is None else redis_wire.entry_of(self.app, self.facts, built.message, built.opts)
            if built is not None and found is not None:
                entry, queue = found
                with producer.connection._reraise_as_library_errors():
                    self.declare_once(queue)
                    if not built.ignore_result:
                        ctx.on_task_call(producer, task_id)
                    redis_wire.write(self.producer.channel, [entry], self.wait_replicas, self.wait_timeout)
                self._add_trail(ctx, task_id, built.ignore_result)
                return
        # a message from the pending table goes out in the trace it was kept with (publish hooks see it)
        with resumed(options.get("headers")):
            self._send_kombu(name, args, kwargs, task_id, options, producer, ctx, built)
        if self.wait_replicas and self.scheme in REDIS_SCHEMES:
            # kombu wrote on the pool's one connection of this (locked) publisher: WAIT there
            redis_wire.write(self.producer.channel, [], self.wait_replicas, self.wait_timeout)

    def _send_kombu(
        self,
        name: str,
        args: Any,
        kwargs: Any,
        task_id: str,
        options: dict[str, Any],
        producer: Any,
        ctx: SendContext,
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
        self, name: str, args: Any, kwargs: Any, task_id: str, options: dict[str, Any], ctx: SendContext
    ) -> Built | None:
        """The message ``send_task`` would build, or None (see :func:`celery_reliable.send.build.build`)."""
        return build(ctx, name, args, kwargs, task_id, options, self.extra, self.origin)

    def entry(
        self, name: str, args: Any, kwargs: Any, task_id: str, options: dict[str, Any], ctx: SendContext
    ) -> redis_wire.Entry | None:
        """The Redis list entry of a message, built without a connection; None: kombu must send it."""
        if not self.direct_redis():
            return None
        built = self.build(name, args, kwargs, task_id, options, ctx)
        found = None if built is None else redis_wire.entry_of(self.app, self.facts, built.message, built.opts)
        return None if found is None else found[0]

    def direct_redis(self) -> bool:
        """Whether messages may be written to Redis directly (see :mod:`celery_reliable.broker.redis_wire`)."""
        if self._direct is None:
            self._direct = self.fast and redis_wire.usable(self.app, self.scheme, self.facts)
        return self._direct and not redis_wire.signals_connected()

    def declare_once(self, queue: Queue | None) -> None:
        """Declare a queue (on Redis: its binding) the first time this publisher sends to it."""
        if queue is None or queue.name in self.declared:
            return
        self.producer.maybe_declare(self._bound(queue, self.producer))
        self.declared.add(queue.name)

    def _add_trail(self, ctx: SendContext, task_id: str, ignore_result: bool) -> None:
        if ctx.parent:
            result = self.app.AsyncResult(task_id)
            result.ignored = ignore_result
            ctx.parent.add_trail(result)

    def _send_task(
        self, name: str, args: Any, kwargs: Any, task_id: str, options: dict[str, Any], producer: Any
    ) -> None:
        if not SEND_TASK_APPLIES_TASK_OPTIONS:  # Celery < 5.7: as apply_async would, and as build() does
            _task_type, defaults = SendContext(self.app).task(name)
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

    def _confirm_producer(self) -> Any:
        """A producer on a channel of its own, in confirm mode, that does not wait per message."""
        if self.confirm_producer is None:
            channel, self.confirms = confirm_channel(self.connection)
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


@functools.cache
def transient_errors() -> tuple[type[BaseException], ...]:
    """Errors a later send may not hit again (the broker or the network); anything else is the message.

    Read on first use: redis-py and py-amqp load only in a process that meets an error.
    """
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


def is_bad_input(exc: BaseException) -> bool:
    """True for errors that no resend can fix: the message itself cannot be encoded or packed."""
    import struct

    return isinstance(exc, EncodeError | TypeError | struct.error) and not isinstance(exc, transient_errors())
