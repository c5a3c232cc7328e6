"""Storing a failure from the worker whatever it carries: a value the database refuses is not a
reason to hand the message back for ever.

PostgreSQL refuses NUL characters in text and JSON, and no database driver takes a lone UTF-16
surrogate (``"\\ud800"`` in a JSON message decodes to one). Such a value in a task's arguments,
an exception message or a raw message would make every attempt to store the failure fail, and the
message would go back to the broker each time. Here a refused value is retried once with those
characters escaped (``\\x00``, ``\\ud800``) and a note, and once more as a minimal row if even
that is refused; only a database that does not answer raises :class:`StoreError`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from celery import Celery
from sqlalchemy import exc as sa_exc

from ..exceptions import StoreError
from ..store.failures import FailureRecord, record_failure

logger = logging.getLogger(__name__)

#: Database errors that say the database is away (or not migrated), not that a value was refused.
_AWAY = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.ProgrammingError, sa_exc.TimeoutError)

NOTE = "[celery_reliable: NUL characters and lone surrogates were escaped; the database refused them as they were]"


def _refused(exc: BaseException) -> bool:
    """True when ``exc`` is the database refusing a value (not the database being away)."""
    if isinstance(exc, StoreError):
        cause = exc.__cause__
        return cause is not None and not isinstance(cause, _AWAY)
    return isinstance(exc, ValueError | TypeError)  # the driver refused it before sending (UnicodeEncodeError)


def escape_text(text: str) -> str:
    """``text`` with NUL characters and lone surrogates written as escapes; other characters kept."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def escape_value(value: Any, depth: int = 0) -> Any:
    """:func:`escape_text` applied to every string (keys too) of a JSON-like value."""
    if depth > 100:
        return "[nested too deeply]"
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, dict):
        return {escape_text(str(k)): escape_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [escape_value(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return escape_text(value.decode("utf-8", "backslashreplace"))
    return value


def escaped(record: FailureRecord) -> FailureRecord:
    """``record`` with every string escaped and a note in its exception message."""
    fields = {f.name: escape_value(getattr(record, f.name)) for f in dataclasses.fields(record)}
    fields["exc_message"] = f"{fields['exc_message']} {NOTE}".strip()
    fields["replay_of_id"] = record.replay_of_id
    fields["attempts"] = record.attempts
    return FailureRecord(**fields)


def minimal(record: FailureRecord, error: BaseException) -> FailureRecord:
    """The smallest row that still says what failed: ids, reason, exception type, the refusal."""
    return FailureRecord(
        task_id=escape_text(record.task_id)[:255],
        task_name=escape_text(record.task_name)[:255],
        reason=record.reason,
        exc_type=escape_text(record.exc_type)[:255],
        exc_message=(
            "celery_reliable: the failure's details could not be stored "
            f"({type(error).__name__}: {escape_text(str(error))[:500]}); only its ids are kept."
        ),
        attempts=record.attempts,
        hostname=escape_text(record.hostname)[:255],
    )


def store(app: Celery, record: FailureRecord) -> int:
    """Store ``record``; return its row id.

    Raises:
        StoreError: the database could not be written (away, not migrated): hand the message back.
    """
    try:
        return record_failure(app, record)
    except Exception as exc:
        if not _refused(exc):
            raise
        logger.warning("Failure of %s refused by the database (%s); storing it escaped", record.task_id, exc)
        first = exc
    try:
        return record_failure(app, escaped(record))
    except Exception as exc:
        if not _refused(exc):
            raise
        logger.error("Failure of %s refused again (%s); storing its ids only", record.task_id, exc)
        first = exc
    try:
        return record_failure(app, minimal(record, first))
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"the failure of {record.task_id!r} could not be stored at all: {exc!r}") from exc
