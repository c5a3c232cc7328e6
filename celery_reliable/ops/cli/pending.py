"""``reliable pending list|show|resend|drop``: messages not yet known to be in the broker."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
from celery import Celery
from celery.bin.base import CeleryCommand

from ...config import get_settings
from ...send.relay import RelayStats, send_rows
from ...store.claims import claim_rows
from ...store.models import PendingMessage, PendingStatus
from ...store.pending import PendingFilter, delete_pending, find_pending, get_pending, pending_ids, requeue_stuck
from ..status import pending_statuses
from .base import app_of, echo, echo_json, json_option, reliable, reliable_errors, table
from .options import (
    confirm,
    dry_run_option,
    iso,
    paced,
    progress,
    rate_option,
    short_time,
    yes_option,
)
from .rows import Rows, task_window_options

F = TypeVar("F", bound=Callable[..., Any])

#: States a resend leaves alone: the broker has the message, or it must not run any more.
NOT_RESENT = (*PendingStatus.DELIVERED, PendingStatus.EXPIRED)


@reliable.group()
def pending() -> None:
    """Pending messages (failed sends, outbox rows): list, show, resend, drop."""


def filter_options(func: F) -> F:
    """``--status``, ``--task``, ``--since``, ``--until`` (on the time the row was written)."""
    func = task_window_options(func)
    return click.option("--status", type=click.Choice(pending_statuses()), help="Only rows in this state.")(func)


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
    fetch=lambda app, selected, limit: find_pending(app, selected, limit=limit),
    get=get_pending,
    payloads=("args", "kwargs", "options"),
)


def select_rows(app: Celery, ids: Sequence[int], everything: bool, filters: dict[str, Any]) -> list[tuple[int, str]]:
    """(id, status) of the rows a bulk command works on; unknown ids refused before any change."""
    if not (ids or everything or any(v is not None for v in filters.values())):
        raise click.UsageError("say which rows: pending IDS, a filter (--status, --task, ...) or --all")
    selected = ROWS.make_filter(app, ids, check_task=True, **filters)
    with reliable_errors():
        rows = pending_ids(app, selected)
    if ids and not any(v is not None for v in filters.values()):
        ROWS.refuse_unknown(ids, {i for i, _ in rows})
    return rows


@pending.command(name="list", cls=CeleryCommand)
@filter_options
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="Rows to show.")
@json_option
@click.pass_context
def list_cmd(ctx: click.Context, /, limit: int, as_json: bool, **filters: Any) -> None:
    """List pending rows, oldest first."""
    ROWS.list(ctx, limit, as_json, filters)


@pending.command(cls=CeleryCommand)
@click.argument("pending_id", type=int)
@json_option
@click.pass_context
def show(ctx: click.Context, pending_id: int, as_json: bool) -> None:
    """Everything stored about one pending message."""
    data = ROWS.show(ctx, pending_id, as_json)
    if data is not None:
        ROWS.show_table(data)


def resend(app: Celery, ids: Sequence[int]) -> RelayStats:
    """Send ``ids`` now through the relay's own code, with their original task ids.

    Dead and invalid rows get a fresh count of attempts first; sent and expired rows, and rows
    a running relay holds, are not touched.
    """
    requeue_stuck(app, ids)
    token, rows = claim_rows(app, limit=len(ids), lease=get_settings(app).relay_lease, ids=ids)
    return send_rows(app, token, rows) if rows else RelayStats()


@pending.command(name="resend", cls=CeleryCommand)
@click.argument("ids", nargs=-1, type=int)
@filter_options
@click.option("--all", "everything", is_flag=True, help="Every row not sent yet.")
@rate_option
@dry_run_option
@yes_option
@json_option
@click.pass_context
def resend_cmd(
    ctx: click.Context, /, ids: tuple[int, ...], everything: bool, rate: float | None, dry_run: bool, yes: bool,
    as_json: bool, **filters: Any,
) -> None:  # fmt: skip
    """Publish pending rows now, with their original task ids, and mark them sent.

    Pending rows go out at once instead of at their next try; dead and invalid rows get a fresh
    count of attempts. Sent and expired rows are skipped. Exit code 1 unless every selected
    row that could be resent was sent.
    """
    app = app_of(ctx)
    rows = select_rows(app, ids, everything, filters)
    chosen = [i for i, status in rows if status not in NOT_RESENT]
    skipped = len(rows) - len(chosen)
    total = RelayStats()
    if chosen and not dry_run:
        confirm(f"Publish {len(chosen)} pending message(s) now?", yes)
        size = 1 if rate else get_settings(app).relay_batch_size
        chunks = [chosen[i : i + size] for i in range(0, len(chosen), size)]
        with reliable_errors():
            for chunk in progress(paced(chunks, rate), len(chunks), "resending"):
                stats = resend(app, chunk)
                total.add(stats)
                if stats.broker_down:
                    break
    missed = len(chosen) - total.sent
    if as_json:
        echo_json({"selected": len(rows), "skipped": skipped, "dry_run": dry_run, **dataclasses.asdict(total)})
    elif dry_run:
        echo(f"would resend {len(chosen)} pending message(s); {skipped} sent or expired row(s) skipped")
    else:
        counts = [(k, getattr(total, k)) for k in ("sent", "failed", "dead", "expired", "invalid", "released")]
        echo(table(["outcome", "rows"], [("selected", len(rows)), ("skipped (sent/expired)", skipped), *counts]))
        not_claimed = len(chosen) - total.claimed
        if not_claimed:
            echo(f"{not_claimed} row(s) were held by a running relay and left to it")
        for error in total.errors[:5]:
            echo(f"error: {error}", err=True)
        for state in ("invalid", "expired"):
            if getattr(total, state):
                echo(f"see why: celery -A proj reliable pending list --status {state}", err=True)
    if not dry_run and missed:
        ctx.exit(1)


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
