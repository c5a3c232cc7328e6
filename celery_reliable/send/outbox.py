"""The transactional outbox: stage messages in the caller's own SQLAlchemy transaction.

``outbox(session).send(...)`` inserts the message into the pending table in the same
transaction as the caller's writes. A rollback sends nothing. Right after the commit the
staged messages are published from the same process (no waiting for a poll); if the process
dies between commit and send, the relay sends them after ``reliable_outbox_grace`` seconds.
The pending table must live in the caller's database (``reliable_database_url``).
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any, cast, overload

from celery import Celery
from sqlalchemy import Connection, event
from sqlalchemy.orm import Session

from ..config import get_settings
from ..message.prepare import prepare
from ..store.pending import add_pending
from .publish import with_message
from .staged import publish_staged as publish_staged  # its home was here

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from .aoutbox import AsyncOutbox

logger = logging.getLogger(__name__)

#: Session -> (app, ids of the rows it staged in its current transaction)
_staged: weakref.WeakKeyDictionary[Session, tuple[Celery, list[int]]] = weakref.WeakKeyDictionary()


class Outbox:
    """Messages staged in one Session's (or Connection's) transaction."""

    def __init__(self, app: Celery, target: Session | Connection) -> None:
        self.app = app
        self.target = target
        #: pending-row ids staged through this outbox (for :func:`publish_staged` after a
        #: Connection's commit)
        self.row_ids: list[int] = []

    def send(self, task: str | Any, args: Any = None, kwargs: Any = None, **options: Any) -> str:
        """Stage task ``task`` (a name or a task); returns its task id (fixed now, kept on resend).

        Raises:
            PublishError: bad input (see :func:`celery_reliable.send.publisher.prepare`).
        """
        name = task if isinstance(task, str) else task.name
        values = prepare(self.app, name, args, kwargs, options)
        grace = get_settings(self.app).outbox_grace
        ids = add_pending(self.target, [with_message(self.app, values)], source="outbox", delay=grace)
        self.row_ids.extend(ids)
        if isinstance(self.target, Session):
            self._after_commit(self.target, ids)
        return values.task_id

    def _after_commit(self, session: Session, ids: list[int]) -> None:
        entry = _staged.get(session)
        if entry is None or entry[0] is not self.app:
            entry = _staged[session] = (self.app, [])
        entry[1].extend(ids)
        if not event.contains(session, "after_commit", _on_commit):
            event.listen(session, "after_commit", _on_commit)
            event.listen(session, "after_soft_rollback", _on_rollback)


def _on_commit(session: Session) -> None:
    entry = _staged.pop(session, None)
    if entry is not None and entry[1]:
        publish_staged(entry[0], entry[1])


def _on_rollback(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:  # the outermost transaction rolled back
        _staged.pop(session, None)


@overload
def outbox(target: Session | Connection, app: Celery | None = None) -> Outbox: ...


@overload
def outbox(target: AsyncSession, app: Celery | None = None) -> AsyncOutbox: ...


def outbox(target: Session | Connection | AsyncSession, app: Celery | None = None) -> Outbox | AsyncOutbox:
    """The outbox of ``target``'s current transaction.

    With a ``Session`` the messages are published right after its commit. With a ``Connection``
    call ``publish_staged(app, box.row_ids)`` after the commit, or let the relay send them after
    ``reliable_outbox_grace`` seconds. With an ``AsyncSession`` it is an
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
