"""``reliable db upgrade|current``: Alembic migrations of the reliability tables."""

from __future__ import annotations

import click
from celery.bin.base import CeleryCommand

from ...config import get_settings
from ...exceptions import ReliableError
from ...store.engine import safe_url
from ...store.migrate import current_revision, head_revision, upgrade
from .base import CleanError, command_of, echo, echo_json, json_option, reliable


@reliable.group()
def db() -> None:
    """Schema migrations of the reliability tables."""


@db.command(name="upgrade", cls=CeleryCommand)
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@json_option
@click.pass_context
def upgrade_cmd(ctx: click.Context, revision: str, as_json: bool) -> None:
    """Create or update the reliability tables."""
    app = ctx.obj.app
    try:
        upgrade(app, revision)
        now = current_revision(app)
    except ReliableError as exc:
        raise CleanError(str(exc)) from None
    if as_json:
        echo_json({"database": safe_url(get_settings(app).database_url), "revision": now})
    else:
        echo(f"reliability tables at revision {now}")


@db.command(cls=CeleryCommand)
@json_option
@click.pass_context
def current(ctx: click.Context, as_json: bool) -> None:
    """Show the schema revision of the database and the newest one shipped; exit 1 if they differ."""
    app = ctx.obj.app
    try:
        rev = current_revision(app)
    except ReliableError as exc:
        raise CleanError(str(exc)) from None
    head = head_revision()
    url = safe_url(get_settings(app).database_url)
    if as_json:
        echo_json({"database": url, "revision": rev, "head": head, "up_to_date": rev == head})
    else:
        echo(f"database: {rev or 'not migrated'}  shipped head: {head}")
    if rev != head:
        state = "has no reliability tables" if rev is None else f"is at revision {rev}, not {head}"
        echo(f"{url} {state}: run {command_of(ctx)} db upgrade", err=True)
        ctx.exit(1)
