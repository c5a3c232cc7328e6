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
    failure_ids,
    failure_states,
    get_failure,
    iter_failures,
    list_failures,
    purge_failures,
)
from ...store.models import FailedTask, FailureStatus
from .base import CleanError, app_of, echo, echo_json, json_option, reliable, reliable_errors, table
from .options import (
    check_task_name,
    confirm,
    dry_run_option,
    iso,
    parse_when,
    progress,
    short_time,
    window_options,
    yes_option,
)

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
    func = window_options(func)
    exc_help = "Only this exception type, e.g. ValueError or requests.exceptions.Timeout."
    func = click.option("--exception", "exc_type", help=exc_help)(func)
    return click.option("--task", "task_name", help="Only this task name.")(func)


def make_filter(
    app: Celery, ids: Sequence[int], *, task_name: str | None, exc_type: str | None, status: str | None = None,
    since: str | None, until: str | None, check_task: bool = False, **_: Any,
) -> FailureFilter:  # fmt: skip
    """The filter the options describe (ids too, when given); ``check_task``: refuse an unregistered name."""
    if check_task:
        check_task_name(app, task_name)
    return FailureFilter(
        task_name=task_name,
        exc_type=exc_type,
        status=status,
        since=parse_when(since, "--since"),
        until=parse_when(until, "--until"),
        ids=list(ids) if ids else None,
    )


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
        found = set(failure_ids(app, FailureFilter(ids=list(ids))))
        unknown = sorted(set(ids) - found)
        if unknown:
            raise CleanError(
                f"no failed task with id {', '.join(map(str, unknown))}; nothing was changed "
                "(see celery -A proj reliable failed list)"
            )


@failed.command(name="list", cls=CeleryCommand)
@filter_options
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="Rows to show.")
@json_option
@click.pass_context
def list_cmd(ctx: click.Context, /, limit: int, as_json: bool, **filters: Any) -> None:
    """List stored failures, newest first."""
    app = app_of(ctx)
    selected = make_filter(app, (), **filters)
    with reliable_errors():
        rows = list_failures(app, selected, limit=limit)
    if as_json:
        echo_json([failure_dict(r, full=False) for r in rows])
        return
    headers = ["id", "status", "task", "exception", "reason", "tries", "last failed (UTC)", "replayed as"]
    cells = [
        (r.id, r.status, r.task_name, r.exc_type, r.reason, r.attempts, short_time(r.last_failed_at), r.replay_task_id)
        for r in rows
    ]
    echo(table(headers, cells) if rows else "no failed tasks match")


@failed.command(cls=CeleryCommand)
@click.argument("failure_id", type=int)
@json_option
@click.pass_context
def show(ctx: click.Context, failure_id: int, as_json: bool) -> None:
    """Everything stored about one failure: arguments, options, traceback."""
    app = app_of(ctx)
    with reliable_errors():
        row = get_failure(app, failure_id)
    if row is None:
        raise CleanError(f"no failed task with id {failure_id} (see celery -A proj reliable failed list)")
    data = failure_dict(row)
    if as_json:
        echo_json(data)
        return
    traceback = data.pop("traceback")
    for key in ("args", "kwargs", "options", "raw_message"):
        data[key] = json.dumps(data[key], sort_keys=True)
    echo(table(["field", "value"], list(data.items())))
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
@click.pass_context
def export(ctx: click.Context, /, output: str, **filters: Any) -> None:
    """Write the selected failures as JSON lines (one object per row, oldest first)."""
    app = app_of(ctx)
    selected = make_filter(app, (), **filters)
    count = 0
    with reliable_errors(), click.open_file(output, "w") as out:
        for row in iter_failures(app, selected):
            out.write(json.dumps(failure_dict(row), sort_keys=True) + "\n")
            count += 1
    if output != "-":
        echo(f"exported {count} failed task row(s)", err=True)
