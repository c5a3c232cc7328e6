"""The transactional outbox of an SQLAlchemy ``AsyncSession``.

``outbox(async_session, app).send(...)`` adds the pending row to the session like any new
object: it is inserted by the session's next flush, inside the caller's transaction, through
the caller's async driver. A rollback (of the transaction, or of the savepoint it was added in)
drops it. Nothing here waits on a socket, so ``send()`` is a plain call: a forgotten ``await``
cannot lose a message.

Once the session commits, the rows it staged are published off the event loop, on the thread
pool of :mod:`celery_reliable.send.apublish`, by the very post-commit send the sync outbox runs
(:func:`~celery_reliable.send.staged.publish_staged`, through the app's own engine,
``reliable_database_url``). A process that dies between the commit and that send leaves its rows
pending, and the relay sends them after ``reliable_outbox_grace`` seconds.
"""

from __future__ import annotations

import asyncio
import weakref
from concurrent.futures import Future
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from celery import Celery
from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from ..config import get_settings
from ..message.prepare import prepare
from ..store.models import PendingMessage, utcnow
from .apublish import executor
from .publish import with_message
from .staged import publish_staged

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession


class _Staged:
    """What one session staged in its current transaction."""

    def __init__(self) -> None:
        self.rows: list[tuple[Celery, PendingMessage]] = []
        self.boxes: list[AsyncOutbox] = []


#: sync Session (of an AsyncSession) -> what it staged since its last commit or rollback
_staged: weakref.WeakKeyDictionary[Session, _Staged] = weakref.WeakKeyDictionary()


class AsyncOutbox:
    """Messages staged in one ``AsyncSession``'s transaction."""

    def __init__(self, app: Celery, session: AsyncSession) -> None:
        self.app = app
        self.session = session
        #: the post-commit sends of the rows staged through this outbox (one per commit)
        self.sends: list[Future[int]] = []

    def send(self, task: str | Any, args: Any = None, kwargs: Any = None, **options: Any) -> str:
        """Stage task ``task`` (a name or a task); returns its task id (fixed now, kept on resend).

        The row is inserted by the session's next flush (at the latest its commit).

        Raises:
            PublishError: bad input (see :func:`celery_reliable.message.prepare.prepare`); nothing staged.
        """
        name = task if isinstance(task, str) else task.name
        values = with_message(self.app, prepare(self.app, name, args, kwargs, options))
        due = utcnow() + timedelta(seconds=get_settings(self.app).outbox_grace)
        row = PendingMessage(**values.row("outbox", due))
        self.session.add(row)
        sync = self.session.sync_session
        staged = _staged.get(sync)
        if staged is None:
            staged = _staged[sync] = _Staged()
        staged.rows.append((self.app, row))
        if self not in staged.boxes:
            staged.boxes.append(self)
        if not event.contains(sync, "after_commit", _on_commit):
            event.listen(sync, "after_commit", _on_commit)
            event.listen(sync, "after_transaction_end", _on_end)
        return values.task_id

    async def published(self) -> int:
        """Wait for the post-commit sends of what this outbox staged; how many they sent.

        Not needed for delivery (what they miss the relay sends); for tests and for a clean
        shutdown that would rather not leave the last messages to the relay.
        """
        sends, self.sends = self.sends, []
        counts = await asyncio.gather(*(asyncio.wrap_future(f) for f in sends))
        return sum(counts)


def _on_commit(session: Session) -> None:
    """After the commit (in the loop's thread, inside the session's greenlet): hand the send to the pool."""
    if session.in_nested_transaction():  # a savepoint released: its rows commit with the rest, later
        return
    staged = _staged.pop(session, None)
    if staged is None:
        return
    by_app: dict[Celery, list[int]] = {}
    for app, row in staged.rows:
        identity = inspect(row).identity  # kept on an expired object; None: rolled back with a savepoint
        if identity is not None:
            by_app.setdefault(app, []).append(int(identity[0]))
    for app, ids in by_app.items():
        future = executor().submit(publish_staged, app, ids)
        for box in staged.boxes:
            if box.app is app:
                box.sends.append(future)


def _on_end(session: Session, transaction: Any) -> None:
    """The outermost transaction ended: after its commit (already handed over), or rolled back or
    closed without a commit, which drops what it staged (a session used again must not send it)."""
    if transaction.parent is None:
        _staged.pop(session, None)
