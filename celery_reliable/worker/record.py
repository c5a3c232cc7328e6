"""Turning a task request into a :class:`FailureRecord` that can be replayed."""

from __future__ import annotations

import traceback as tb_module
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from celery.app.task import Context

from ..message.protocol import PROTOCOL_HEADERS, without_protocol
from ..message.trace import TRACE_HEADERS, current_context
from ..store.failures import FailureRecord

#: What a worker's request holds besides user headers: Celery's own message headers (the one list,
#: :data:`celery_reliable.message.protocol.PROTOCOL_HEADERS`) and what the worker adds to the request.
#: Anything else in the request is a user header and is kept for replay.
STANDARD_HEADERS = PROTOCOL_HEADERS | frozenset(
    {
        "properties", "reply_to", "correlation_id", "hostname", "delivery_info", "args", "kwargs", "callbacks",
        "errbacks", "chain", "chord", "is_eager", "called_directly", "headers", "loglevel",
        "logfile", "utc", "taskset", "delivery_tag", "_children", "_protected",
        "task_name", "worker_pid", "content_type", "content_encoding",
    }
)  # fmt: skip


#: The header a retry carries: when the task's first attempt failed (ISO 8601, UTC), so the stored
#: failure's ``first_failed_at`` is that time, not the last attempt's. Not kept for a replay.
FIRST_FAILED_HEADER = "x_reliable_first_failed_at"


def first_failed_at(request: Mapping[str, Any]) -> datetime | None:
    """When the first attempt of ``request``'s task failed, as its retries carried it; None if unknown."""
    headers = request.get("headers")
    value = headers.get(FIRST_FAILED_HEADER) if isinstance(headers, Mapping) else None
    value = value or request.get(FIRST_FAILED_HEADER)
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def retry_headers(request: Any, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The headers of a retry of ``request``: those Celery passes on (or ``given``), and when the
    first attempt failed (now, if this is the first retry)."""
    headers = dict((request.headers or {}) if given is None else given)
    first = first_failed_at(vars(request)) or datetime.now(timezone.utc)
    headers[FIRST_FAILED_HEADER] = first.isoformat()
    return headers


def _signatures(value: Any) -> list[Any] | None:
    """The request's callbacks or errbacks as a list, as they came (replay checks them before sending)."""
    if not value:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    return [dict(sig) if isinstance(sig, Mapping) else sig for sig in items]


def replay_options(request: Mapping[str, Any]) -> dict[str, Any]:
    """Delivery options needed to send the same message again."""
    delivery = request.get("delivery_info") or {}
    headers = request.get("headers")
    user_headers = without_protocol(headers) if isinstance(headers, Mapping) else {}
    user_headers.update(
        {
            k: v
            for k, v in request.items()
            if k not in STANDARD_HEADERS and not hasattr(Context, k) and not k.startswith(("_", "reliable_"))
        }
    )
    user_headers.pop(FIRST_FAILED_HEADER, None)  # a replay's attempts are counted afresh
    options: dict[str, Any] = {
        "exchange": delivery.get("exchange"),
        "routing_key": delivery.get("routing_key"),
        "priority": delivery.get("priority"),
        "parent_id": request.get("parent_id"),
        "root_id": request.get("root_id"),
        "shadow": request.get("shadow"),
        "headers": user_headers,
        "link": _signatures(request.get("callbacks")),
        "link_error": _signatures(request.get("errbacks")),
    }
    return {k: v for k, v in options.items() if v not in (None, {}, [])}


def format_exception(exc: BaseException, traceback: str | None = None) -> tuple[str, str, str]:
    """(qualified type name, message, traceback text) of ``exc``."""
    klass = type(exc)
    exc_type = f"{klass.__module__}.{klass.__qualname__}".removeprefix("builtins.")
    if traceback is None:
        traceback = "".join(tb_module.format_exception(klass, exc, exc.__traceback__))
    return exc_type, str(exc), traceback or ""


def from_request(
    task_name: str,
    request: Mapping[str, Any],
    exc: BaseException,
    *,
    reason: str,
    traceback: str | None = None,
    hostname: str = "",
) -> FailureRecord:
    """A record of the final failure of the task described by ``request``."""
    exc_type, message, text = format_exception(exc, traceback)
    headers = request.get("headers") or {}
    replay_of = headers.get("x_reliable_replay_of") or request.get("x_reliable_replay_of")
    options = replay_options(request)
    run = current_context()  # in the pool process, the failed run's span: a replay continues it
    if run:
        kept = {key: value for key, value in options.get("headers", {}).items() if key not in TRACE_HEADERS}
        options["headers"] = {**kept, **run}
    return FailureRecord(
        task_id=str(request.get("id")),
        task_name=task_name,
        reason=reason,
        args=list(request.get("args") or ()),
        kwargs=dict(request.get("kwargs") or {}),
        options=options,
        exc_type=exc_type,
        exc_message=message,
        traceback=text,
        attempts=int(request.get("retries") or 0) + 1,
        hostname=hostname or str(request.get("hostname") or ""),
        replay_of_id=int(replay_of) if isinstance(replay_of, int | str) and str(replay_of).isdigit() else None,
        first_failed_at=first_failed_at(request),
    )
