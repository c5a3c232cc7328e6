"""The transactional outbox in Django's transaction: ``outbox().send(...)`` inside ``atomic()``.

The message is a pending row written through Django's connection, so it commits or rolls back
with the caller's data (a savepoint rolled back drops its rows and their sends). It is published
from ``transaction.on_commit``, from this process; a process that dies between the commit and
the send leaves the row pending, and the relay sends it after ``reliable_outbox_grace`` seconds,
as for :func:`celery_reliable.outbox`. The row is the one the SQLAlchemy outbox writes: built by
the same code, each cell converted by the column's own SQLAlchemy type.
"""

from __future__ import annotations

import functools
import weakref
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import Table
from sqlalchemy.engine import Dialect, make_url

from ...config import get_settings
from ...exceptions import ImproperlyConfigured
from ...message.prepare import prepare
from ...send.outbox import publish_staged
from ...send.publish import with_message
from ...store.engine import get_engine, safe_url
from ...store.models import PendingMessage, utcnow
from .database import database_url

_T: Table = PendingMessage.__table__  # type: ignore[assignment]
#: app -> aliases found to be the store's database
_checked: weakref.WeakKeyDictionary[Celery, set[str]] = weakref.WeakKeyDictionary()


class DjangoOutbox:
    """Messages staged in the current transaction of Django's database ``using``."""

    def __init__(self, app: Celery, using: str) -> None:
        self.app = app
        self.using = using
        #: pending-row ids written through this outbox
        self.row_ids: list[int] = []

    def send(self, task: str | Any, args: Any = None, kwargs: Any = None, **options: Any) -> str:
        """Stage task ``task`` (a name or a task); returns its task id (fixed now, kept on resend).

        Raises:
            PublishError: bad input (see :func:`celery_reliable.publish`); nothing is written.
            ImproperlyConfigured: the pending table is not in this database.
        """
        from django.db import transaction

        _check_same_database(self.app, self.using)
        name = task if isinstance(task, str) else task.name
        values = with_message(self.app, prepare(self.app, name, args, kwargs, options))
        grace = get_settings(self.app).outbox_grace
        row = values.row("outbox", utcnow() + timedelta(seconds=grace))
        row_id = _insert(self.using, get_engine(self.app).dialect, row)
        self.row_ids.append(row_id)
        transaction.on_commit(functools.partial(publish_staged, self.app, [row_id]), using=self.using)
        return values.task_id


def _insert(using: str, dialect: Dialect, row: dict[str, Any]) -> int:
    """Insert ``row`` through Django's connection ``using``; returns its id."""
    from django.db import connections

    connection = connections[using]
    columns = list(row)
    params = []
    for column in columns:
        processor = _T.c[column].type.dialect_impl(dialect).bind_processor(dialect)
        params.append(processor(row[column]) if processor is not None else row[column])
    quote = connection.ops.quote_name
    sql = (
        f"INSERT INTO {quote(_T.name)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))})"
    )
    returning = connection.features.can_return_columns_from_insert
    if returning:
        sql += f" RETURNING {quote('id')}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.fetchone()[0]) if returning else int(cursor.lastrowid)


def _same(first: str, second: str) -> bool:
    """Whether two URLs name one database (SQLite: one file, however its path is written)."""
    a, b = make_url(first), make_url(second)
    if a.get_backend_name() == b.get_backend_name() == "sqlite":
        return bool(a.database and b.database) and Path(a.database or "").resolve() == Path(b.database or "").resolve()
    return (a.get_backend_name(), a.host, a.port, a.database) == (b.get_backend_name(), b.host, b.port, b.database)


def _check_same_database(app: Celery, using: str) -> None:
    seen = _checked.setdefault(app, set())
    if using in seen:
        return
    store = get_settings(app).database_url
    if not _same(store, database_url(using)):
        raise ImproperlyConfigured(
            f"outbox(using={using!r}): the pending table is in {safe_url(store)}, not in Django's database "
            f"{using!r}; a row written there would never be sent. Point reliable_database_url (or "
            f"CELERY_RELIABLE_DATABASE_ALIAS) at {using!r}."
        )
    seen.add(using)


def outbox(using: str | None = None, app: Celery | None = None) -> DjangoOutbox:
    """The outbox of the current transaction of Django's database ``using`` (``"default"``).

    Call it inside ``transaction.atomic(using=...)``: the messages are sent after the commit,
    and not at all after a rollback. Outside a transaction (autocommit) each row commits, and
    is sent, at once.
    """
    from django.db import DEFAULT_DB_ALIAS

    if app is None:
        from celery._state import get_current_app

        app = get_current_app()
    return DjangoOutbox(app, using or DEFAULT_DB_ALIAS)
