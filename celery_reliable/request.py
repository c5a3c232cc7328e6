"""The worker-side request of a ReliableTask.

Runs in the worker's main process, where a lost pool process or a hard time limit is seen:
``Task.on_failure`` is not called there for a lost process, so the failure is stored here,
before Celery acknowledges the message.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback  # type: ignore[attr-defined]
from billiard.exceptions import Terminated, WorkerLostError
from celery import signals
from celery.exceptions import Ignore, Reject, Retry, TimeLimitExceeded
from celery.utils.saferepr import saferepr
from celery.worker.request import Request
from celery.worker.state import task_ready

from . import events, record
from .exceptions import PermanentError
from .retry import backoff_delay
from .store.failures import record_failure
from .versions import celery_retries_lost_workers

logger = logging.getLogger(__name__)


def _unwrap(exc: BaseException) -> BaseException:
    inner: BaseException = exc.exc if isinstance(exc, ExceptionWithTraceback) else exc
    return inner


def _einfo(exc: BaseException) -> ExceptionInfo:
    try:
        raise exc
    except BaseException:
        return ExceptionInfo()


#: Whether Celery's own Request sends a retry for a lost pool process (Celery 5.7); on older
#: Celery, ReliableRequest sends it itself, the same way.
CELERY_RETRIES_LOST_WORKERS = celery_retries_lost_workers()


class ReliableRequest(Request):
    """Stores final worker-lost and time-limit failures before the ack; counts them as retries."""

    _reliable_done = False

    if TYPE_CHECKING:  # Celery internals used here (not in the type stubs)
        _context: Any
        _request_dict: dict[str, Any]
        _hostname: str
        _already_cancelled: bool
        _already_revoked: bool

    def _success_was_stored(self) -> Any:
        """Whether the lost pool process stored SUCCESS first (Celery 5.7 asks its result backend;
        older Celery does not, and neither do we: a result backend is optional)."""
        stored = getattr(super(), "_success_was_stored", None)
        return stored() if stored is not None else False

    def _failed_for_good(self, exc_info: ExceptionInfo, send_failed_event: bool, return_ok: bool) -> None:
        """Celery's failure handling of a stored worker-lost failure: acknowledged, never requeued.

        Celery 5.7 knows the retries ran out; before 5.7 its ``reject_on_worker_lost`` would
        requeue the message for ever, so it is off for this one call (the worker's main thread).
        """
        if CELERY_RETRIES_LOST_WORKERS:
            super().on_failure(exc_info, send_failed_event, return_ok)
            return
        task: Any = self.task
        had_own = "reject_on_worker_lost" in task.__dict__
        saved = task.__dict__.get("reject_on_worker_lost")
        task.reject_on_worker_lost = False
        try:
            super().on_failure(exc_info, send_failed_event, return_ok)
        finally:
            if had_own:
                task.reject_on_worker_lost = saved
            else:
                del task.reject_on_worker_lost

    def _retries_left(self) -> bool:
        max_retries = self.task.max_retries
        return max_retries is None or int(self._context.retries or 0) < max_retries

    def _store(self, exc: BaseException, reason: str, traceback: str | None) -> bool:
        """Write the failure row; on error give the message back to the broker."""
        try:
            failure = record.from_request(
                self.task.name, self._request_dict, exc, reason=reason,
                traceback=traceback, hostname=self._hostname,
            )  # fmt: skip
            row_id = record_failure(self.task.app, failure)
        except Exception as store_exc:
            logger.error(
                "Task %s[%s] (%s) could not be stored (%s); message returned to the broker",
                self.name, self.id, reason, store_exc,
            )  # fmt: skip
            self.reject(requeue=True)
            return False
        logger.error(
            "Task %s[%s] %s after %d attempt(s); stored as failed task %d",
            self.name, self.id, reason, failure.attempts, row_id,
        )  # fmt: skip
        return True

    def _retry_worker_lost(self, exc: BaseException, exc_info: ExceptionInfo) -> bool:
        """Celery's worker-lost retry, with our backoff instead of ``default_retry_delay``."""
        task: Any = self.task
        policy = task.policy
        cap = policy.backoff_max if policy.ceiling is None else min(policy.backoff_max, policy.ceiling)
        delay = backoff_delay(int(self._context.retries or 0), policy.backoff or 0.0, cap, policy.jitter)
        had_own = "default_retry_delay" in task.__dict__
        saved = task.__dict__.get("default_retry_delay")
        if not CELERY_RETRIES_LOST_WORKERS:
            return self._send_lost_retry(exc, exc_info, delay)
        task.default_retry_delay = delay  # read once by Celery, in this (single) main thread
        try:
            return bool(Request._retry_worker_lost(self, exc, exc_info))  # type: ignore[attr-defined]
        finally:
            if had_own:
                task.default_retry_delay = saved
            else:
                del task.default_retry_delay

    def _send_lost_retry(self, exc: BaseException, exc_info: ExceptionInfo, countdown: float) -> bool:
        """Celery before 5.7: send the retry of a lost or timed-out run ourselves.

        The new message carries ``retries + 1``, so the bound holds; the original is acknowledged
        only once the retry is with the broker. Returns False when it could not be sent.
        """
        task: Any = self.task
        context = self._context
        try:
            retries = int(context.retries or 0) + 1
            task.signature_from_request(context, countdown=countdown, retries=retries).apply_async()
        except Exception as send_exc:
            logger.error("Task %s[%s]: retry after a lost worker could not be sent (%r)", self.name, self.id, send_exc)
            return False
        if self.store_errors:
            task.backend.mark_as_retry(self.id, exc, exc_info.traceback, request=context)
        if task.acks_late:
            self.acknowledge()
        self.send_event("task-retried", exception=saferepr(exc), traceback=str(exc_info.traceback or ""))
        task.request_stack.push(context)
        try:
            task.on_retry(exc, self.id, self.args, self.kwargs, exc_info)
            signals.task_retry.send(
                sender=task,
                request=context,
                reason=Retry(exc=exc, when=countdown),  # type: ignore[arg-type]
                einfo=exc_info,
            )
        finally:
            task.request_stack.pop()
        logger.info("Task %s[%s] retry %d after %r in %.1fs", self.name, self.id, int(context.retries or 0) + 1,
                    exc, countdown)  # fmt: skip
        return True

    def _time_limit(self, exc: TimeLimitExceeded) -> bool:
        """Handle a hard time limit once (Celery reports it twice, in either order).

        Returns True when the failure was stored and Celery's own failure handling (result,
        signal, ``task-failed`` event, ack) should go on.
        """
        self._reliable_done = True
        if self._retries_left():
            # Counted as a retry, like a lost worker: sent again with retries + 1.
            task_ready(self)
            if not self._retry_worker_lost(exc, _einfo(exc)):
                self.reject(requeue=True)
            return False
        if not self._store(exc, "time_limit", f"TimeLimitExceeded: {exc}"):
            task_ready(self)
            return False
        return True

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if soft:
            super().on_timeout(soft, timeout)
            return None
        if not self._reliable_done and self._time_limit(TimeLimitExceeded(timeout)):
            super().on_timeout(soft, timeout)
            events.send_from_request(self, events.FAILURE_STORED, reason="time_limit")
        return None

    def on_failure(self, exc_info: ExceptionInfo, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = _unwrap(exc_info.exception or Exception("unknown failure"))
        if isinstance(exc, TimeLimitExceeded):
            if not self._reliable_done and self._time_limit(exc):
                super().on_failure(exc_info, send_failed_event, return_ok)
                events.send_from_request(self, events.FAILURE_STORED, reason="time_limit")
            return None
        lost = isinstance(exc, WorkerLostError | SystemExit | KeyboardInterrupt)
        if isinstance(exc, WorkerLostError) and not CELERY_RETRIES_LOST_WORKERS and self._retries_left():
            # Celery before 5.7 would requeue it as it is (reject_on_worker_lost): no count, no bound.
            task_ready(self)
            if not self._retry_worker_lost(exc, exc_info):
                self.reject(requeue=True)
            return None
        if lost and not self._retries_left() and not self._success_was_stored():
            if isinstance(exc, SystemExit | KeyboardInterrupt) and (self._already_cancelled or self._already_revoked):
                super().on_failure(exc_info, send_failed_event, return_ok)
                return None
            if not self._store(exc, "worker_lost", exc_info.traceback):
                task_ready(self)
                return None
            self._failed_for_good(exc_info, send_failed_event, return_ok)
            events.send_from_request(self, events.FAILURE_STORED, reason="worker_lost")
            return None
        super().on_failure(exc_info, send_failed_event, return_ok)
        if not lost and not isinstance(exc, Reject | Retry | Ignore | Terminated | TimeLimitExceeded | MemoryError):
            # The pool process stored it in Task.on_failure (it raises Reject when it cannot).
            task: Any = self.task
            permanent = isinstance(exc, (PermanentError, *task.policy.permanent))
            events.send_from_request(
                self, events.FAILURE_STORED, reason="permanent" if permanent else "exception",
                exc_type=type(exc).__name__, attempts=int(self._context.retries or 0) + 1,
            )  # fmt: skip
        return None
