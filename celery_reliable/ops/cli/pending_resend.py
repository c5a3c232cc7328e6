"""``reliable pending resend``: publish pending rows now, through the relay's own code.

``--dry-run`` applies the checks the relay applies to each row before it sends it (a task this
app may send, readable columns, arguments that fit, ``expires`` not passed, not held by a running
relay), so it refuses what the real run would refuse, with the same reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import click
from celery import Celery
from celery.bin.base import CeleryCommand

from ...config import get_settings
from ...message.tasks import Refused
from ...send.publisher import get_publisher
from ...send.relay import RelayStats, send_rows
from ...send.relay_check import RowChecks
from ...store.claims import claim_rows
from ...store.models import PendingMessage, PendingStatus, utcnow
from ...store.pending import PendingFilter, find_pending, requeue_stuck
from .base import app_of, command_of, echo, echo_json, json_option, reliable_errors, table
from .options import confirm, dry_run_option, paced, progress, rate_option, yes_option
from .pending import NOT_RESENT, filter_options, pending, select_rows

#: Rows read at a time by a dry run.
CHECK_CHUNK = 500


def resend(app: Celery, ids: Sequence[int]) -> RelayStats:
    """Send ``ids`` now through the relay's own code, with their original task ids.

    Dead and invalid rows get a fresh count of attempts first; sent and expired rows, and rows
    a running relay holds, are not touched.
    """
    requeue_stuck(app, ids)
    token, rows = claim_rows(app, limit=len(ids), lease=get_settings(app).relay_lease, ids=ids)
    return send_rows(app, token, rows) if rows else RelayStats()


def refusal(checks: RowChecks, row: PendingMessage, direct: bool) -> str | None:
    """Why a resend of ``row`` would not send it (the relay's own checks), or None if it would."""
    now = utcnow()
    if row.status == PendingStatus.CLAIMED and row.lease_expires_at is not None and row.lease_expires_at > now:
        return "held by a running relay (left to it)"
    try:
        checks.columns(row)
        if row.expires_at is not None and row.expires_at <= now:
            return "expired: its expires passed before it was sent (drop it)"
        if direct and row.message is not None and row.status not in PendingStatus.NEEDS_ACTION:
            checks.stored_entry(row)  # a dead or invalid row is resent from its columns (requeue_stuck)
        else:
            checks.decoded(row)
    except Refused as exc:
        return str(exc)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def dry_run(app: Celery, ids: Sequence[int]) -> list[tuple[int, str | None]]:
    """(id, why it would not be sent or None) of each row, checked as a resend checks it; nothing changes."""
    publisher = get_publisher(app)
    try:
        direct = publisher.direct_redis()
    except Exception:  # the broker does not answer: the real run would send through kombu, or not at all
        direct = False
    checks = RowChecks(app, publisher.facts)
    found: list[tuple[int, str | None]] = []
    for start in range(0, len(ids), CHECK_CHUNK):
        chunk = list(ids[start : start + CHECK_CHUNK])
        found += [
            (row.id, refusal(checks, row, direct)) for row in find_pending(app, PendingFilter(ids=chunk), len(chunk))
        ]
    return found


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
    row that could be resent was sent (--dry-run: would be sent).
    """
    app = app_of(ctx)
    rows = select_rows(app, ids, everything, filters, sends=True)
    chosen = [i for i, status in rows if status not in NOT_RESENT]
    skipped = len(rows) - len(chosen)
    if dry_run:
        _dry_run(ctx, app, chosen, len(rows), skipped, as_json)
        return
    total = RelayStats()
    if chosen:
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
        echo_json({"selected": len(rows), "skipped": skipped, "dry_run": False, **dataclasses.asdict(total)})
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
                echo(f"see why: {command_of(ctx)} pending list --status {state}", err=True)
    if missed:
        ctx.exit(1)


def _dry_run(ctx: click.Context, app: Celery, chosen: list[int], selected: int, skipped: int, as_json: bool) -> None:
    """Check each chosen row as the real run would; exit 1 if any would not be sent."""
    with reliable_errors():
        checked = dry_run(app, chosen)
    refused = [(row_id, reason) for row_id, reason in checked if reason is not None]
    would = len(checked) - len(refused)
    if as_json:
        echo_json({
            "selected": selected, "skipped": skipped, "dry_run": True, "would_send": would,
            "refused": [{"id": row_id, "reason": reason} for row_id, reason in refused],
        })  # fmt: skip
    else:
        if refused:
            echo(table(["id", "would not be sent because"], refused))
        tail = f"; {len(refused)} would not be sent" if refused else ""
        echo(f"would resend {would} pending message(s); {skipped} sent or expired row(s) skipped{tail}")
    if refused:
        ctx.exit(1)
