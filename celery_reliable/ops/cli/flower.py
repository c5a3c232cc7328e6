"""``reliable flower``: Flower with the Reliability page on the same port."""

from __future__ import annotations

import click
from celery.bin.base import CeleryCommand

from ...exceptions import ReliableError
from .base import CleanError, reliable


@reliable.command(name="flower", cls=CeleryCommand, context_settings={"ignore_unknown_options": True})
@click.argument("flower_argv", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def flower_cmd(ctx: click.Context, flower_argv: tuple[str, ...]) -> None:
    """Start Flower with the Reliability page; takes every celery flower option.

    Extra options: --reliable_metrics_cache=SECONDS, --reliable_nav_link=False.
    """
    try:
        from ..flower.server import run
    except ImportError as exc:
        raise CleanError(
            f"Flower is not installed ({exc}); install it with: pip install 'celery_reliable[flower]'"
        ) from None
    try:
        run(ctx.obj.app, list(flower_argv), quiet=bool(ctx.obj.quiet))
    except ReliableError as exc:
        raise CleanError(str(exc)) from None
