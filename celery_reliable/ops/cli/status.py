"""``reliable status``: the reliability tables at a glance; exit code 1 when a person must act."""

from __future__ import annotations

import dataclasses

import click
from celery.bin.base import CeleryCommand

from ...config import get_settings
from ...store.engine import safe_url
from ..status import backlog_threshold, summary, top_counts
from .base import app_of, command_of, echo, echo_json, json_option, reliable, reliable_errors, table

#: Task names and exception types listed by ``status``; the rest are added up as "(other)".
SHOWN = 20


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


@reliable.command(cls=CeleryCommand)
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Pending and failed messages at a glance.

    Exit code 0: nothing needs a person; 1: something does (each reason is listed) or the
    database cannot be read.
    """
    app = app_of(ctx, tasks=False)
    with reliable_errors():
        settings = get_settings(app)
        result = summary(app, command=command_of(ctx))
    if as_json:
        echo_json(
            {"database": safe_url(settings.database_url), "healthy": result.healthy, **dataclasses.asdict(result)}
        )
    else:
        echo(f"database: {safe_url(settings.database_url)}\n")
        alarm = _age(backlog_threshold(settings))
        echo(f"pending messages (oldest unsent: {_age(result.oldest_pending_age)}; alarm after {alarm})")
        echo(table(list(result.pending), [list(result.pending.values())]))
        echo("\nfailed tasks")
        echo(table(list(result.failed_by_status), [list(result.failed_by_status.values())]))
        if result.failed_by_task:
            echo("")
            echo(table(["awaiting action: task", "rows"], list(top_counts(result.failed_by_task, SHOWN).items())))
            echo("")
            exceptions = top_counts(result.failed_by_exception, SHOWN)
            echo(table(["awaiting action: exception", "rows"], list(exceptions.items())))
        echo(f"\nprocessed ids kept: {result.processed_ids}\n")
        if result.attention:
            echo("NEEDS ATTENTION:")
            for reason in result.attention:
                echo(f"  - {reason}")
        else:
            echo("OK: nothing needs a person")
    if result.attention:
        ctx.exit(1)
