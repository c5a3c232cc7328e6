"""``reliable db upgrade|current``: Alembic migrations of the reliability tables."""

from __future__ import annotations

import click
from celery.bin.base import CeleryCommand

from ...config import get_settings
from ...exceptions import ReliableError
from ...store.engine import safe_url
from ...store.migrate import current_revision, head_revision, upgrade
from .base import CleanError, echo, reliable


@reliable.group()
def db() -> None:
    """Schema migrations of the reliability tables."""


@db.command(name="upgrade", cls=CeleryCommand)
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.pass_context
def upgrade_cmd(ctx: click.Context, revision: str) -> None:
    """Create or update the reliability tables."""
    app = ctx.obj.app
    try:
        upgrade(app, revision)
        ctx.obj.echo(f"reliability tables at revision {current_revision(app)}")
    except ReliableError as exc:
        raise CleanError(str(exc)) from None


@db.command(cls=CeleryCommand)
@click.pass_context
def current(ctx: click.Context) -> None:
    """Show the schema revision of the database and the newest one shipped."""
    app = ctx.obj.app
    try:
        rev = current_revision(app)
    except ReliableError as exc:
        raise CleanError(str(exc)) from None
    head = head_revision()
    ctx.obj.echo(f"database: {rev or 'not migrated'}  shipped head: {head}")
    if rev != head:
        state = "has no reliability tables" if rev is None else f"is at revision {rev}, not {head}"
        command = f"celery -A {app.main or 'proj'} reliable db upgrade"
        echo(f"{safe_url(get_settings(app).database_url)} {state}: run {command}", err=True)
        ctx.exit(1)
