"""The ``reliable`` command group and the output helpers every subcommand shares.

Human output goes through :func:`echo`, :func:`table` and :class:`CleanError`, which escape the
control characters of stored text (task names, exception messages, tracebacks, hostnames, send
errors) so a row cannot drive the operator's terminal; ``--json`` output is JSON with ASCII
escapes, so it is safe as it is.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from celery import Celery
from celery.bin.base import handle_preload_options

from ...exceptions import ReliableError
from ...text import printable

F = TypeVar("F", bound=Callable[..., Any])


@click.group(name="reliable")
@click.pass_context
@handle_preload_options
def reliable(ctx: click.Context) -> None:
    """celery_reliable: pending and failed messages, migrations, checks."""
    app: Celery | None = getattr(ctx.obj, "app", None)
    if app is not None and any(type(fixup).__name__ == "DjangoFixup" for fixup in getattr(app, "_fixups", ())):
        # a Django project: load it as its worker does (Celery's fixup sets Django up, then
        # autodiscover_tasks() imports the tasks), so the commands see the worker's database
        # (contrib.django) and tasks (a replay or a resend checks its task is registered)
        app.loader.import_default_modules()


def app_of(ctx: click.Context, tasks: bool = True) -> Celery:
    """The Celery app given with ``celery -A proj``, with its task modules imported (``tasks``).

    ``celery -A proj`` imports only the module that defines the app; a worker then imports the
    task modules (``Celery(include=[...])``, ``imports``, ``app.autodiscover_tasks()``) through
    Celery's loader. The commands that check task names do the same, so they know every task a
    worker of the app runs; ``status``, ``doctor`` (which reports a failed import as a check) and
    ``verify`` do not need to.
    """
    app: Celery = ctx.obj.app
    if tasks:
        load_tasks(app)
    return app


def load_tasks(app: Celery) -> None:
    """Import the app's task modules the way ``celery worker`` does; a clean error if that fails."""
    try:
        app.loader.import_default_modules()
    except ReliableError as exc:
        raise CleanError(str(exc)) from None
    except Exception as exc:
        raise CleanError(
            f"importing the task modules of app {app.main!r} failed ({type(exc).__name__}: {exc}); "
            "a worker of this app would fail the same way: fix the import"
        ) from None


#: How the docs and stored messages write the command; replaced by the one the operator typed.
GENERIC_COMMAND = "celery -A proj reliable"


def command_of(ctx: click.Context | None = None) -> str:
    """``celery -A <app> reliable``, with the ``-A`` value this command was started with.

    Outside Celery's command line (tests, another click group) the app's main name stands in.
    """
    ctx = ctx or click.get_current_context(silent=True)
    if ctx is None:
        return GENERIC_COMMAND
    value = ctx.find_root().params.get("app")
    if not isinstance(value, str) or not value:
        app = getattr(ctx.obj, "app", None)
        value = getattr(app, "main", None) or "proj"
    return f"celery -A {shlex.quote(value)} reliable"


def with_command(text: str) -> str:
    """``text`` with the generic ``celery -A proj reliable`` replaced by this command's own."""
    return text.replace(GENERIC_COMMAND, command_of()) if GENERIC_COMMAND in text else text


def json_option(func: F) -> F:
    """Add ``--json``: machine-readable output instead of aligned tables."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


class CleanError(click.ClickException):
    """``Error: ...`` and exit code 1, with the control characters of the message escaped.

    A ``celery -A proj reliable`` hint in the message names the app the way the operator did.
    """

    def __init__(self, message: str) -> None:
        super().__init__(with_command(message))

    def format_message(self) -> str:
        return printable(self.message, multiline=True)


@contextmanager
def reliable_errors() -> Iterator[None]:
    """Turn our errors into a clean ``Error: ...`` line and exit code 1."""
    try:
        yield
    except ReliableError as exc:
        raise CleanError(str(exc)) from None


def echo(message: Any = "", err: bool = False, nl: bool = True) -> None:
    """``click.echo`` of human output: newlines and tabs kept, every other control character escaped."""
    click.echo(printable(message, multiline=True), err=err, nl=nl)


def echo_json(data: Any) -> None:
    """JSON with ASCII escapes (``\\u001b``): no raw control character reaches the terminal."""
    click.echo(json.dumps(data, indent=2, default=str, sort_keys=False, ensure_ascii=True))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; ``None`` shown as ``-``.

    Each cell is one line: newlines and every other control character in it are escaped, so a
    stored value can neither fake a row nor drive the terminal.
    """
    cells = [[("-" if v is None else printable(v)) for v in row] for row in rows]
    headers = [printable(h) for h in headers]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)
