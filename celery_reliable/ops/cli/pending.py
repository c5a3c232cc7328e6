"""``reliable pending list|show|resend|drop``: messages not yet known to be in the broker."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
from celery import Celery
from celery.bin.base import CeleryCommand

from ...message.tasks import is_known_task
from ...store.models import PendingMessage, PendingStatus
from ...store.pending import (
    PendingFilter,
    count_pending,
    delete_pending,
    find_pending,
    get_pending,
    pending_ids,
)
from ..status import pending_statuses
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

#: States a resend leaves alone: the broker has the message, or it must not run any more.
NOT_RESENT = (*PendingStatus.DELIVERED, PendingStatus.EXPIRED)


@reliable.group()
def pending() -> None:
    """Pending messages (failed sends, outbox rows): list, show, resend, drop."""


#: ``--status all``: rows in any state.
ALL = "all"
#: What ``pending list`` shows without ``--status``: the rows not sent yet.
UNSENT = (PendingStatus.PENDING, PendingStatus.CLAIMED)


def filter_options(func: F) -> F:
    """``--status``, ``--task``, ``--search``, ``--since``, ``--until`` (on the time the row was written)."""
    func = task_window_options(func)
    return click.option(
        "--status", type=click.Choice([*pending_statuses(), ALL]), help="Only rows in this state (all: any state)."
    )(func)


def status_filter(filters: dict[str, Any], default: Any = None) -> dict[str, Any]:
    """``filters`` with ``--status`` as the filter takes it: ``all`` is any state, none given is ``default``."""
    status = filters.get("status")
    return {**filters, "status": None if status == ALL else default if status is None else status}


def pending_dict(row: PendingMessage) -> dict[str, Any]:
    """A row as JSON data; payloads exactly as stored."""
    return {
        "id": row.id,
        "task_id": row.task_id,
        "task_name": row.task_name,
        "status": row.status,
        "source": row.source,
        "attempts": row.attempts,
        "created_at": iso(row.created_at),
        "next_attempt_at": iso(row.next_attempt_at),
        "sent_at": iso(row.sent_at),
        "eta": iso(row.eta),
        "expires_at": iso(row.expires_at),
        "lease_expires_at": iso(row.lease_expires_at),
        "last_error": row.last_error,
        "args": row.args,
        "kwargs": row.kwargs,
        "options": row.options,
    }


def _cells(r: PendingMessage) -> tuple[Any, ...]:
    waiting = short_time(r.next_attempt_at) if r.status == PendingStatus.PENDING else None
    error = r.last_error[:60] or None
    return r.id, r.status, r.task_name, r.task_id, r.attempts, short_time(r.created_at), waiting, error


ROWS = Rows(
    noun="pending message",
    group="pending",
    filter=PendingFilter,
    as_dict=lambda row, full: pending_dict(row),
    headers=("id", "status", "task", "task id", "tries", "written (UTC)", "next try (UTC)", "last error"),
    cells=_cells,
    fetch=lambda app, selected, limit, offset: find_pending(app, selected, limit, offset, newest_first=True),
    count=count_pending,
    get=get_pending,
    payloads=("args", "kwargs", "options"),
)


def select_rows(
    app: Celery, ids: Sequence[int], everything: bool, filters: dict[str, Any], sends: bool = False
) -> list[tuple[int, str]]:
    """(id, status) of the rows a bulk command works on; unknown ids refused before any change.

    ``sends``: the command sends the rows (a ``--task`` name must be one the app may send).
    """
    if not (ids or everything or any(v is not None for v in filters.values())):
        raise click.UsageError("say which rows: pending IDS, a filter (--status, --task, ...) or --all")
    selected = ROWS.make_filter(app, ids, sends=is_known_task if sends else None, **status_filter(filters))
    with reliable_errors():
        rows = pending_ids(app, selected)
    if ids and not any(v is not None for v in filters.values()):
        ROWS.refuse_unknown(ids, {i for i, _ in rows})
    return rows


@pending.command(name="list", cls=CeleryCommand)
@filter_options
@page_options
@json_option
@click.pass_context
def list_cmd(ctx: click.Context, /, as_json: bool, **filters: Any) -> None:
    """List pending rows, newest first, a page at a time ("N of M" says how many match).

    Without --status: the rows not sent yet (pending, claimed); --status all shows every row.
    """
    ROWS.list(ctx, as_json, status_filter(filters, UNSENT))


@pending.command(cls=CeleryCommand)
@click.argument("pending_id", type=int)
@json_option
@click.pass_context
def show(ctx: click.Context, pending_id: int, as_json: bool) -> None:
    """Everything stored about one pending message."""
    data = ROWS.show(ctx, pending_id, as_json)
    if data is not None:
        ROWS.show_table(data)


@pending.command(cls=CeleryCommand)
@click.argument("ids", nargs=-1, type=int)
@filter_options
@click.option("--all", "everything", is_flag=True, help="Every row, sent or not.")
@dry_run_option
@yes_option
@json_option
@click.pass_context
def drop(
    ctx: click.Context, /, ids: tuple[int, ...], everything: bool, dry_run: bool, yes: bool, as_json: bool,
    **filters: Any,
) -> None:  # fmt: skip
    """Delete pending rows for good: the message they hold will not be sent.

    Rows a relay holds (claimed) are kept.
    """
    app = app_of(ctx)
    rows = select_rows(app, ids, everything, filters)
    chosen = [i for i, status in rows if status != PendingStatus.CLAIMED]
    unsent = sum(1 for _, status in rows if status in (PendingStatus.PENDING, PendingStatus.DEAD))
    deleted = 0
    if chosen and not dry_run:
        warning = f", {unsent} of them never sent" if unsent else ""
        confirm(f"Delete {len(chosen)} pending row(s){warning}?", yes)
        chunks = [chosen[i : i + 500] for i in range(0, len(chosen), 500)]
        with reliable_errors():
            for chunk in progress(chunks, len(chunks), "dropping"):
                deleted += delete_pending(app, chunk)
    kept = len(rows) - deleted if not dry_run else len(rows) - len(chosen)
    if as_json:
        echo_json({"selected": len(rows), "deleted": deleted, "dry_run": dry_run, "kept_claimed": kept})
    elif dry_run:
        echo(f"would delete {len(chosen)} pending row(s)")
    else:
        echo(f"deleted {deleted} pending row(s)" + (f"; kept {kept} held by a relay" if kept else ""))
