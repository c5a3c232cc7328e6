"""``apublish()``: :func:`~celery_reliable.send.publish.publish` for an asyncio application.

The same steps and the same result: the message is checked in the event loop (no I/O), each
try at the broker and the write to the pending table run on a small thread pool of this
process, and the waits between tries are ``asyncio.sleep``. The loop is never held by a socket:
the blocking client (kombu, SQLAlchemy) runs off it, with the bounds ``publish()`` sets
(``reliable_publish_timeout`` per broker operation).

The pool is this module's own, not the loop's default executor: while a broker is away its
threads wait on it, and the application's own ``asyncio.to_thread`` calls must not queue behind
them.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from celery import Celery

from ..config import get_settings
from ..exceptions import PublishError
from ..message.prepare import prepare, send_options
from ..message.trace import with_context
from ..store.pending import PendingValues
from .build import SendContext
from .publish import PublishResult, keep, log_retry, retry_delay, send_once

_T = TypeVar("_T")

logger = logging.getLogger(__name__)

#: Threads that run the blocking steps of ``apublish()`` and of the async outbox's post-commit
#: send. Sends to one broker take turns on the app's one connection anyway; the others write
#: to the pending table meanwhile.
THREADS = 4

_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def executor() -> ThreadPoolExecutor:
    """The thread pool of this process (a new one after a fork: threads do not cross it)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(THREADS, thread_name_prefix="celery-reliable-async"))
        return _pool[1]


async def apublish(
    app: Celery,
    name: str | Any,
    args: Any = None,
    kwargs: Any = None,
    **options: Any,
) -> PublishResult:
    """Send task ``name`` (a name or a task) reliably, from a coroutine: sent, or kept for the relay.

    The contract of :func:`~celery_reliable.publish`: the same checks, tries, backoff, fallback
    and result; only the waiting is asynchronous. A cancelled call (a client gone, a timeout
    around it) still ends with its message sent or kept: the pool finishes the try in flight, and
    what is not sent by then goes to the pending table for the relay (same task id).

    Raises:
        PublishError: bad input (nothing sent or stored), or the broker is unreachable *and*
            the pending table could not be written — the message was neither sent nor kept.
    """
    if not isinstance(name, str):
        name = name.name
    values = with_context(prepare(app, name, args, kwargs, options))  # the caller's trace travels with it
    settings = get_settings(app)
    send_args, send_kwargs = list(args or ()), dict(kwargs or {})
    opts = send_options(app, values)
    # Read here, not in the thread: the current task (the new message's parent) is thread-local.
    ctx = SendContext(app)
    tries = settings.publish_retries + 1
    last_error: BaseException | None = None
    step: _Step | None = None
    try:
        for attempt in range(tries):
            step = _Step("send", _submit(send_once, app, name, send_args, send_kwargs, values.task_id, opts, ctx))
            last_error = await asyncio.wrap_future(step.future)
            if last_error is None:
                return PublishResult(values.task_id, sent=True)
            if attempt < settings.publish_retries:
                delay = retry_delay(settings.publish_retry_backoff, attempt)
                log_retry(name, values.task_id, last_error, attempt, tries, delay)
                await asyncio.sleep(delay)
        step = _Step("keep", _submit(keep, app, name, values, last_error))
        return await asyncio.wrap_future(step.future)
    except asyncio.CancelledError:
        _submit(_finish_cancelled, app, name, values, step, last_error)
        raise


class _Step:
    """What a cancelled ``apublish()`` was doing: a try at the broker or the fallback write."""

    def __init__(self, kind: str, future: Future[Any]) -> None:
        self.kind = kind
        self.future = future


def _submit(func: Callable[..., _T], *args: Any) -> Future[_T]:
    """``func(*args)`` on the pool, in the caller's context (its trace)."""
    return executor().submit(functools.partial(contextvars.copy_context().run, func, *args))


def _finish_cancelled(
    app: Celery, name: str, values: PendingValues, step: _Step | None, last_error: BaseException | None
) -> None:
    """Runs on the pool after the caller cancelled: the message ends sent or kept, never dropped."""
    if step is not None and not step.future.cancelled():
        try:
            outcome = step.future.result()  # the step in flight completes on its thread
        except Exception:
            logger.exception("%s[%s]: the fallback write of a cancelled apublish() failed", name, values.task_id)
            return
        if step.kind == "keep" or outcome is None:
            return  # kept, or sent by the try in flight
        last_error = outcome
    error = last_error or asyncio.CancelledError("cancelled before its first try at the broker")
    try:
        keep(app, name, values, error)
    except PublishError as exc:
        logger.error("apublish() cancelled: %s", exc)
