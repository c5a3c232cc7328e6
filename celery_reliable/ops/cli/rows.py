"""What ``failed`` and ``pending`` share: filter options, the list and show commands' bodies, ids checks.

Each group describes its rows once (:class:`Rows`: the table's filter, how a row reads as JSON and
as a table line, how rows are fetched and counted); the machinery here does the rest the same way
for both.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from celery import Celery

from ...message.tasks import is_replayable_task
from ...store.filters import RowFilter
from .base import CleanError, app_of, command_of, echo, echo_json, reliable_errors, table
from .options import parse_when, refuse_task_name, window_options

F = TypeVar("F", bound=Callable[..., Any])


def task_window_options(func: F) -> F:
    """``--task``, ``--search``, ``--since``, ``--until``."""
    func = window_options(func)
    search_help = "Only rows with this text in the task id, the arguments or the error message."
    func = click.option("--search", help=search_help)(func)
    return click.option("--task", "task_name", help="Only this task name.")(func)


def page_options(func: F) -> F:
    """``--limit``, ``--offset``, ``--page``: one page of a long list."""
    func = click.option("--page", type=click.IntRange(min=1), help="Show this page (of --limit rows each).")(func)
    func = click.option("--offset", type=click.IntRange(min=0), help="Skip this many rows first.")(func)
    return click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="Rows to show.")(
        func
    )


def page_start(limit: int, offset: int | None, page: int | None) -> int:
    """The number of rows skipped: ``--offset``, or ``--page`` pages of ``--limit`` rows."""
    if offset is not None and page is not None:
        raise click.UsageError("give --offset or --page, not both")
    return offset if offset is not None else (page - 1) * limit if page is not None else 0


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
    #: up to ``limit`` selected rows after ``offset``, newest first
    fetch: Callable[[Celery, Any, int, int], list[Any]]
    #: how many rows a filter selects
    count: Callable[[Celery, Any], int]
    #: one row by id, or None
    get: Callable[[Celery, int], Any]
    #: fields ``show`` prints as JSON text (payloads)
    payloads: tuple[str, ...]

    def make_filter(
        self, app: Celery, ids: Sequence[int], *, since: str | None, until: str | None,
        sends: Callable[[Celery, str], bool] | None = None, **fields: Any,
    ) -> Any:  # fmt: skip
        """The filter the options describe (ids too, when given).

        A ``--task`` name is refused (exit code 2) unless the app may act on it: ``sends`` says
        which names a sending command may send; a reading command takes a name the app
        registers, or one some stored row carries (rows of a task since removed from the code).
        """
        name = fields.get("task_name")
        if name is not None:
            if sends is not None:
                if not sends(app, name):
                    refuse_task_name(app, name, ", so its rows cannot be sent")
            elif not is_replayable_task(app, name):
                with reliable_errors():
                    stored = self.count(app, self.filter(task_name=name)) > 0  # type: ignore[call-arg]
                if not stored:
                    refuse_task_name(app, name, f" and no {self.noun} row names it")
        if fields.get("search") == "":
            fields["search"] = None
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

    def list(self, ctx: click.Context, as_json: bool, filters: dict[str, Any]) -> None:
        """The body of ``<group> list``: one page of rows, newest first, and "N of M" with how to page on."""
        app = app_of(ctx)
        limit = filters.pop("limit")
        start = page_start(limit, filters.pop("offset"), filters.pop("page"))
        selected = self.make_filter(app, (), **filters)
        with reliable_errors():
            rows = self.fetch(app, selected, limit, start)
            total = self.count(app, selected)
        footer = self.footer(ctx, len(rows), start, total, limit)
        if as_json:
            echo_json([self.as_dict(r, False) for r in rows])
            echo(footer, err=True)
            return
        if rows:
            echo(table(list(self.headers), [self.cells(r) for r in rows]))
        echo(footer)

    def footer(self, ctx: click.Context, shown: int, start: int, total: int, limit: int) -> str:
        """``showing 51-100 of 170 ...; next page: ... --page 3``."""
        if not total:
            return f"0 of 0 {self.noun}s match"
        if not shown:
            return f"0 of {total} {self.noun}s: --offset {start} is past the last row"
        line = f"showing {start + 1}-{start + shown} of {total} {self.noun}s, newest first"
        if start + shown < total:
            args = [a for a in _argv(ctx) if a not in ("--json",)]
            more = f" --offset {start + shown}" if start % limit else f" --page {start // limit + 2}"
            line += f"; more: {command_of(ctx)} {self.group} list{_without_paging(args)}{more}"
        return line

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


def _argv(ctx: click.Context) -> list[str]:
    """The options this ``list`` was given, as typed (for the "more" hint)."""
    args: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        source = ctx.get_parameter_source(param.name or "")
        if value is None or value is False or source is not click.core.ParameterSource.COMMANDLINE:
            continue
        flag = max(param.opts, key=len) if isinstance(param, click.Option) else ""
        args += [flag] if value is True else [flag, str(value)]
    return args


def _without_paging(args: list[str]) -> str:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("--offset", "--page"):
            skip = True
            continue
        out.append(arg)
    return "".join(f" {shlex.quote(a)}" for a in out)
