"""The ``celery reliable`` command as Celery's command line loads it (the ``celery.commands`` entry point).

Celery imports every ``celery.commands`` plugin whenever any ``celery`` command starts: a worker,
beat, ``inspect``. The subcommands (and what they use: Alembic for ``db``, the Flower page, the
doctor) are imported only when ``celery reliable`` itself runs.
"""

from __future__ import annotations

from typing import Any

import click


class ReliableCommand(click.Group):
    """Stands for :data:`celery_reliable.ops.cli.reliable`, imported on first use."""

    def _group(self) -> click.Group:
        from .cli import reliable as group

        return group

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._group().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._group().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        return self._group().invoke(ctx)


reliable = ReliableCommand(
    name="reliable",
    help="celery_reliable: pending and failed messages, migrations, checks.",
    invoke_without_command=False,
)
