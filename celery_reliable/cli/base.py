"""The ``reliable`` command group and the output helpers every subcommand shares."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from celery import Celery
from celery.bin.base import handle_preload_options

from ..exceptions import ReliableError

F = TypeVar("F", bound=Callable[..., Any])


@click.group(name="reliable")
@click.pass_context
@handle_preload_options
def reliable(ctx: click.Context) -> None:
    """celery_reliable: pending and failed messages, migrations, checks."""


def app_of(ctx: click.Context) -> Celery:
    """The Celery app given with ``celery -A proj``."""
    app: Celery = ctx.obj.app
    return app


def json_option(func: F) -> F:
    """Add ``--json``: machine-readable output instead of aligned tables."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


@contextmanager
def reliable_errors() -> Iterator[None]:
    """Turn our errors into a clean ``Error: ...`` line and exit code 1."""
    try:
        yield
    except ReliableError as exc:
        raise click.ClickException(str(exc)) from None


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str, sort_keys=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; ``None`` shown as ``-``."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)
