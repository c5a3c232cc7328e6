"""``reliable metrics``: the table metrics in Prometheus' text format (stdout or a .prom file)."""

from __future__ import annotations

import click
from celery.bin.base import CeleryCommand

from .. import metrics
from .base import reliable


@reliable.command(name="metrics", cls=CeleryCommand)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, writable=True),
    help="Write to this file atomically (for node_exporter's textfile collector: a *.prom file).",
)  # fmt: skip
@click.pass_context
def metrics_cmd(ctx: click.Context, output: str | None) -> None:
    """Print the celery_reliable metrics (pending depth and age, failed rows, replays).

    Exits 1 when the database cannot be read; the output then says celery_reliable_up 0.
    """
    app = ctx.obj.app
    if output:
        try:
            ok = metrics.write_textfile(app, output)
        except OSError as exc:
            raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    else:
        text, ok = metrics.exposition(app)
        click.echo(text.decode(), nl=False)
    if not ok:
        raise click.ClickException("the reliability tables could not be read (celery_reliable_up 0); see the log")
