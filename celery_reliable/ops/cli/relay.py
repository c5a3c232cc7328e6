"""``reliable relay``: one relay pass by hand (what the beat task does every ``reliable_relay_interval``)."""

from __future__ import annotations

import dataclasses

import click
from celery.bin.base import CeleryCommand

from ...send.relay import relay_once
from .base import app_of, echo, echo_json, json_option, reliable, reliable_errors, table


@reliable.command(name="relay", cls=CeleryCommand)
@click.option("--batch-size", type=click.IntRange(min=1), help="Rows per batch (default: reliable_relay_batch_size).")
@click.option("--max-batches", type=click.IntRange(min=1), help="Stop after this many batches.")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), help="Stop claiming after this many s.")
@json_option
@click.pass_context
def relay_cmd(
    ctx: click.Context, batch_size: int | None, max_batches: int | None, time_limit: float | None, as_json: bool
) -> None:
    """Send the pending messages that are due now, and print what happened.

    Exit code 1 when the broker could not be reached (the rows stay for the next pass).
    """
    app = app_of(ctx)
    with reliable_errors():
        stats = relay_once(app, batch_size=batch_size, time_limit=time_limit, max_batches=max_batches)
    if as_json:
        echo_json(dataclasses.asdict(stats))
    else:
        keys = ("claimed", "sent", "failed", "dead", "expired", "invalid", "released", "batches")
        echo(table(["relay pass", "rows"], [(k, getattr(stats, k)) for k in keys]))
        for error in stats.errors[:5]:
            echo(f"error: {error}", err=True)
    if stats.broker_down:
        ctx.exit(1)
