"""A message as ``publish()`` accepts it, and as the pending table keeps it.

:func:`prepare` checks a message before anything is sent or stored (its options, its task name,
its arguments against the task's signature, the tasks its callbacks name) and turns it into the
columns of a pending row; :func:`send_options` turns a prepared message or a stored row back into
the keyword arguments of ``send_task``. Both speak only the options listed in
:data:`ALLOWED_OPTIONS`: each can be stored and replayed as it was given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Celery, uuid
from celery.canvas import Signature

from ..exceptions import BadMessageError, NotJSONArgumentsError
from ..store.payload import NotJSONError, from_stored, to_stored
from ..store.pending import PendingValues
from .protocol import protocol_clash, without_protocol
from .tasks import ArgumentsMismatchError, Refused, argument_error, check_signatures, is_known_task, short, user_tasks

#: Options publish() accepts; each can be stored in a pending row and replayed as it was given.
ALLOWED_OPTIONS = frozenset(
    {
        "task_id", "queue", "exchange", "routing_key", "priority", "headers", "countdown", "eta",
        "expires", "link", "link_error", "parent_id", "root_id", "shadow", "time_limit",
        "soft_time_limit", "ignore_result", "retries", "reply_to",
    }
)  # fmt: skip


_PASSTHROUGH = ("queue", "exchange", "routing_key", "priority", "parent_id", "root_id", "shadow",
                "time_limit", "soft_time_limit", "ignore_result", "retries", "reply_to")  # fmt: skip


def aware(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _signatures(value: Any, name: str) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    result = []
    for item in items:
        if not isinstance(item, dict):
            raise BadMessageError(f"{name} must be a signature or a list of signatures, got {short(item)}")
        result.append(dict(item))
    return result


def check_delivery_options(name: str, options: Any) -> None:
    """Refuse delivery options no broker would accept (also run on stored rows by the relay)."""
    if not isinstance(options, dict):
        raise BadMessageError(f"publish() of {name!r}: options must be a mapping, got {short(options)}")
    for key in ("queue", "exchange", "routing_key", "shadow", "reply_to"):
        value = options.get(key)
        if value is not None and not isinstance(value, str):
            raise BadMessageError(f"publish() of {name!r}: {key} must be a string, got {short(value)}")
    priority = options.get("priority")
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 255
    ):
        raise BadMessageError(
            f"publish() of {name!r}: priority must be an integer from 0 to 255, got {short(priority)}"
        )
    for key in ("time_limit", "soft_time_limit"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise BadMessageError(f"publish() of {name!r}: {key} must be seconds > 0, got {short(value)}")
    headers = options.get("headers") or {}
    if not isinstance(headers, dict):
        raise BadMessageError(f"publish() of {name!r}: headers must be a dict, got {short(headers)}")
    clash = protocol_clash(headers)
    if clash:
        raise BadMessageError(
            f"publish() of {name!r}: headers {clash} are Celery's own message headers; "
            "use the matching option (task_id, eta, countdown, expires...) or another header name."
        )


def prepare(
    app: Celery, name: str, args: Any = None, kwargs: Any = None, options: dict[str, Any] | None = None
) -> PendingValues:
    """Validate a message and turn it into what a pending row stores.

    Raises:
        PublishError: unknown option, unserializable arguments, a task name the app does not
            know (when it knows its tasks), or a bad countdown/eta/expires. Nothing is sent.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - ALLOWED_OPTIONS)
    if unknown:
        raise BadMessageError(
            f"publish() of {name!r}: unsupported option(s) {unknown}; these could not be replayed from "
            f"the pending table. Supported: {sorted(ALLOWED_OPTIONS)}."
        )
    if not isinstance(name, str) or not name:
        raise BadMessageError(f"publish(): task name must be a non-empty string, got {name!r}")
    if not is_known_task(app, name):
        import difflib

        near = difflib.get_close_matches(name, user_tasks(app), n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise BadMessageError(
            f"publish(): task {name!r} is not registered in app {app.main!r}.{hint} If it is a task of "
            "another code base, add its name (or a pattern) to reliable_external_tasks."
        )
    if args is not None and not isinstance(args, list | tuple):
        raise BadMessageError(f"publish() of {name!r}: args must be a list or a tuple, got {short(args)}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise BadMessageError(f"publish() of {name!r}: kwargs must be a mapping, got {short(kwargs)}")
    args = list(args or ())
    kwargs = dict(kwargs or {})
    mismatch = argument_error(app, name, args, kwargs)
    if mismatch:
        raise ArgumentsMismatchError(f"publish() of {name!r}: {mismatch}; nothing was sent or stored.")
    headers = options.pop("headers", None) or {}
    check_delivery_options(name, {"headers": headers})
    try:
        stored_args, stored_kwargs, stored_headers = to_stored([args, kwargs, headers])
    except NotJSONError as exc:
        raise NotJSONArgumentsError(
            f"publish() of {name!r}: arguments {exc}; pass JSON-serializable values (ids rather than objects)."
        ) from None
    now = datetime.now(timezone.utc)
    eta = options.pop("eta", None)
    countdown = options.pop("countdown", None)
    if eta is not None and countdown is not None:
        raise BadMessageError(f"publish() of {name!r}: give eta or countdown, not both")
    if countdown is not None:
        if isinstance(countdown, bool) or not isinstance(countdown, int | float) or countdown < 0:
            raise BadMessageError(f"publish() of {name!r}: countdown must be seconds >= 0, got {countdown!r}")
        eta = now + timedelta(seconds=countdown)
    elif eta is not None:
        if not isinstance(eta, datetime):
            raise BadMessageError(f"publish() of {name!r}: eta must be a datetime, got {eta!r}")
        eta = aware(eta)
    expires = options.pop("expires", None)
    if expires is not None:
        if isinstance(expires, datetime):
            expires = aware(expires)
        elif isinstance(expires, int | float) and not isinstance(expires, bool):
            expires = now + timedelta(seconds=expires)
        else:
            raise BadMessageError(f"publish() of {name!r}: expires must be seconds or a datetime, got {expires!r}")
    task_id = str(options.pop("task_id", None) or uuid())
    stored_options: dict[str, Any] = {"headers": stored_headers}
    for key in ("link", "link_error"):
        sigs = _signatures(options.pop(key, None), key)
        if sigs:
            try:
                stored_options[key] = to_stored(sigs)
                check_signatures(app, stored_options[key], key)
            except NotJSONError as exc:
                raise BadMessageError(f"publish() of {name!r}: {key} {exc}") from None
            except Refused as exc:
                raise BadMessageError(
                    f"publish() of {name!r}: {exc}; register it, add it to reliable_external_tasks, or fix the {key}."
                ) from None
    check_delivery_options(name, options)
    for key in _PASSTHROUGH:
        if options.get(key) is not None:
            stored_options[key] = options[key]
    return PendingValues(task_id, name, stored_args, stored_kwargs, stored_options, eta, expires)


def send_options(app: Celery, values: Any) -> dict[str, Any]:
    """Keyword arguments of ``app.send_task`` for a prepared message or a pending row."""
    stored: dict[str, Any] = dict(values.options or {})
    options: dict[str, Any] = {key: stored[key] for key in _PASSTHROUGH if stored.get(key) is not None}
    headers = without_protocol(decoded(stored.get("headers") or {}))  # never Celery's own (see .protocol)
    if headers:
        options["headers"] = headers
    for key in ("link", "link_error"):
        if stored.get(key):
            options[key] = [Signature(s, app=app) for s in decoded(stored[key])]
    if values.eta is not None:
        options["eta"] = values.eta
    if values.expires_at is not None:
        options["expires"] = values.expires_at
    return options


def _needs_decoding(value: Any) -> bool:
    """Whether ``value`` (JSON read from the database) holds a kombu type marker, or might."""
    kind = type(value)
    if kind is dict:
        if "__type__" in value:
            return True
        for item in value.values():
            if _needs_decoding(item):
                return True
        return False
    if kind is list:
        for item in value:
            if _needs_decoding(item):
                return True
        return False
    return not (kind is str or kind is int or kind is float or kind is bool or value is None)


def decoded(value: Any) -> Any:
    """:func:`from_stored` of ``value``: without the JSON round trip when nothing needs decoding."""
    return from_stored(value) if _needs_decoding(value) else value


#: Header of every message that goes through a pending row (outbox, failed send): the worker records
#: its task's outcome so the row can be closed (the delivery ledger, :mod:`celery_reliable.send.reconcile`).
LEDGER_HEADER = "x_reliable_ledger"


def with_ledger(values: PendingValues) -> PendingValues:
    """``values`` whose message carries :data:`LEDGER_HEADER` (a row waits for its outcome)."""
    options = dict(values.options or {})
    headers = dict(options.get("headers") or {})
    if headers.get(LEDGER_HEADER) == 1:
        return values
    headers[LEDGER_HEADER] = 1
    options["headers"] = headers
    return dataclasses.replace(values, options=options)


def is_ledgered(options: Any) -> bool:
    """Whether stored ``options`` (of a pending row) carry the ledger header."""
    headers = options.get("headers") if isinstance(options, dict) else None
    return isinstance(headers, dict) and headers.get(LEDGER_HEADER) == 1
