"""Options and output shared by the ``failed`` and ``pending`` commands: filters, JSON, confirmation, pacing."""

from __future__ import annotations

import difflib
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn, TypeVar

import click
from celery import Celery

from ...message.tasks import user_tasks
from ...store.models import utcnow

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(value: str | None, option: str) -> datetime | None:
    """An ISO date/time (UTC unless it says otherwise) or an age such as ``30m``, ``2h``, ``7d``."""
    if value is None:
        return None
    if match := _DURATION.match(value):
        return utcnow() - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither an ISO date/time (2026-01-31T12:00) nor an age (45s, 30m, 2h, 7d, 1w)",
            param_hint=option,
        ) from None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def window_options(func: F) -> F:
    """``--since``/``--until``: a time window."""
    func = click.option("--until", help="Only rows older than this: ISO date/time or an age (2h, 7d).")(func)
    return click.option("--since", help="Only rows from this time on: ISO date/time or an age (30m, 2h, 7d).")(func)


def refuse_task_name(app: Celery, name: str, why: str = "") -> NoReturn:
    """Refuse a ``--task`` name (exit code 2), saying what is wrong and how to fix it."""
    tasks = user_tasks(app)
    near = difflib.get_close_matches(name, tasks, n=1)
    if near:
        hint = f"; did you mean {near[0]!r}?"
    elif not tasks:
        hint = (
            "; the app registers no task of its own: import its task modules from the app module "
            "(Celery(include=[...]) or app.autodiscover_tasks()), or check the -A app"
        )
    else:
        hint = "; check the name and the -A app"
    raise click.BadParameter(f"task {name!r} is not registered in app {app.main!r}{why}{hint}", param_hint="--task")


def json_value(value: str | None, option: str, kind: type) -> Any:
    """Parse a JSON option value of type ``kind`` (list or dict); a clear error otherwise."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON ({exc}): {value!r}", param_hint=option) from None
    if not isinstance(parsed, kind):
        example = "'[1, \"a\"]'" if kind is list else '\'{"key": "value"}\''
        raise click.BadParameter(
            f"must be a JSON {'array' if kind is list else 'object'}, got {value!r}; e.g. {option} {example}",
            param_hint=option,
        )
    return parsed


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def short_time(value: datetime | None) -> str | None:
    """A time in a table: UTC to the second."""
    return None if value is None else value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def confirm(question: str, yes: bool) -> None:
    """Ask before changing anything, unless ``--yes``; a refusal exits 1 with nothing changed."""
    if not yes:
        click.confirm(question, abort=True, err=True)


def progress(items: Iterable[T], length: int, label: str) -> Iterator[T]:
    """A progress bar on stderr (stdout stays clean for ``--json``)."""
    with click.progressbar(items, length=length, label=label, file=sys.stderr) as bar:
        yield from bar


def paced(items: Iterable[T], rate: float | None) -> Iterator[T]:
    """Yield ``items`` no faster than ``rate`` per second (no limit when None)."""
    interval = 1.0 / rate if rate else 0.0
    last: float | None = None
    for item in items:
        if interval and last is not None and (wait := last + interval - time.monotonic()) > 0:
            time.sleep(wait)
        last = time.monotonic()
        yield item


def rate_option(func: F) -> F:
    return click.option(
        "--rate",
        type=click.FloatRange(min=0, min_open=True),
        help="Send at most this many messages per second.",
    )(func)


def yes_option(func: F) -> F:
    return click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")(func)


def dry_run_option(func: F) -> F:
    return click.option("--dry-run", is_flag=True, help="Show what would be done; change nothing.")(func)
