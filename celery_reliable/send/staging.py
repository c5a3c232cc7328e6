"""Outbox rows held in memory until their transaction needs them, then inserted in one statement.

One ``INSERT ... RETURNING`` round trip per message cost more than building the message (most of
``send()``), so the rows a transaction stages wait here and go in together: before the
transaction commits, before a savepoint begins (so the savepoint's rollback keeps them), and,
with a ``Session``, before its flush or any statement it executes. They are in the caller's
transaction in every case; what changes is only *when* another statement of that transaction
can see them.

The hooks are SQLAlchemy's ``ConnectionEvents`` of the very connection the transaction runs on:
``begin``, ``commit`` (called before the COMMIT, with the transaction still open: the rows commit with it
or not at all), ``savepoint``, ``rollback_savepoint`` (a savepoint rolled back drops what was
staged since it began, inserted or not) and ``rollback``.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

from celery import Celery
from sqlalchemy import Connection, event

from ..store.pending import insert_rows
from .build import SendContext


class Outbox(Protocol):
    """What staging needs of an outbox: the app that sends its rows, and where their ids go."""

    app: Celery
    row_ids: list[int]


class Staging:
    """What one connection's current transaction staged: rows not inserted yet, ids of those that are."""

    def __init__(self, conn: Connection) -> None:
        self._conn = weakref.ref(conn)  # (a strong one would keep the connection's entry alive)
        #: (outbox, row) not inserted yet, in the order they were staged
        self.rows: list[tuple[Outbox, dict[str, Any]]] = []
        #: (outbox, row id) inserted in this transaction
        self.ids: list[tuple[Outbox, int]] = []
        #: ``len(ids)`` when each open savepoint began
        self.marks: list[int] = []
        #: per app: what building a message reads from it, read once per transaction
        self.contexts: dict[Celery, SendContext | None] = {}

    def insert(self, conn: Connection | None = None) -> None:
        """Insert the rows staged so far, in one statement, into the transaction of ``conn``."""
        if not self.rows:
            return
        conn = conn or self._conn()
        if conn is None:
            return
        rows, self.rows = self.rows, []
        try:
            ids = insert_rows(conn, [row for _, row in rows])
        except BaseException:
            self.rows[:0] = rows  # still staged: the transaction fails or tries again
            raise
        for (box, _), row_id in zip(rows, ids, strict=True):
            box.row_ids.append(row_id)
            self.ids.append((box, row_id))

    def by_app(self) -> dict[Celery, list[int]]:
        """The ids inserted so far, grouped by the app that sends them; forgotten here."""
        grouped: dict[Celery, list[int]] = {}
        for box, row_id in self.ids:
            grouped.setdefault(box.app, []).append(row_id)
        self.ids = []
        return grouped

    def rolled_back_to_savepoint(self) -> None:
        # every row still held was staged after the innermost savepoint began (each savepoint
        # inserts what came before it), so all of them go, with the ids inserted since then
        self.rows.clear()
        mark = self.marks.pop() if self.marks else 0
        for box, row_id in self.ids[mark:]:
            box.row_ids.remove(row_id)
        del self.ids[mark:]

    def clear(self) -> None:
        self.rows.clear()
        self.ids.clear()
        self.marks.clear()
        self.contexts.clear()


#: connection -> what its current transaction staged
_staging: weakref.WeakKeyDictionary[Connection, Staging] = weakref.WeakKeyDictionary()


def held(conn: Connection) -> Staging | None:
    """The staging of ``conn``'s transaction, if anything was staged in it."""
    return _staging.get(conn)


def staging_for(conn: Connection) -> Staging:
    """The staging of ``conn``'s transaction, its hooks listening from the first call."""
    staging = _staging.get(conn)
    if staging is None:
        staging = _staging[conn] = Staging(conn)
        event.listen(conn, "begin", _on_begin)
        event.listen(conn, "commit", _on_commit)
        event.listen(conn, "rollback", _on_rollback)
        event.listen(conn, "savepoint", _on_savepoint)
        event.listen(conn, "rollback_savepoint", _on_rollback_savepoint)
        event.listen(conn, "release_savepoint", _on_release_savepoint)
    return staging


def _on_begin(conn: Connection) -> None:
    """A new transaction: the ids of the last one (committed, and published or left to the relay) go."""
    staging = _staging.get(conn)
    if staging is not None:
        staging.clear()


def _on_commit(conn: Connection) -> None:
    """Before the COMMIT: the rows go in now, and commit with the rest or not at all."""
    staging = _staging.get(conn)
    if staging is not None:
        staging.insert(conn)
        staging.marks.clear()
        staging.contexts.clear()


def _on_rollback(conn: Connection) -> None:
    staging = _staging.get(conn)
    if staging is not None:
        staging.clear()


def _on_savepoint(conn: Connection, name: str | None) -> None:
    """Before the SAVEPOINT: what was staged so far belongs to the enclosing transaction."""
    staging = _staging.get(conn)
    if staging is not None:
        staging.insert(conn)
        staging.marks.append(len(staging.ids))


def _on_rollback_savepoint(conn: Connection, name: str, context: Any) -> None:
    staging = _staging.get(conn)
    if staging is not None:
        staging.rolled_back_to_savepoint()


def _on_release_savepoint(conn: Connection, name: str, context: Any) -> None:
    staging = _staging.get(conn)
    if staging is not None and staging.marks:
        staging.marks.pop()
