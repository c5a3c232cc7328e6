"""The reliability tables: reachable and at the schema this package expects.

Without them a final failure cannot be stored, so ReliableTask hands the message back to the
broker again and again, and publish() has nowhere to keep what it could not send.
"""

from __future__ import annotations

from pathlib import Path

from celery import Celery
from sqlalchemy.engine import make_url

from ...config import ReliableSettings
from ...exceptions import StoreError
from ...store.engine import safe_url
from ...store.errors import diagnose
from ...store.migrate import current_revision, head_revision
from .result import Result, Status


def _without_password(text: str, url: str) -> str:
    try:
        password = make_url(url).password
    except Exception:  # an unparsable URL has no password to hide
        return text
    return text.replace(str(password), "***") if password else text


def _missing_sqlite_file(url: str) -> str | None:
    """The path of a SQLite database file that does not exist (connecting would create it)."""
    try:
        parsed = make_url(url)
    except Exception:
        return None
    path = parsed.database
    if not parsed.get_backend_name() == "sqlite" or not path or path == ":memory:" or path.startswith("file:"):
        return None
    return None if Path(path).exists() else path


def check_schema(app: Celery, settings: ReliableSettings) -> Result:
    """``current_revision`` against the newest migration shipped."""
    url = settings.database_url
    shown = safe_url(url)
    upgrade = f"celery -A {app.main or 'proj'} reliable db upgrade"
    missing = _missing_sqlite_file(url)
    if missing:
        return Result(
            "db.schema",
            Status.FAIL,
            f"database file {missing} does not exist: failures cannot be stored and stay with the broker",
            upgrade,
        )
    try:
        revision = current_revision(app)
    except Exception as exc:  # StoreError (unknown dialect, missing driver, unreachable), or worse
        problem = diagnose(url, exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ else exc)
        return Result(
            "db.schema",
            Status.FAIL,
            _without_password(problem.detail + ": failures cannot be stored and stay with the broker", url),
            _without_password(problem.fix.replace("celery -A proj", f"celery -A {app.main or 'proj'}"), url),
        )
    head = head_revision()
    if revision is None:
        return Result(
            "db.schema",
            Status.FAIL,
            f"database {shown} has no reliability tables: failures cannot be stored and stay with the broker",
            upgrade,
        )
    if revision != head:
        return Result(
            "db.schema",
            Status.FAIL,
            f"database {shown} is at revision {revision}, this package expects {head}",
            upgrade + " (or install the celery_reliable version that wrote it)",
        )
    return Result("db.schema", Status.PASS, f"database {shown} reachable, tables at revision {head}")
