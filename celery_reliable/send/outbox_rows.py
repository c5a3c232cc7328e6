"""The rows every outbox writes (SQLAlchemy ``Session``/``Connection``, ``AsyncSession``, Django).

A message is checked (:func:`~celery_reliable.message.prepare.prepare`) and its Redis wire form
built ahead (:func:`~celery_reliable.send.publish.with_message`) when it is staged, so a bad one
raises at ``send()`` and the relay only has to send it. ``send_many()`` builds every row before
it stages any: bad input in one item stages nothing. The settings and routes a message is built
from (a :class:`~celery_reliable.send.build.SendContext`) are read once per call, not per message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from celery import Celery

from ..config import get_settings
from ..exceptions import BadMessageError
from ..message.prepare import prepare
from ..store.models import utcnow
from .build import SendContext
from .publish import with_message
from .publisher import get_publisher

#: One message of ``send_many()``: (task, args), (task, args, kwargs), (task, args, kwargs,
#: options) or a Celery signature (``add.s(2, 2)``, ``add.signature((2, 2), countdown=5)``).
Message = Any


def context(app: Celery) -> SendContext | None:
    """What building a message reads from ``app``, read now (None: no message is built ahead)."""
    publisher = get_publisher(app)
    return publisher.context() if publisher.direct_redis() else None


def due(app: Celery) -> datetime:
    """When the relay may send a row staged now (a live producer sends it first, after its commit)."""
    return utcnow() + timedelta(seconds=get_settings(app).outbox_grace)


def outbox_row(
    app: Celery, task: str | Any, args: Any, kwargs: Any, options: dict[str, Any], ctx: Any, when: datetime
) -> tuple[str, dict[str, Any]]:
    """The task id and the pending row of one message.

    Raises:
        BadMessageError: bad input (see :func:`~celery_reliable.message.prepare.prepare`).
    """
    name = task if isinstance(task, str) else task.name
    values = with_message(app, prepare(app, name, args, kwargs, options), ctx)
    return values.task_id, values.row("outbox", when)


def unpack(message: Message) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(task, args, kwargs, options) of one ``send_many()`` item.

    Raises:
        BadMessageError: not a signature nor a tuple of 2 to 4 items.
    """
    if isinstance(message, Mapping) and "task" in message:  # a Signature is a dict
        return message["task"], message.get("args"), message.get("kwargs"), dict(message.get("options") or {})
    if isinstance(message, tuple | list) and 2 <= len(message) <= 4:
        task, args, kwargs, options = (*message, None, None)[:4]
        if options is not None and not isinstance(options, Mapping):
            raise BadMessageError(f"send_many(): options must be a mapping, got {type(options).__name__}")
        return task, args, kwargs, dict(options or {})
    raise BadMessageError(
        "send_many(): each message is a signature or a tuple (task, args[, kwargs[, options]]), "
        f"got {type(message).__name__}"
    )


def outbox_rows(app: Celery, messages: Iterable[Message], ctx: Any) -> list[tuple[str, dict[str, Any]]]:
    """The task ids and pending rows of ``messages``, every one checked before any is returned
    (``ctx``: :func:`context`).

    Raises:
        BadMessageError: bad input in any message; nothing is returned.
    """
    when = due(app)
    return [outbox_row(app, *unpack(message), ctx, when) for message in messages]
