"""``reliable failed list|show|purge|export``: the stored failures (``replay`` is in failed_replay.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
from celery import Celery
from celery.bin.base import CeleryCommand

from ...store.failures import (
    FailureFilter,
    count_failures,
    failure_ids,
    failure_states,
    get_failure,
    iter_failures,
    list_failures,
    purge_failures,
)
from ...store.models import FailedTask, FailureStatus
from .base import app_of, echo, echo_json, json_option, reliable, reliable_errors
from .options import (
    confirm,
    dry_run_option,
    iso,
    progress,
    short_time,
    yes_option,
)
from .rows import Rows, page_options, task_window_options

F = TypeVar("F", bound=Callable[..., Any])

#: Rows deleted per transaction by ``purge`` (short locks on a large table).
PURGE_CHUNK = 500


@reliable.group()
def failed() -> None:
    """Stored failures: list, show, replay, purge, export."""


def filter_options(func: F) -> F:
    """``--task``, ``--exception``, ``--status``, ``--since``, ``--until``."""
    func = click.option("--status", type=click.Choice(FailureStatus.ALL), help="Only rows in this state.")(func)
    return task_filter_options(func)


def task_filter_options(func: F) -> F:
    """``--task``, ``--exception``, ``--since``, ``--until``."""
    exc_help = "Only this exception type, full or short: Timeout matches requests.exceptions.Timeout."
    func = click.option("--exception", "exc_type", help=exc_help)(func)
    return task_window_options(func)


def make_filter(app: Celery, ids: Sequence[int], **options: Any) -> FailureFilter:
    """The filter the options describe (ids too, when given); see :meth:`Rows.make_filter`."""
    options.setdefault("status", None)
    result: FailureFilter = ROWS.make_filter(app, ids, **options)
    return result


def failure_dict(row: FailedTask, full: bool = True) -> dict[str, Any]:
    """A row as JSON data; payloads exactly as stored (kombu's JSON encoding)."""
    data: dict[str, Any] = {
        "id": row.id,
        "task_id": row.task_id,
        "task_name": row.task_name,
        "status": row.status,
        "reason": row.reason,
        "exc_type": row.exc_type,
        "exc_message": row.exc_message,
        "attempts": row.attempts,
        "hostname": row.hostname,
        "first_failed_at": iso(row.first_failed_at),
        "last_failed_at": iso(row.last_failed_at),
        "replay_of_id": row.replay_of_id,
        "replay_task_id": row.replay_task_id,
        "replayed_at": iso(row.replayed_at),
        "replay_count": row.replay_count,
        "args": row.args,
        "kwargs": row.kwargs,
    }
    if full:
        data.update(options=row.options, raw_message=row.raw_message, traceback=row.traceback)
    return data


def missing_ids(app: Celery, ids: Sequence[int]) -> None:
    """Refuse ids that match no row, before anything is changed."""
    if ids:
        ROWS.refuse_unknown(ids, set(failure_ids(app, FailureFilter(ids=list(ids)))))


def _cells(r: FailedTask) -> tuple[Any, ...]:
    return r.id, r.status, r.task_name, r.exc_type, r.reason, r.attempts, short_time(r.last_failed_at), r.replay_task_id


ROWS = Rows(
    noun="failed task",
    group="failed",
    filter=FailureFilter,
    as_dict=lambda row, full: failure_dict(row, full=full),
    headers=("id", "status", "task", "exception", "reason", "tries", "last failed (UTC)", "replayed as"),
    cells=_cells,
    fetch=lambda app, selected, limit, offset: list_failures(app, selected, limit=limit, offset=offset),
    count=count_failures,
    get=get_failure,
    payloads=("args", "kwargs", "options", "raw_message"),
)


@failed.command(name="list", cls=CeleryCommand)
@filter_options
@page_options
@json_option
@click.pass_context
def list_cmd(ctx: click.Context, /, as_json: bool, **filters: Any) -> None:
    """List stored failures, newest first, a page at a time ("N of M" says how many match)."""
    ROWS.list(ctx, as_json, filters)


@failed.command(cls=CeleryCommand)
@click.argument("failure_id", type=int)
@json_option
@click.pass_context
def show(ctx: click.Context, failure_id: int, as_json: bool) -> None:
    """Everything stored about one failure: arguments, options, traceback."""
    data = ROWS.show(ctx, failure_id, as_json)
    if data is None:
        return
    traceback = data.pop("traceback")
    ROWS.show_table(data)
    echo(f"\n{traceback.rstrip()}" if traceback else "\n(no traceback stored)")


@failed.command(cls=CeleryCommand)
@click.argument("ids", nargs=-1, type=int)
@filter_options
@click.option("--all", "everything", is_flag=True, help="Every row (except those being replayed).")
@dry_run_option
@yes_option
@json_option
@click.pass_context
def purge(
    ctx: click.Context, /, ids: tuple[int, ...], everything: bool, dry_run: bool, yes: bool, as_json: bool,
    **filters: Any,
) -> None:  # fmt: skip
    """Delete stored failures: the given IDS, those matching the filters, or --all.

    Rows being replayed are kept.
    """
    app = app_of(ctx)
    if not (ids or everything or any(v is not None for v in filters.values())):
        raise click.UsageError("say which rows: failure IDS, a filter (--task, --exception, ...) or --all")
    selected = make_filter(app, ids, **filters)
    with reliable_errors():
        missing_ids(app, ids)
        states = failure_states(app, selected)
        chosen = [i for i, state in states if state != FailureStatus.REPLAYING]
        busy = len(states) - len(chosen)
        deleted = 0
        if chosen and not dry_run:
            confirm(f"Delete {len(chosen)} failed task row(s) for good?", yes)
            chunks = [chosen[i : i + PURGE_CHUNK] for i in range(0, len(chosen), PURGE_CHUNK)]
            for chunk in progress(chunks, len(chunks), "purging"):
                deleted += purge_failures(app, FailureFilter(ids=chunk))
    if as_json:
        echo_json({"selected": len(chosen), "deleted": deleted, "dry_run": dry_run, "kept_replaying": busy})
    elif dry_run:
        echo(f"would delete {len(chosen)} failed task row(s)")
    else:
        echo(f"deleted {deleted} failed task row(s)" + (f"; kept {busy} being replayed" if busy else ""))


@failed.command(cls=CeleryCommand)
@filter_options
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, allow_dash=True), default="-", help="File to write (- = stdout)."
)
@json_option
@click.pass_context
def export(ctx: click.Context, /, output: str, as_json: bool, **filters: Any) -> None:
    """Write the selected failures as JSON lines (one object per row, oldest first).

    --json writes one JSON array instead (the same objects), for tools that read one document.
    """
    app = app_of(ctx)
    selected = make_filter(app, (), **filters)
    count = 0
    with reliable_errors(), click.open_file(output, "w") as out:
        if as_json:
            out.write("[")
        for row in iter_failures(app, selected):
            text = json.dumps(failure_dict(row), sort_keys=True)
            out.write((",\n" if count else "\n") + text if as_json else text + "\n")
            count += 1
        if as_json:
            out.write("\n]\n" if count else "]\n")
    if output != "-":
        echo(f"exported {count} failed task row(s)", err=True)
