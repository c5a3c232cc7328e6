"""The worker-side request of a ReliableTask.

Runs in the worker's main process, where a lost pool process or a hard time limit is seen:
``Task.on_failure`` is not called there for a lost process, so the failure is stored here,
before Celery acknowledges the message. Every hand-back of the message to the broker passes
through :meth:`ReliableRequest.reject` here too, which paces them and bounds them
(:mod:`celery_reliable.worker.requeue`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback  # type: ignore[attr-defined]
from billiard.exceptions import Terminated, WorkerLostError
from celery.exceptions import Ignore, Reject, Retry, TimeLimitExceeded
from celery.worker.request import Request
from celery.worker.state import task_ready

from .. import events
from ..broker.facts import celery_retries_lost_workers
from ..broker.redis_envelope import MAX_DEPTH, deeper_than, may_nest_deeper
from ..exceptions import PermanentError
from ..store.failures import FailureRecord
from . import arguments, ledger, raw, record
from . import requeue as requeues
from .failure_store import store
from .lost_retry import send_lost_retry
from .retry import backoff_delay, sendable_countdown

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


def _check_time_limits(limits: Any) -> None:
    """Celery unpacks ``time_limits`` (the ``timelimit`` header) into the pool's timeouts."""
    if not isinstance(limits, list | tuple) or len(limits) != 2:
        raise ValueError(f"the timelimit header is {limits!r}, not [soft, hard]")
    for limit in limits:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float) or limit < 0):
            raise ValueError(f"the timelimit header is {limits!r}: each must be a number of seconds or null")


def _reason_for_event(exc: BaseException, task: Any) -> str:
    reason = getattr(exc, "reliable_reason", None)
    if isinstance(reason, str):
        return reason
    return "permanent" if isinstance(exc, (PermanentError, *task.policy.permanent)) else "exception"


class ReliableRequest(Request):
    """Stores final worker-lost and time-limit failures before the ack; counts them as retries;
    paces and bounds every hand-back of the message to the broker."""

    _reliable_done = False
    #: why the message may be handed back: the exception the task ended with ...
    _reliable_exc: BaseException | None = None
    _reliable_traceback: str | None = None
    #: ... or the failure that could not be stored in this process
    _reliable_record: FailureRecord | None = None
    _requeue_pending = False
    #: refused before the pool (bad arguments, a message Celery cannot run): stored, not run
    _reliable_refused = False

    if TYPE_CHECKING:  # Celery internals used here (not in the type stubs)
        _context: Any
        _request_dict: dict[str, Any]
        _hostname: str
        _already_cancelled: bool
        _already_revoked: bool
        _args: Any
        _kwargs: Any
        _message: Any
        _body: Any

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

    def _failure_stored(self, **fields: Any) -> None:
        """The failure is in the table and the message acknowledged: say so (Flower)."""
        events.send_from_request(self, events.FAILURE_STORED, **fields)

    def _retries_left(self) -> bool:
        max_retries = self.task.max_retries
        return max_retries is None or int(self._context.retries or 0) < max_retries

    def _record(self, exc: BaseException, reason: str, traceback: str | None) -> FailureRecord:
        try:
            return record.from_request(
                self.task.name, self._request_dict, exc, reason=reason,
                traceback=traceback, hostname=self._hostname,
            )  # fmt: skip
        except Exception as build_exc:  # a request too broken to describe: keep what can be kept
            failure = record.from_request(
                self.task.name, {"id": self.id}, exc, reason=reason, traceback=traceback, hostname=self._hostname
            )
            failure.exc_message += f" [celery_reliable: the request could not be recorded: {build_exc!r}]"
            return failure

    def _store(self, exc: BaseException, reason: str, traceback: str | None) -> bool:
        """Write the failure row; on error give the message back to the broker."""
        failure = self._record(exc, reason, traceback)
        try:
            row_id = store(self.task.app, failure)
        except Exception as store_exc:
            logger.error(
                "Task %s[%s] (%s) could not be stored (%s); message returned to the broker",
                self.name, self.id, reason, store_exc,
            )  # fmt: skip
            self._reliable_record = failure
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
        delay = sendable_countdown(
            backoff_delay(int(self._context.retries or 0), policy.backoff or 0.0, cap, policy.jitter)
        )
        had_own = "default_retry_delay" in task.__dict__
        saved = task.__dict__.get("default_retry_delay")
        self._retrying = True  # the ack that follows a sent retry is not an outcome
        if not CELERY_RETRIES_LOST_WORKERS:
            sent = self._send_lost_retry(exc, exc_info, delay)
        else:
            task.default_retry_delay = delay  # read once by Celery, in this (single) main thread
            try:
                sent = bool(Request._retry_worker_lost(self, exc, exc_info))  # type: ignore[attr-defined]
            finally:
                if had_own:
                    task.default_retry_delay = saved
                else:
                    del task.default_retry_delay
        self._retrying = sent
        if sent:
            ledger.note_retry(self.task.app, self.id, self._request_dict, delay)
        return sent

    def _send_lost_retry(self, exc: BaseException, exc_info: ExceptionInfo, countdown: float) -> bool:
        """Celery before 5.7: send the retry of a lost or timed-out run ourselves (see :mod:`.lost_retry`)."""
        return send_lost_retry(self, exc, exc_info, countdown)

    def _time_limit(self, exc: TimeLimitExceeded) -> bool:
        """Handle a hard time limit once (Celery reports it twice, in either order).

        Returns True when the failure was stored and Celery's own failure handling (result,
        signal, ``task-failed`` event, ack) should go on.
        """
        self._reliable_done = True
        self._reliable_exc = exc
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
            self._failure_stored(reason="time_limit")
        return None

    # -- before the pool ---------------------------------------------------------------

    def revoked(self) -> bool:
        """Celery's revoked check, and the worker's last look at a request before the pool.

        Celery asks this right before it sends a request to the pool (and skips it when True), in
        the main process. A request whose arguments do not fit the task's signature is refused
        here, stored (``bad_arguments``) and acknowledged: it never runs. One Celery itself cannot
        handle (a header of the wrong type makes this check raise) is stored raw
        (``invalid_message``) instead of stopping the worker.
        """
        if self._reliable_refused:
            return True
        misfit = arguments.check(self.task, self._args, self._kwargs)
        if misfit is not None:
            self._refuse(misfit, arguments.REASON, self._record(misfit, arguments.REASON, None))
            return True
        try:
            _check_time_limits(self.time_limits)
            self._check_embed()
            self._check_depth()
            revoked = bool(super().revoked())
        except Exception as exc:
            logger.exception("Task %s[%s] cannot be run as sent (%r); it is stored", self.name, self.id, exc)
            failure = raw.message_record(self._message, "invalid_message", exc, self.name, hostname=self._hostname)
            self._refuse(exc, "invalid_message", failure)
            return True
        return revoked

    def _check_embed(self) -> None:
        """The pool process merges the body's third item into the request (``**embed``)."""
        payload = getattr(self, "_payload", None)
        embed = payload[2] if isinstance(payload, list | tuple) and len(payload) == 3 else None
        if embed and not (isinstance(embed, dict) and all(isinstance(key, str) for key in embed)):
            raise ValueError(
                f"the body's third item (callbacks, chain, chord...) is {type(embed).__name__}, not an object"
            )

    def _check_depth(self) -> None:
        """The pool gets the request pickled: refuse one nested too deeply for that (see envelope)."""
        body = self._body
        deep = deeper_than({k: v for k, v in self._request_dict.items() if k not in ("args", "kwargs")})
        if not deep and (not isinstance(body, bytes | str) or may_nest_deeper(body)):
            deep = deeper_than([self._args, self._kwargs], MAX_DEPTH - 1)
        if deep:
            raise ValueError(f"the message nests lists or objects more than {MAX_DEPTH} levels deep")

    def _refuse(self, exc: BaseException, reason: str, failure: FailureRecord) -> None:
        """Store the failure of a request that will not run, then acknowledge it."""
        self._reliable_refused = True
        task_ready(self)
        try:
            row_id = store(self.task.app, failure)
        except Exception as store_exc:
            logger.error(
                "Task %s[%s] (%s) could not be stored (%s); message returned to the broker",
                self.name, self.id, reason, store_exc,
            )  # fmt: skip
            self._reliable_record = failure
            self.reject(requeue=True)
            return
        logger.error("Task %s[%s] not run (%s: %s); stored as failed task %d", self.name, self.id, reason, exc, row_id)
        self.acknowledge()
        self._failure_stored(reason=reason, exc_type=failure.exc_type, attempts=1)

    # -- hand-backs ----------------------------------------------------------------------

    #: set while the message is acknowledged because a retry of it was sent (its outcome is still to come)
    _retrying = False

    def acknowledge(self) -> None:
        """Celery's ack; an ack that is not for a retry means the task reached its outcome (completed,
        skipped as done, its failure stored): noted for the ledger (see :mod:`.ledger`)."""
        requeues.counter.forget(str(self.id))
        first = not self.acknowledged
        super().acknowledge()
        if first and not self._retrying:
            ledger.note(self.task.app, self.id, self._request_dict)

    def on_retry(self, exc_info: ExceptionInfo) -> None:
        self._retrying = True  # Celery acknowledges the message: its retry carries the outcome
        super().on_retry(exc_info)
        ledger.note_retry(self.task.app, self.id, self._request_dict, ledger.retry_delay(exc_info.exception))

    def reject(self, requeue: bool = False) -> None:
        """Celery's reject; a hand-back (``requeue=True``) waits a growing pause first, and once the
        message was handed back ``max_requeues`` times in a row its failure is stored instead."""
        if not requeue or self.acknowledged:
            requeues.counter.forget(str(self.id))
            super().reject(requeue=requeue)
            return
        if self._requeue_pending:
            return  # already on its way back
        count = requeues.counter.add(str(self.id))
        limit = int(getattr(self.task, "max_requeues", requeues.REQUEUE_LIMIT))
        if count > limit and self._store_instead_of_requeue(count - 1):
            return
        pause = requeues.pause_for(count)
        self._requeue_pending = True
        logger.warning(
            "Task %s[%s] goes back to the broker in %.1fs (%d of %d hand-backs in a row before its failure is stored)",
            self.name, self.id, pause, min(count, limit), limit,
        )  # fmt: skip
        requeues.later(pause, self._requeue_now)

    def _requeue_now(self) -> None:
        self._requeue_pending = False
        if not self.acknowledged:
            super().reject(requeue=True)

    def _handed_back_record(self, times: int) -> FailureRecord:
        exc = self._reliable_exc
        reason = getattr(exc, "reason", None) if isinstance(exc, Reject) else None
        failure: FailureRecord | None = reason.record if isinstance(reason, requeues.HandedBack) else None
        failure = failure or self._reliable_record
        if failure is None:
            cause = reason if isinstance(reason, BaseException) else exc
            failure = self._record(cause or Exception("handed back to the broker"), requeues.REASON_LIMIT,
                                   self._reliable_traceback)  # fmt: skip
        note = (
            f" [celery_reliable: handed back to the broker {times} times in a row without finishing; "
            "stored instead of handed back again]"
        )
        return dataclasses.replace(failure, exc_message=f"{failure.exc_message}{note}")

    def _store_instead_of_requeue(self, times: int) -> bool:
        """Store the failure of a message handed back ``times`` times; True once stored and acked."""
        try:
            failure = self._handed_back_record(times)
            row_id = store(self.task.app, failure)
        except Exception as exc:
            logger.error(
                "Task %s[%s] was handed back %d times in a row and its failure cannot be stored (%s); "
                "it goes back to the broker again",
                self.name, self.id, times, exc,
            )  # fmt: skip
            return False
        logger.error(
            "Task %s[%s] was handed back to the broker %d times in a row; stored as failed task %d (%s)",
            self.name, self.id, times, row_id, failure.reason,
        )  # fmt: skip
        self.acknowledge()
        self._failure_stored(reason=failure.reason, exc_type=failure.exc_type)
        return True

    # -- failures --------------------------------------------------------------------------

    def on_failure(self, exc_info: ExceptionInfo, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = _unwrap(exc_info.exception or Exception("unknown failure"))
        self._reliable_exc = exc
        self._reliable_traceback = exc_info.traceback
        if isinstance(exc, TimeLimitExceeded):
            if not self._reliable_done and self._time_limit(exc):
                super().on_failure(exc_info, send_failed_event, return_ok)
                self._failure_stored(reason="time_limit")
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
            self._failure_stored(reason="worker_lost")
            return None
        super().on_failure(exc_info, send_failed_event, return_ok)
        if not lost and not isinstance(exc, Reject | Retry | Ignore | Terminated | TimeLimitExceeded | MemoryError):
            # The pool process stored it in Task.on_failure (it raises Reject when it cannot).
            self._failure_stored(
                reason=_reason_for_event(exc, self.task),
                exc_type=type(exc).__name__, attempts=int(self._context.retries or 0) + 1,
            )  # fmt: skip
        return None
