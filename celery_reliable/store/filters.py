"""Selecting rows of the failed and the pending tables: one shape for both.

:class:`~celery_reliable.store.failures.FailureFilter` and
:class:`~celery_reliable.store.pending.PendingFilter` select by task name, state, a time window
and ids the same way (:class:`RowFilter`); each names its table, the time its window applies to,
and whatever else it selects by.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Select


class RowFilter:
    """Which rows to select; ``None`` means any. Subclasses are frozen dataclasses with these fields."""

    #: the mapped class of the table
    model: ClassVar[Any]
    #: the column ``since``/``until`` apply to
    time_column: ClassVar[str]

    task_name: str | None
    status: str | None
    since: datetime | None
    until: datetime | None
    ids: Sequence[int] | None

    def apply(self, query: Select[Any]) -> Select[Any]:
        """``query`` narrowed to the selected rows."""
        model = self.model
        if self.task_name is not None:
            query = query.where(model.task_name == self.task_name)
        if self.status is not None:
            query = query.where(model.status == self.status)
        when = getattr(model, self.time_column)
        if self.since is not None:
            query = query.where(when >= self.since)
        if self.until is not None:
            query = query.where(when < self.until)
        if self.ids is not None:
            query = query.where(model.id.in_(list(self.ids)))
        return self.apply_own(query)

    def apply_own(self, query: Select[Any]) -> Select[Any]:
        """What a subclass selects by besides the common fields."""
        return query
