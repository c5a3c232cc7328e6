"""``ReliableTask``: acknowledge late, retry a bounded number of times, store the final failure
before the message is acknowledged, and optionally skip task ids that already completed."""

from __future__ import annotations

import logging
import traceback as tb_module
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from billiard.einfo import ExceptionInfo
from celery import Celery, Task
from celery.exceptions import Ignore, Reject, Retry, TimeLimitExceeded
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..exceptions import StoreError
from ..send.publish import PublishResult, publish
from ..send.publish_all import celery_path, maybe_publish
from ..store.processed import is_processed, mark_processed, mark_processed_in
from . import arguments, marks, record
from .failure_store import store
from .install import fit_visibility_timeout, install, retry_ceiling
from .requeue import REASON_RETRY, REQUEUE_LIMIT, HandedBack, RetryNotSentError, is_transient
from .retry import RetryPolicy, decide, resolve_exceptions, sendable_countdown

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Policy:
    """A task's retry and idempotency options, resolved once at bind time."""

    max_retries: int
    backoff: float | None
    backoff_max: float
    jitter: bool
    retry_for: tuple[type[BaseException], ...]
    permanent: tuple[type[BaseException], ...]
    policies: Mapping[type[BaseException], RetryPolicy]
    idempotent: bool
    ceiling: float | None
    builtin: bool = False
    #: seconds a completion record may wait to be written with others; None: before the ack
    flush_interval: float | None = None


def _exceptions(values: Any, setting: str) -> tuple[type[BaseException], ...]:
    names = [v for v in values if isinstance(v, str)]
    classes = [v for v in values if not isinstance(v, str)]
    for klass in classes:
        if not (isinstance(klass, type) and issubclass(klass, BaseException)):
            from ..exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(f"{setting}: {klass!r} is not an exception class.")
    return (*resolve_exceptions(names, setting), *classes)


def _policies(values: Mapping[Any, Any], setting: str) -> dict[type[BaseException], RetryPolicy]:
    resolved: dict[type[BaseException], RetryPolicy] = {}
    for key, value in values.items():
        (klass,) = _exceptions([key], setting)
        resolved[klass] = value if isinstance(value, RetryPolicy) else RetryPolicy.from_mapping(value)
    return resolved


def _reason_of(exc: BaseException) -> str | None:
    """The failure reason an exception class carries (``bad_arguments``, ``retry_not_sent``)."""
    reason = getattr(exc, "reliable_reason", None)
    return reason if isinstance(reason, str) else None


def _described(exc: BaseException | None) -> str:
    if exc is None:
        return "no exception"
    text = str(exc)
    return f"{type(exc).__name__}: {text[:500]}" if text else type(exc).__name__


if TYPE_CHECKING:
    _TaskBase = Task[Any, Any]
else:  # Celery's Task is generic (subscriptable) only from 5.7; the type stubs always say so
    _TaskBase = Task


class ReliableTask(_TaskBase):
    """A Celery task that is never silently lost.

    * acknowledged only after it ran (``acks_late``); a lost worker process or a hard time limit
      sends it again, counted against ``max_retries``;
    * retried with exponential backoff and full jitter, per-exception policies, capped below the
      broker's redelivery timeout;
    * when it will not be retried again, the failure is written to the failed-task table and only
      then acknowledged; if that write fails the message goes back to the broker, after a pause,
      and after ``max_requeues`` such hand-backs in a row its failure is stored instead;
    * arguments that do not fit the task's signature are stored at once (``bad_arguments``), never run;
    * with ``idempotent=True`` a task id that already completed is not run again.

    Options (decorator keyword or class attribute; ``None`` means the ``reliable_*`` setting):
    ``max_retries``, ``retry_backoff``, ``retry_backoff_max``, ``retry_jitter``, ``retry_for``,
    ``permanent_exceptions``, ``retry_policies``, ``idempotent``; and ``max_requeues``.
    """

    acks_late = True
    acks_on_failure = True  # only after the failure row is written (see on_failure)
    acks_on_timeout = True
    reject_on_worker_lost = True  # fallback when the worker-lost retry cannot be sent
    retry_on_worker_lost = True  # bounded by max_retries
    Request = "celery_reliable.worker.request:ReliableRequest"

    max_retries: int | None = None
    retry_backoff: float | bool | None = None
    retry_backoff_max: float | None = None
    retry_jitter: bool | None = None
    retry_for: tuple[Any, ...] | None = None
    permanent_exceptions: tuple[Any, ...] = ()
    retry_policies: Mapping[Any, Any] | None = None
    idempotent: bool | None = None
    #: Hand-backs of one message to the broker in a row (retry not sent, failure not stored) after
    #: which its failure is stored instead (see celery_reliable.worker.requeue).
    max_requeues: int = REQUEUE_LIMIT

    _reliable: ClassVar[_Policy | None] = None

    @classmethod
    def on_bound(cls, app: Celery) -> None:
        """Fill unset options from the ``reliable_*`` settings (validated here, once per app)."""
        settings = install(app)
        fit_visibility_timeout(app, cls.time_limit or app.conf.task_time_limit)
        # Celery's own tasks (chord_unlock polls with max_retries=None) keep their semantics when
        # ReliableTask is the app's task_cls; they still get late ack and the failure table.
        builtin = (cls.name or "").startswith("celery.")
        if cls.max_retries is None and not builtin:
            cls.max_retries = settings.max_retries
        # Celery's own option names, filled here (before Celery reads them at registration).
        if cls.retry_backoff is None or cls.retry_backoff is True:
            cls.retry_backoff = settings.retry_backoff
        if cls.retry_backoff_max is None:
            cls.retry_backoff_max = settings.retry_backoff_max
        if cls.retry_jitter is None:
            cls.retry_jitter = settings.retry_jitter
        backoff = None if cls.retry_backoff is False else float(cls.retry_backoff)
        name = f"task {cls.name!r}" if cls.name else cls.__name__
        cls._reliable = _Policy(
            max_retries=-1 if cls.max_retries is None else int(cls.max_retries),
            backoff=backoff,
            backoff_max=float(cls.retry_backoff_max),
            jitter=bool(cls.retry_jitter),
            retry_for=_exceptions(settings.retry_for if cls.retry_for is None else cls.retry_for, f"{name} retry_for"),
            permanent=_exceptions(
                (*settings.permanent_exceptions, *cls.permanent_exceptions),
                f"{name} permanent_exceptions",
            ),
            policies={
                **_policies(settings.retry_policies, "reliable_retry_policies"),
                **_policies(cls.retry_policies or {}, f"{name} retry_policies"),
            },
            idempotent=not builtin and (settings.idempotent if cls.idempotent is None else bool(cls.idempotent)),
            ceiling=retry_ceiling(app),
            builtin=builtin,
            flush_interval=settings.idempotency_flush_interval,
        )

    @property
    def policy(self) -> _Policy:
        if self._reliable is None:
            type(self).on_bound(self.app)
        assert self._reliable is not None
        return self._reliable

    # -- running -------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request_stack.top
        if request is None or request.called_directly:
            return super().__call__(*args, **kwargs)
        policy = self.policy
        if policy.builtin:
            return self.run(*args, **kwargs)
        task_id: str = request.id or ""
        misfit = arguments.check(self, args, kwargs)
        if misfit is not None:
            # Cannot succeed, and its retry could not even be sent (Celery checks the arguments
            # before publishing): stored at once, never run.
            request.reliable_reason = arguments.REASON  # type: ignore[attr-defined]
            raise misfit
        if policy.idempotent and task_id and (marks.holds(self.app, task_id) or is_processed(self.app, task_id)):
            logger.info("Task %s[%s] already completed; duplicate delivery skipped", self.name, request.id)
            return None
        request.reliable_completion_recorded = False  # type: ignore[attr-defined]
        try:
            result = self.run(*args, **kwargs)
        except (Retry, Ignore, Reject):
            raise
        except Exception as exc:
            if policy.idempotent and isinstance(exc, IntegrityError) and is_processed(self.app, task_id):
                # A concurrent run committed first; our writes were rolled back with the record.
                logger.info("Task %s[%s] completed by another run; this one rolled back", self.name, request.id)
                return None
            self._retry_or_raise(exc)
            raise
        if policy.idempotent and not request.reliable_completion_recorded:  # type: ignore[attr-defined]
            if policy.flush_interval is None or request.is_eager:
                mark_processed(self.app, task_id, self.name)
            else:  # written with others by this process's writer, after the ack (celery_reliable.worker.marks)
                marks.add(self.app, task_id, self.name, policy.flush_interval)
        return result

    def _retry_or_raise(self, exc: Exception) -> None:
        policy = self.policy
        retries = int(self.request.retries or 0)
        decision = decide(
            exc,
            retries,
            max_retries=policy.max_retries,
            backoff=policy.backoff if policy.backoff is not None else 0.0,
            backoff_max=policy.backoff_max,
            jitter=policy.jitter,
            retry_for=policy.retry_for,
            permanent=policy.permanent,
            policies=policy.policies,
            ceiling=policy.ceiling,
        )
        if not decision.retry:
            reason = _reason_of(exc) or ("permanent" if decision.reason == "permanent" else "exception")
            self.request.reliable_reason = reason  # type: ignore[attr-defined]
            return
        countdown = decision.countdown
        if policy.backoff is None and not policy.policies:
            countdown = min(float(self.default_retry_delay or 0), policy.ceiling or countdown)
        logger.warning(
            "Task %s[%s] failed (%s: %s); retry %d of %d in %.1fs",
            self.name, self.request.id, type(exc).__name__, exc, retries + 1,
            decision.max_retries, countdown,
        )  # fmt: skip
        raise self.retry(exc=exc, countdown=countdown, max_retries=decision.max_retries)

    def retry(self, *args: Any, **kwargs: Any) -> Retry:
        """Like :meth:`celery.Task.retry`, but a retry that cannot be sent is not dropped.

        Celery turns a failed retry publish into ``Reject(requeue=False)``, deleting the message.
        Here, when the broker is away (a connection error), the message goes back to the broker
        instead (``Reject(requeue=True)``), or stays unacknowledged if the broker is gone, and runs
        again when it is back; the worker's main process paces those hand-backs and stores the
        failure after ``max_requeues`` of them. Any other cause (arguments that cannot be encoded
        or do not fit the signature) cannot pass by itself: the failure is stored at once
        (``retry_not_sent``).
        """
        countdown = kwargs.get("countdown")
        if isinstance(countdown, int | float):
            kwargs["countdown"] = sendable_countdown(countdown)
        kwargs["headers"] = record.retry_headers(self.request, kwargs.get("headers"))  # first_failed_at
        try:
            with celery_path():
                return super().retry(*args, **kwargs)
        except Reject as rejection:
            reason = getattr(rejection, "reason", None)
            if getattr(rejection, "requeue", False) or not isinstance(reason, Exception):
                raise
            failed = kwargs.get("exc")
            message = (
                f"The retry of task {self.name}[{self.request.id}] could not be sent ({_described(reason)}); "
                f"the task had failed with {_described(failed)}."
            )
            if not is_transient(reason):
                logger.error("Task %s[%s]: retry could not be sent (%r); the failure is stored",
                             self.name, self.request.id, reason)  # fmt: skip
                self.request.reliable_reason = REASON_RETRY  # type: ignore[attr-defined]
                raise RetryNotSentError(f"{message} Fix the cause, then replay it.") from reason
            logger.error(
                "Task %s[%s]: retry could not be sent (%r); message returned to the broker",
                self.name, self.request.id, reason,
            )  # fmt: skip
            traceback = None
            if isinstance(failed, BaseException):
                traceback = "".join(tb_module.format_exception(type(failed), failed, failed.__traceback__))
            failure = record.from_request(
                self.name, vars(self.request), RetryNotSentError(f"{message} Stored after it could not be sent "
                                                                 "again and again; replay it."),
                reason=REASON_RETRY, traceback=traceback, hostname=self.request.hostname or "",
            )  # fmt: skip
            raise Reject(HandedBack(message, failure), requeue=True) from None

    # -- publishing ----------------------------------------------------------------------

    def reliable_apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> PublishResult:
        """Send this task with :func:`celery_reliable.publish`: confirmed, retried, or kept for the relay."""
        return publish(self.app, self.name, args, kwargs, **options)

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> Any:
        """Celery's ``apply_async``; with ``reliable_publish_all`` through :func:`celery_reliable.publish`.

        Canvas options that cannot be stored (chords, chains, groups), an explicit producer and
        arguments that are not JSON use Celery's own path. Retries always do: a retry that cannot be
        published keeps its message with the broker (see :meth:`retry`), which is what a worker
        that lost its broker needs, with no relay involved.
        """
        options.update(task_id=task_id, producer=producer, link=link, link_error=link_error, shadow=shadow)
        result = maybe_publish(self.app, self.name, args, kwargs, options)
        if result is not None:
            async_result = self.AsyncResult(result.task_id)
            async_result.reliable = result  # type: ignore[attr-defined]
            return async_result
        with celery_path():
            return super().apply_async(args, kwargs, **options)

    # -- idempotency ---------------------------------------------------------------------

    def record_completion(self, target: Session | Connection) -> None:
        """Record this task id as completed inside ``target``'s transaction.

        Call it in the same transaction as the task's own writes: they commit together, so the
        effect happens exactly once even if the worker dies right after the commit. The
        processed-ids table must live in that database (``reliable_database_url``).
        """
        request = self.request
        if request.called_directly or not request.id:
            return
        mark_processed_in(target, request.id, self.name)
        request.reliable_completion_recorded = True  # type: ignore[attr-defined]

    # -- final failure -------------------------------------------------------------------

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: ExceptionInfo) -> None:
        """Store the failure before the worker acknowledges the message.

        If the row cannot be written, raise ``Reject(requeue=True)``: the broker keeps the message
        and it is stored when the database is back. Any other exception here would make Celery
        acknowledge the message, so every error is converted.
        """
        if isinstance(exc, TimeLimitExceeded):
            return  # stored by ReliableRequest.on_timeout, in the worker's main process
        request = self.request
        if request.called_directly or getattr(request, "is_eager", False):
            return
        reason = getattr(request, "reliable_reason", None) or _reason_of(exc) or "exception"
        try:
            failure = record.from_request(
                self.name,
                vars(request),
                exc,
                reason=reason,
                traceback=einfo.traceback if einfo is not None else None,
                hostname=request.hostname or "",
            )
        except Exception as build_exc:  # a request too broken to describe: keep what can be kept
            failure = record.from_request(self.name, {"id": task_id}, exc, reason=reason)
            failure.exc_message += f" [celery_reliable: the request could not be recorded: {build_exc!r}]"
        try:
            row_id = store(self.app, failure)
        except Exception as store_exc:
            logger.error(
                "Task %s[%s] failed for good but its failure could not be stored (%s); "
                "message returned to the broker",
                self.name, task_id, store_exc, exc_info=not isinstance(store_exc, StoreError),
            )  # fmt: skip
            # The worker's main process paces the hand-back and, after max_requeues of them,
            # stores this same record itself.
            raise Reject(HandedBack(f"its failure could not be stored: {store_exc}", failure), requeue=True) from None
        logger.error(
            "Task %s[%s] failed after %d attempt(s) (%s); stored as failed task %d",
            self.name, task_id, failure.attempts, failure.exc_type, row_id,
        )  # fmt: skip
