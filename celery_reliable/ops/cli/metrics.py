"""``reliable metrics``: the table metrics in Prometheus' text format (stdout or a .prom file)."""

from __future__ import annotations

from typing import Any

import click
from celery.bin.base import CeleryCommand

from .base import CleanError, echo, echo_json, json_option, reliable


def samples(registry: Any) -> list[dict[str, Any]]:
    """Every sample of ``registry`` as JSON data: name, labels, value (the same numbers as the text)."""
    return [
        {"name": sample.name, "labels": dict(sample.labels), "value": sample.value}
        for family in registry.collect()
        for sample in family.samples
    ]


@reliable.command(name="metrics", cls=CeleryCommand)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, writable=True),
    help="Write to this file atomically (for node_exporter's textfile collector: a *.prom file).",
)  # fmt: skip
@json_option
@click.pass_context
def metrics_cmd(ctx: click.Context, output: str | None, as_json: bool) -> None:
    """Print the celery_reliable metrics (pending depth and age, failed rows, replays).

    --json prints the samples as a JSON list of name, labels and value instead of Prometheus'
    text. Exits 1 when the database cannot be read; the output then says celery_reliable_up 0.
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
    if output and as_json:
        raise click.UsageError("--json prints to stdout; --output writes Prometheus' text format: give one")
    if as_json:
        echo_json(samples(registry))
    elif output:
        try:
            write_to_textfile(output, registry)
        except OSError as exc:
            raise CleanError(f"cannot write {output}: {exc.strerror or exc}") from None
    else:
        echo(generate_latest(registry).decode(), nl=False)
    if error is not None:
        raise CleanError(f"the reliability tables could not be read (celery_reliable_up 0): {error}")
