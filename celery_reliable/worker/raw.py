"""Failure records for messages that reached no task: kept raw, bounded, never trusted.

Whatever arrives is stored as it arrived, so nothing is lost and a person can see it: text as
text (control characters kept as they are), bytes that are not UTF-8 (or hold NUL characters,
which PostgreSQL cannot store in text) as base64. Every part is cut at :data:`MAX_RAW` characters,
with the full size and a note, so a huge message cannot make a huge row. Building a record never
raises, whatever the message holds.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from ..store.failures import FailureRecord

logger = logging.getLogger(__name__)

#: Longest raw text (or base64 text) kept per part of a message, in characters.
MAX_RAW = 64 * 1024
#: Reason of a queue entry (or message) that could not be decoded into a message at all.
REASON_UNDECODABLE = "undecodable"


def raw_text(data: bytes | str, limit: int = MAX_RAW) -> dict[str, Any]:
    """``{"text": ...}`` or ``{"base64": ...}`` of ``data``, cut at ``limit`` characters.

    ``size`` is the full length in bytes; ``truncated`` says that only the first part is kept.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    kept: dict[str, Any] = {"size": len(data)}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" not in text:
        kept["text"] = text[:limit]
        truncated = len(text) > limit
    else:
        raw = data[: limit // 4 * 3]
        kept["base64"] = base64.b64encode(raw).decode("ascii")
        kept["encoding"] = "base64: not UTF-8 text" if text is None else "base64: holds NUL characters"
        truncated = len(raw) < len(data)
    if truncated:
        kept["truncated"] = f"only the first {limit} characters of {len(data)} bytes are kept"
    return kept


def bounded(value: Any, limit: int = MAX_RAW) -> Any:
    """``value`` if its JSON form is at most ``limit`` characters, else that text cut, with a note."""
    try:
        text = json.dumps(value, default=repr, ensure_ascii=False)
    except Exception as exc:  # RecursionError, a key that is not a string, ...
        try:
            text = repr(value)
        except Exception:
            text = f"<{type(value).__name__}: not representable ({type(exc).__name__})>"
        return {"repr": raw_text(text, limit)}
    if len(text) <= limit:
        return value
    return {"json": raw_text(text, limit)}


def short(value: Any, limit: int = 255) -> str:
    """A short one-line text for a column (task name, id) from any value."""
    try:
        text = value if isinstance(value, str) else repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text[:limit]


def raw_id() -> str:
    """A task id for a stored message that has none we can trust."""
    return f"raw-{uuid.uuid4()}"


def entry_record(
    data: bytes | str,
    *,
    reason: str,
    problem: str,
    queue: str,
    task_id: str | None = None,
    hostname: str = "",
) -> FailureRecord:
    """The record of a broker entry that is not a message kombu can deliver (kept raw).

    ``queue`` is empty for an unacknowledged record found by the restore sweep (of any queue).
    """
    where = f"An entry of queue {short(queue)!r}" if queue else "An unacknowledged message"
    return FailureRecord(
        task_id=task_id or raw_id(),
        task_name="<undecodable>",
        reason=reason,
        options={"queue": short(queue)},
        raw_message={"entry": raw_text(data), "queue": short(queue)},
        exc_type="celery_reliable.worker.raw.UndecodableMessage",
        exc_message=(
            f"{where} is not a message that can be delivered: {problem}. "
            "It was taken off the queue and kept here as it was (raw_message.entry); "
            "fix the producer that wrote it."
        ),
        hostname=hostname,
    )


def _payload_of(message: Any) -> tuple[Any, Any]:
    """(args, kwargs) of a JSON task message body, or (None, None); never raises."""
    try:
        if message.content_type != "application/json":
            return None, None
        body = message.body
        if not isinstance(body, bytes | str) or len(body) > MAX_RAW:
            return None, None
        payload = json.loads(body)
        if isinstance(payload, list) and len(payload) == 3:
            args, kwargs = payload[0], payload[1]
            if isinstance(args, list) and isinstance(kwargs, dict):
                return args, kwargs
    except Exception:
        pass
    return None, None


def _mapping(value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return bounded(dict(value))
    return {"not_a_mapping": bounded(value)}


def _text(value: Any) -> Any:
    if value is None or (isinstance(value, str) and len(value) <= 255):
        return value
    return {"value": bounded(value)}


def _body(message: Any) -> Any:
    body = getattr(message, "body", None)
    if isinstance(body, bytes | str):
        return raw_text(body)
    return {"value": bounded(body)}


def message_record(
    message: Any,
    reason: str,
    exc: BaseException | None,
    name: Any = None,
    trust_id: bool = False,
    hostname: str = "",
) -> FailureRecord:
    """A record holding the whole of a delivered message that reached no task.

    The message's own ``id`` header is the row's task id only with ``trust_id`` (a well-formed task
    message for a task this worker does not know); otherwise a new id, so that a malformed message
    can never update the row of another task.
    """
    try:
        headers = message.headers
    except Exception:
        headers = None
    header_map: Mapping[str, Any] = headers if isinstance(headers, Mapping) else {}
    task_id = header_map.get("id")
    if not (trust_id and isinstance(task_id, str) and 0 < len(task_id) <= 255):
        task_id = raw_id()
    task_name = name if name is not None else header_map.get("task")
    args, kwargs = _payload_of(message)
    delivery = getattr(message, "delivery_info", None)
    delivery = delivery if isinstance(delivery, Mapping) else {}
    properties = getattr(message, "properties", None)
    try:
        exc_text = str(exc) if exc is not None else ""
    except Exception:
        exc_text = f"<{type(exc).__name__}: str() failed>"
    return FailureRecord(
        task_id=task_id,
        task_name=short(task_name) if task_name is not None else "<unknown>",
        reason=reason,
        args=args,
        kwargs=kwargs,
        options={
            "exchange": delivery.get("exchange") if isinstance(delivery.get("exchange"), str) else None,
            "routing_key": delivery.get("routing_key") if isinstance(delivery.get("routing_key"), str) else None,
            "parent_id": header_map.get("parent_id") if isinstance(header_map.get("parent_id"), str) else None,
            "root_id": header_map.get("root_id") if isinstance(header_map.get("root_id"), str) else None,
        },
        raw_message={
            "headers": _mapping(headers),
            "properties": _mapping(properties),
            "delivery_info": {
                k: v for k, v in delivery.items() if isinstance(k, str) and isinstance(v, str | int | bool)
            },
            "content_type": _text(getattr(message, "content_type", None)),
            "content_encoding": _text(getattr(message, "content_encoding", None)),
            "body": _body(message),
        },
        exc_type=type(exc).__name__ if exc is not None else "",
        exc_message=exc_text[:MAX_RAW],
        hostname=hostname,
    )
