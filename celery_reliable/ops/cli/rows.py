"""What ``failed`` and ``pending`` share: filter options, the list and show commands' bodies, ids checks.

Each group describes its rows once (:class:`Rows`: the table's filter, how a row reads as JSON and
as a table line, how rows are fetched); the machinery here does the rest the same way for both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from celery import Celery

from ...store.filters import RowFilter
from .base import CleanError, app_of, echo, echo_json, reliable_errors, table
from .options import check_task_name, parse_when, window_options

F = TypeVar("F", bound=Callable[..., Any])


def task_window_options(func: F) -> F:
    """``--task``, ``--since``, ``--until``."""
    func = window_options(func)
    return click.option("--task", "task_name", help="Only this task name.")(func)


@dataclass(frozen=True)
class Rows:
    """One table as its command group shows it."""

    #: how one row is called in messages ("failed task", "pending message")
    noun: str
    #: the command group ("failed", "pending"), for hints
    group: str
    #: the filter class: built from the options
    filter: type[RowFilter]
    #: a row as JSON data (``full``: everything stored)
    as_dict: Callable[[Any, bool], dict[str, Any]]
    #: the columns of ``list`` and one row's cells
    headers: tuple[str, ...]
    cells: Callable[[Any], tuple[Any, ...]]
    #: up to ``limit`` selected rows, in the group's order
    fetch: Callable[[Celery, Any, int], list[Any]]
    #: one row by id, or None
    get: Callable[[Celery, int], Any]
    #: fields ``show`` prints as JSON text (payloads)
    payloads: tuple[str, ...]

    def make_filter(
        self, app: Celery, ids: Sequence[int], *, since: str | None, until: str | None, check_task: bool = False,
        **fields: Any,
    ) -> Any:  # fmt: skip
        """The filter the options describe (ids too, when given); ``check_task``: refuse an unregistered name."""
        if check_task:
            check_task_name(app, fields.get("task_name"))
        return self.filter(  # type: ignore[call-arg]
            since=parse_when(since, "--since"), until=parse_when(until, "--until"),
            ids=list(ids) if ids else None, **fields,
        )  # fmt: skip

    def refuse_unknown(self, ids: Sequence[int], found: set[int]) -> None:
        """Refuse ids that match no row, before anything is changed."""
        unknown = sorted(set(ids) - found)
        if unknown:
            raise CleanError(
                f"no {self.noun} with id {', '.join(map(str, unknown))}; nothing was changed "
                f"(see celery -A proj reliable {self.group} list)"
            )

    def list(self, ctx: click.Context, limit: int, as_json: bool, filters: dict[str, Any]) -> None:
        """The body of ``<group> list``."""
        app = app_of(ctx)
        selected = self.make_filter(app, (), **filters)
        with reliable_errors():
            rows = self.fetch(app, selected, limit)
        if as_json:
            echo_json([self.as_dict(r, False) for r in rows])
            return
        echo(table(list(self.headers), [self.cells(r) for r in rows]) if rows else f"no {self.noun}s match")

    def show(self, ctx: click.Context, row_id: int, as_json: bool) -> dict[str, Any] | None:
        """The body of ``<group> show``; returns the row's data for a group to add to (None with ``--json``)."""
        app = app_of(ctx)
        with reliable_errors():
            row = self.get(app, row_id)
        if row is None:
            raise CleanError(f"no {self.noun} with id {row_id} (see celery -A proj reliable {self.group} list)")
        data = self.as_dict(row, True)
        if as_json:
            echo_json(data)
            return None
        return data

    def show_table(self, data: dict[str, Any]) -> None:
        """Print a row's data as a field/value table, payloads as JSON text."""
        for key in self.payloads:
            data[key] = json.dumps(data[key], sort_keys=True)
        echo(table(["field", "value"], list(data.items())))
