"""``reliable_publish_all``: which ``apply_async``/``send_task`` calls go through :func:`publish`.

Shared by :meth:`ReliableTask.apply_async` and :meth:`ReliableCelery.send_task`. Messages that
cannot be stored as they are (canvas parts, an explicit producer or connection, retries, eager
mode, non-JSON arguments) keep Celery's own path.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery

from ..config import get_settings
from ..exceptions import NotJSONArgumentsError
from ..message.prepare import ALLOWED_OPTIONS
from .publish import PublishResult, publish

logger = logging.getLogger(__name__)

#: Set while a call is on Celery's own path (a retry, or a message publish() declined), so the
#: ``send_task`` underneath does not divert it again.
_own_path: contextvars.ContextVar[bool] = contextvars.ContextVar("celery_reliable_own_path", default=False)

#: Options Celery adds on its own that say nothing about where or how a message goes.
_IGNORABLE = frozenset({"origin", "replaced_task_nesting", "redelivered", "group_index"})
#: Options that make a message part of a canvas or bind it to a connection: Celery's own path.
_CANVAS = frozenset({"chord", "chain", "group_id", "producer", "connection", "router", "add_to_parent", "publisher"})


@contextmanager
def celery_path() -> Iterator[None]:
    """Within this block, apply_async/send_task use Celery's own path."""
    token = _own_path.set(True)
    try:
        yield
    finally:
        _own_path.reset(token)


def publishable(options: dict[str, Any]) -> dict[str, Any] | None:
    """The options publish() can store, or None if this message must use Celery's own path."""
    from celery.utils.time import maybe_iso8601

    result: dict[str, Any] = {}
    for key, value in options.items():
        if value is None or key in _IGNORABLE:
            continue
        if key in _CANVAS or key not in ALLOWED_OPTIONS:
            return None
        if key in ("eta", "expires") and isinstance(value, str):
            value = maybe_iso8601(value)
        if key in ("link", "link_error") and not value:
            continue
        if key == "headers" and not value:
            continue
        if key == "retries" and not value:
            continue
        result[key] = value
    return result


def maybe_publish(app: Celery, name: str, args: Any, kwargs: Any, options: dict[str, Any]) -> PublishResult | None:
    """Send through :func:`publish` when ``reliable_publish_all`` is on and the message allows it.

    None means: use Celery's own path (setting off, eager mode, inside a retry, or a message
    that cannot be stored as it is).
    """
    if _own_path.get() or not get_settings(app).publish_all or app.conf.task_always_eager:
        return None
    values = publishable(options)
    if values is None or values.get("retries"):
        return None
    try:
        return publish(app, name, args, kwargs, **values)
    except NotJSONArgumentsError as exc:
        # Not storable as JSON (e.g. a pickle app's arguments): Celery's own path.
        logger.debug("%s[%s] sent without publish(): %s", name, options.get("task_id"), exc)
        return None
