"""Selecting rows of the failed and the pending tables: one shape for both.

:class:`~celery_reliable.store.failures.FailureFilter` and
:class:`~celery_reliable.store.pending.PendingFilter` select by task name, state, a time window,
free text and ids the same way (:class:`RowFilter`); each names its table, the time its window
applies to, the columns free text is looked for in, and whatever else it selects by.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Select, Text, cast, or_


def like_pattern(text: str, *, prefix: str = "%", suffix: str = "%") -> str:
    """``text`` as a LIKE pattern that matches it literally (``%``, ``_`` and ``\\`` escaped)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{prefix}{escaped}{suffix}"


class RowFilter:
    """Which rows to select; ``None`` means any. Subclasses are frozen dataclasses with these fields.

    ``status`` is one state or several; ``search`` is text looked for, case-insensitively, in the
    columns :attr:`search_columns` names (JSON columns as their JSON text).
    """

    #: the mapped class of the table
    model: ClassVar[Any]
    #: the column ``since``/``until`` apply to
    time_column: ClassVar[str]
    #: the columns ``search`` looks in
    search_columns: ClassVar[tuple[str, ...]] = ()

    task_name: str | None
    status: str | Sequence[str] | None
    since: datetime | None
    until: datetime | None
    ids: Sequence[int] | None
    search: str | None

    def apply(self, query: Select[Any]) -> Select[Any]:
        """``query`` narrowed to the selected rows."""
        model = self.model
        if self.task_name is not None:
            query = query.where(model.task_name == self.task_name)
        if isinstance(self.status, str):
            query = query.where(model.status == self.status)
        elif self.status is not None:
            query = query.where(model.status.in_(list(self.status)))
        when = getattr(model, self.time_column)
        if self.since is not None:
            query = query.where(when >= self.since)
        if self.until is not None:
            query = query.where(when < self.until)
        if self.ids is not None:
            query = query.where(model.id.in_(list(self.ids)))
        if self.search:
            pattern = like_pattern(self.search)
            columns = [cast(getattr(model, name), Text) for name in self.search_columns]
            query = query.where(or_(*(column.ilike(pattern, escape="\\") for column in columns)))
        return self.apply_own(query)

    def apply_own(self, query: Select[Any]) -> Select[Any]:
        """What a subclass selects by besides the common fields."""
        return query
