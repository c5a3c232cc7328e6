"""Bounded hand-backs: a message returned to the broker again and again ends in the table.

A worker hands a message back to the broker (``reject(requeue=True)``) when it cannot finish it
now: its retry could not be published, its failure could not be stored, a lost pool process's
retry could not be sent. Each of these is meant for a passing outage; a cause that does not pass
would hand the same message back for ever, as fast as the broker redelivers it.

So every hand-back of a ReliableTask message goes through :class:`ReliableRequest.reject
<celery_reliable.worker.request.ReliableRequest>`, in the worker's main process, which counts them per
task id (:data:`counter`, bounded memory), waits a growing pause before each one (the worker's
own timer: its event loop is not blocked) and, once a message has been handed back
:data:`REQUEUE_LIMIT` times in a row, stores its failure and acknowledges it instead. Only a
failure that cannot be stored either (the database is down too) is handed back after that, still
paced. A retry that could not be sent for a reason that does not pass (arguments that cannot be
encoded, a signature that does not fit) is not handed back at all: it is stored at once.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from kombu.exceptions import OperationalError

from ..exceptions import PermanentError, StoreError
from ..store.failures import FailureRecord

logger = logging.getLogger(__name__)

#: Hand-backs of one message in a row (no success, retry or ack in between) after which its failure
#: is stored instead.
REQUEUE_LIMIT = 10
#: Pause before the n-th hand-back of a message: PAUSE_BASE * 2**(n-1) seconds, at most PAUSE_MAX.
PAUSE_BASE = 0.5
PAUSE_MAX = 10.0
#: Task ids counted at once; the oldest is forgotten first (memory stays bounded whatever arrives).
TRACKED = 10_000

#: Reason of a failure stored because its message reached :data:`REQUEUE_LIMIT`.
REASON_LIMIT = "requeue_limit"
#: Reason of a failure whose retry could not be published.
REASON_RETRY = "retry_not_sent"


class RequeueCounter:
    """Hand-backs per task id in this process, the oldest ids forgotten beyond ``size``."""

    def __init__(self, size: int = TRACKED) -> None:
        self.size = size
        self._counts: OrderedDict[str, int] = OrderedDict()

    def add(self, key: str) -> int:
        """Count one more hand-back of ``key``; return how many in a row."""
        count = self._counts.pop(key, 0) + 1
        self._counts[key] = count
        while len(self._counts) > self.size:
            self._counts.popitem(last=False)
        return count

    def forget(self, key: str) -> None:
        self._counts.pop(key, None)

    def __len__(self) -> int:
        return len(self._counts)


#: The worker main process's counter (pool processes never hand a message back themselves).
counter = RequeueCounter()


def pause_for(count: int) -> float:
    """Seconds to wait before the ``count``-th hand-back in a row."""
    return min(PAUSE_MAX, PAUSE_BASE * 2.0 ** min(max(count - 1, 0), 30))


_timer: Any = None


def use_timer(timer: Any) -> None:
    """The worker's timer (its event loop's), set by the celery_reliable consumer."""
    global _timer
    _timer = timer


def later(pause: float, function: Callable[..., Any], *args: Any) -> None:
    """Call ``function(*args)`` after ``pause`` seconds on the worker's timer (at once without one)."""
    if _timer is None or pause <= 0:
        function(*args)
        return
    _timer.call_after(pause, function, args)


@functools.cache
def transient_classes() -> tuple[type[BaseException], ...]:
    """The errors of a broker or database that is away for now (read on first use: redis-py and
    py-amqp load only in a process that meets an error)."""
    classes: list[type[BaseException]] = [OperationalError, OSError, socket.timeout, StoreError]
    try:
        from redis import exceptions as redis_errors

        classes += [redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.BusyLoadingError]
        classes += [redis_errors.ReadOnlyError, redis_errors.TryAgainError]
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    try:
        from amqp import exceptions as amqp_errors

        classes += [amqp_errors.RecoverableConnectionError, amqp_errors.RecoverableChannelError]
    except ImportError:  # pragma: no cover - amqp comes with kombu
        pass
    return tuple(classes)


def is_transient(exc: BaseException) -> bool:
    """True for an error that passes by itself: a broker or database that is away."""
    return isinstance(exc, transient_classes()) and not isinstance(exc, PermanentError)


class HandedBack(Exception):
    """The reason of a ``Reject(requeue=True)`` from a pool process: why, and what to store.

    The worker's main process stores ``record`` when the message reaches :data:`REQUEUE_LIMIT`
    (it is the failure the pool process could not store, or the one to store if the retry never
    goes out). Picklable, so it crosses from the pool process intact.
    """

    def __init__(self, message: str, record: FailureRecord | None = None) -> None:
        super().__init__(message, record)

    @property
    def record(self) -> FailureRecord | None:
        record = self.args[1] if len(self.args) > 1 else None
        return record if isinstance(record, FailureRecord) else None

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RetryNotSentError(PermanentError):
    """A task's retry could not be published for a reason that does not pass; stored at once."""

    reliable_reason = REASON_RETRY
