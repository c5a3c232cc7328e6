"""``reliable metrics``: the table metrics in Prometheus' text format (stdout or a .prom file)."""

from __future__ import annotations

import click
from celery.bin.base import CeleryCommand

from .base import CleanError, echo, reliable


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
    try:  # the [metrics] extra: only this command needs it
        from prometheus_client import generate_latest, write_to_textfile

        from .. import metrics
    except ModuleNotFoundError as exc:
        raise CleanError(
            f"reliable metrics needs {exc.name}, which is not installed: pip install 'celery_reliable[metrics]'"
        ) from None
    app = ctx.obj.app
    registry, error = metrics.read_once(app)
    if output:
        try:
            write_to_textfile(output, registry)
        except OSError as exc:
            raise CleanError(f"cannot write {output}: {exc.strerror or exc}") from None
    else:
        echo(generate_latest(registry).decode(), nl=False)
    if error is not None:
        raise CleanError(f"the reliability tables could not be read (celery_reliable_up 0): {error}")
