"""The transactional outbox: stage messages in the caller's own SQLAlchemy transaction.

``outbox(session).send(...)`` (or ``send_many([...])``) stages the message as a row of the
pending table in the same transaction as the caller's writes. A rollback sends nothing. Right
after the commit the staged messages are published from the same process (no waiting for a
poll); if the process dies between commit and send, the relay sends them after
``reliable_outbox_grace`` seconds. The pending table must live in the caller's database
(``reliable_database_url``).

The message is checked and built when it is staged (bad input raises there, nothing staged);
its row is inserted, with the other rows of the transaction in one statement, before the
commit (see :mod:`celery_reliable.send.staging` for when exactly).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast, overload

from celery import Celery
from sqlalchemy import Connection, event
from sqlalchemy.orm import Session, scoped_session

from ..store.models import PendingMessage
from .outbox_rows import Message, context, due, outbox_row, outbox_rows
from .staged import publish_staged as publish_staged  # its home was here
from .staging import Staging, held, staging_for

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from .aoutbox import AsyncOutbox

logger = logging.getLogger(__name__)

#: Session -> the staging of its current transaction (published after its commit)
_sessions: weakref.WeakKeyDictionary[Session, Staging] = weakref.WeakKeyDictionary()
#: Sessions whose hooks listen already
_hooked: weakref.WeakSet[Session] = weakref.WeakSet()


class Outbox:
    """Messages staged in one Session's (or Connection's) transaction."""

    def __init__(self, app: Celery, target: Session | Connection) -> None:
        self.app = app
        self.target = target
        #: pending-row ids staged through this outbox, filled as the rows are inserted (at the
        #: latest when the transaction commits; for :func:`publish_staged` after a Connection's commit)
        self.row_ids: list[int] = []

    def send(self, task: str | Any, args: Any = None, kwargs: Any = None, **options: Any) -> str:
        """Stage task ``task`` (a name or a task); returns its task id (fixed now, kept on resend).

        Raises:
            BadMessageError: bad input (see :func:`celery_reliable.message.prepare.prepare`); nothing staged.
        """
        ctx = self._context()
        task_id, row = outbox_row(self.app, task, args, kwargs, options, ctx, due(self.app))
        self._stage([row]).contexts.setdefault(self.app, ctx)
        return task_id

    def send_many(self, messages: Iterable[Message]) -> list[str]:
        """Stage several messages; their task ids, in order. Cheaper per message than ``send()``.

        Each message is a Celery signature (``add.s(2, 2)``) or a tuple ``(task, args[, kwargs[,
        options]])``. Every message is checked before any is staged.

        Raises:
            BadMessageError: bad input in any message; nothing staged.
        """
        ctx = self._context()
        built = outbox_rows(self.app, messages, ctx)
        if built:
            self._stage([row for _, row in built]).contexts.setdefault(self.app, ctx)
        return [task_id for task_id, _ in built]

    def _context(self) -> Any:
        """What building a message reads from the app: read once per transaction, kept with its staging."""
        held = self._held()
        if held is not None and self.app in held.contexts:
            return held.contexts[self.app]
        return context(self.app)

    def _session(self) -> Session | None:
        target: Any = self.target
        if isinstance(target, scoped_session):  # a session proxy: the session of this scope
            return cast("Session", target())
        return target if isinstance(target, Session) else None

    def _held(self) -> Staging | None:
        """The staging of the target's transaction if there is one (touches no connection)."""
        session = self._session()
        if session is not None:
            return _sessions.get(session)
        return held(cast("Connection", self.target))

    def _stage(self, rows: list[dict[str, Any]]) -> Staging:
        session = self._session()
        conn = cast("Connection", self.target)
        if session is not None:  # begins the transaction; the connection it runs on
            conn = session.connection(bind_arguments={"mapper": PendingMessage})
        staging = staging_for(conn)
        staging.rows.extend((self, row) for row in rows)
        if session is not None:
            _sessions[session] = staging
            if session not in _hooked:
                _hook(session)
        elif conn._is_autocommit_isolation():  # no transaction to wait for: each row is its own
            staging.insert(conn)
        return staging


def _hook(session: Session) -> None:
    _hooked.add(session)
    event.listen(session, "before_commit", _insert_now)  # (also a Session joined to an outer transaction)
    event.listen(session, "before_flush", _insert_before_flush)
    event.listen(session, "do_orm_execute", _insert_before_execute)
    event.listen(session, "after_commit", _on_commit)
    event.listen(session, "after_soft_rollback", _on_rollback)


def _insert_now(session: Session) -> None:
    staging = _sessions.get(session)
    if staging is not None:
        staging.insert()


def _insert_before_flush(session: Session, flush_context: Any, instances: Any) -> None:
    _insert_now(session)


def _insert_before_execute(state: Any) -> None:
    """Before a statement the session runs: it sees the staged rows, as it would after an autoflush."""
    _insert_now(state.session)


def _on_commit(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint released: its rows commit with the rest, later
        return
    staging = _sessions.pop(session, None)
    if staging is not None:
        for app, ids in staging.by_app().items():
            publish_staged(app, ids)


def _on_rollback(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:  # the outermost transaction rolled back
        _sessions.pop(session, None)


@overload
def outbox(target: Session | Connection, app: Celery | None = None) -> Outbox: ...


@overload
def outbox(target: AsyncSession, app: Celery | None = None) -> AsyncOutbox: ...


def outbox(target: Session | Connection | AsyncSession, app: Celery | None = None) -> Outbox | AsyncOutbox:
    """The outbox of ``target``'s current transaction.

    With a ``Session`` the messages are published right after its commit. With a ``Connection``
    call ``publish_staged(app, box.row_ids)`` after the commit (the ids are there once it has
    committed), or let the relay send them after ``reliable_outbox_grace`` seconds. With an ``AsyncSession`` it is an
    :class:`~celery_reliable.send.aoutbox.AsyncOutbox`: the rows go in with the session's next
    flush, and the post-commit send runs off the event loop.
    """
    if app is None:
        from celery._state import get_current_app

        app = get_current_app()
    if not isinstance(target, Session | Connection) and hasattr(target, "sync_session"):
        from .aoutbox import AsyncOutbox

        return AsyncOutbox(app, target)
    return Outbox(app, cast("Session | Connection", target))  # (or a session proxy: scoped_session)
