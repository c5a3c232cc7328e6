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
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from celery import Celery

from ..config import get_settings
from ..message.prepare import prepare, send_options
from ..message.trace import with_context
from .build import SendContext
from .publish import PublishResult, keep, log_retry, retry_delay, send_once

_T = TypeVar("_T")

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


async def off_loop(func: Callable[..., _T], *args: Any) -> _T:
    """``func(*args)`` on the pool, in the caller's context (its trace), awaited without holding the event loop."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(executor(), functools.partial(context.run, func, *args))


async def apublish(
    app: Celery,
    name: str | Any,
    args: Any = None,
    kwargs: Any = None,
    **options: Any,
) -> PublishResult:
    """Send task ``name`` (a name or a task) reliably, from a coroutine: sent, or kept for the relay.

    The contract of :func:`~celery_reliable.publish`: the same checks, tries, backoff, fallback
    and result; only the waiting is asynchronous. A cancelled call stops between steps: a send
    or write already handed to a thread still completes, so the message may have been sent or
    kept (same task id); use the outbox where a cancelled request must not lose its message.

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
    for attempt in range(tries):
        last_error = await off_loop(send_once, app, name, send_args, send_kwargs, values.task_id, opts, ctx)
        if last_error is None:
            return PublishResult(values.task_id, sent=True)
        if attempt < settings.publish_retries:
            delay = retry_delay(settings.publish_retry_backoff, attempt)
            log_retry(name, values.task_id, last_error, attempt, tries, delay)
            await asyncio.sleep(delay)
    return await off_loop(keep, app, name, values, last_error)
