"""The probe tasks of ``reliable verify``; each run writes one effect row (no unique key).

Imported only by the verify command and its own workers, so they are registered on the app
there and nowhere else (not at ``import celery_reliable``, not in the application's workers).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Task, shared_task
from sqlalchemy import insert

from ...exceptions import PermanentError
from ...store.engine import get_sessionmaker
from ...store.models import VerifyEffect, utcnow
from ...worker.retry import RetryPolicy
from ...worker.task import ReliableTask
from .plan import PROBES


class ProbeRetryableError(Exception):
    """Raised by a retryable poison probe on every attempt: retried, then stored."""


#: A retryable poison probe is retried once, at once, then stored (bounded, whatever the settings).
_POISON_POLICY = {ProbeRetryableError: RetryPolicy(max_retries=1, countdown=0.1)}


def _fail_if_poison(seq: int, poison: str) -> None:
    if poison == "permanent":
        raise PermanentError(f"verify poison probe {seq}: stored without retry")
    if poison == "retryable":
        raise ProbeRetryableError(f"verify poison probe {seq}: retried, then stored")


def _effect(task: Task, run: str, seq: int, record: bool) -> None:  # type: ignore[type-arg]
    values = {"run_id": run, "seq": seq, "task_id": task.request.id or "", "pid": os.getpid(), "created_at": utcnow()}
    with get_sessionmaker(task.app).begin() as session:
        session.execute(insert(VerifyEffect).values(**values))
        if record:
            # completion recorded with the effect: both commit, or neither
            task.record_completion(session)  # type: ignore[attr-defined]


def _run(task: Task, run: str, seq: int, poison: str, pause: float, record: bool) -> None:  # type: ignore[type-arg]
    if pause > 0:
        time.sleep(pause)
    _fail_if_poison(seq, poison)
    _effect(task, run, seq, record)


@shared_task(
    bind=True, base=ReliableTask, name=PROBES["idempotent"], idempotent=True, ignore_result=True,
    retry_policies=_POISON_POLICY,
)  # fmt: skip
def probe_idempotent(self: Any, run: str, seq: int, poison: str = "", pause: float = 0.0) -> None:
    """At least once, and skipped when its task id already completed: exactly one effect."""
    _run(self, run, seq, poison, pause, record=True)


@shared_task(
    bind=True, base=ReliableTask, name=PROBES["reliable"], idempotent=False, ignore_result=True,
    retry_policies=_POISON_POLICY,
)  # fmt: skip
def probe(self: Any, run: str, seq: int, poison: str = "", pause: float = 0.0) -> None:
    """At least once: a redelivered probe may show a second effect."""
    _run(self, run, seq, poison, pause, record=False)


@shared_task(
    bind=True, base=Task, name=PROBES["plain-early-ack"], ignore_result=True,
    acks_late=False, reject_on_worker_lost=False, autoretry_for=(),
)  # fmt: skip
def probe_plain_early_ack(self: Any, run: str, seq: int, poison: str = "", pause: float = 0.0) -> None:
    """Plain Celery with its defaults (acknowledged before it runs): shows what verify catches."""
    _run(self, run, seq, poison, pause, record=False)
