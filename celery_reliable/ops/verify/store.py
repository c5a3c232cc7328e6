"""The verify run's rows in the reliability database: counted by run id and task-id prefix,
and deleted at the end. No other row is read for the counts or ever deleted."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from sqlalchemy import delete, func, select

from ...store.failures import session_scope
from ...store.models import FailedTask, PendingMessage, PendingStatus, ProcessedTask, VerifyEffect


@dataclass
class RowCounts:
    """What the database holds for one run."""

    #: probe number -> effect rows
    effects: Counter[int] = field(default_factory=Counter)
    #: probe number -> why its failure was stored
    failures: dict[int, str] = field(default_factory=dict)
    #: pending rows not sent, by status
    pending: Counter[str] = field(default_factory=Counter)
    processed: int = 0

    @property
    def unsent(self) -> int:
        """Pending rows the relay may still send (``pending`` or ``claimed``)."""
        return self.pending.get(PendingStatus.PENDING, 0) + self.pending.get(PendingStatus.CLAIMED, 0)

    @property
    def done(self) -> int:
        """Probes that ended: ran, or stored as failed."""
        return len(set(self.effects) | set(self.failures))


def _ours(column: Any, prefix: str) -> Any:
    return column.startswith(prefix, autoescape=True)


def seq_of(task_id: str, prefix: str) -> int | None:
    tail = task_id[len(prefix) :] if task_id.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else None


def count_effects(app: Celery, run_id: str) -> Counter[int]:
    with session_scope(app) as session:
        query = select(VerifyEffect.seq, func.count()).where(VerifyEffect.run_id == run_id).group_by(VerifyEffect.seq)
        return Counter({int(seq): int(n) for seq, n in session.execute(query)})


def count_failures(app: Celery, prefix: str) -> dict[int, str]:
    with session_scope(app) as session:
        query = select(FailedTask.task_id, FailedTask.reason).where(_ours(FailedTask.task_id, prefix))
        found = {seq_of(task_id, prefix): reason for task_id, reason in session.execute(query)}
    return {seq: reason for seq, reason in found.items() if seq is not None}


def count_rows(app: Celery, run_id: str, prefix: str) -> RowCounts:
    counts = RowCounts(effects=count_effects(app, run_id), failures=count_failures(app, prefix))
    with session_scope(app) as session:
        unsent = select(PendingMessage.status, func.count()).where(
            _ours(PendingMessage.task_id, prefix), PendingMessage.status.notin_(PendingStatus.DELIVERED)
        )
        counts.pending = Counter({str(s): int(n) for s, n in session.execute(unsent.group_by(PendingMessage.status))})
        processed = select(func.count()).select_from(ProcessedTask).where(_ours(ProcessedTask.task_id, prefix))
        counts.processed = int(session.execute(processed).scalar_one())
    return counts


def unsent_ids(app: Celery, prefix: str) -> list[int]:
    """The run's pending rows the relay may still send."""
    with session_scope(app) as session:
        query = select(PendingMessage.id).where(
            _ours(PendingMessage.task_id, prefix),
            PendingMessage.status.in_((PendingStatus.PENDING, PendingStatus.CLAIMED)),
        )
        return list(session.execute(query).scalars())


def delete_rows(app: Celery, run_id: str, prefix: str) -> dict[str, int]:
    """Delete every row of the run: effects, stored failures, pending rows, processed ids."""
    removed: dict[str, int] = {}
    with session_scope(app) as session:
        for name, statement in (
            ("effects", delete(VerifyEffect).where(VerifyEffect.run_id == run_id)),
            ("failed", delete(FailedTask).where(_ours(FailedTask.task_id, prefix))),
            ("pending", delete(PendingMessage).where(_ours(PendingMessage.task_id, prefix))),
            ("processed", delete(ProcessedTask).where(_ours(ProcessedTask.task_id, prefix))),
        ):
            removed[name] = int(session.execute(statement).rowcount)  # type: ignore[attr-defined]
    return removed
