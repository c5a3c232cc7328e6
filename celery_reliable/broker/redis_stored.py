"""A pending row's message built ahead (Redis), checked against the row before it is sent.

The ``message`` column holds the list entry kombu would write (see :mod:`.redis_wire`). It is
input like any other cell: anyone who can write to the table can put any text there. It is sent
only when everything in it agrees with the row's own columns: the task it runs and its id, the
list it goes to (derived from the row's queue and the message's priority, never read from the
stored text), a body that is base64 JSON ``[args, kwargs, embed]`` whose arguments fit the task,
and every task its callbacks, errbacks, chain and chord name is one the relay may send. The text
sent is the stored one only when it is laid out exactly as kombu writes it (then a consumer's
JSON parser reads the very values checked); any other layout is re-encoded from what was checked.
"""

from __future__ import annotations

import binascii
import json
from typing import Any

from celery import Celery

from ..message.tasks import Refused, arguments_misfit, check_embed, checked_task, short
from .redis_wire import Entry, Facts

_JSON = "application/json"
#: The envelope as kombu writes it (redis_wire.entry_of): these members, in this order.
_HEAD = '{"body": "'
_MIDDLE = '", "content-encoding": "utf-8", "content-type": "application/json", "headers": '
_LAST = ', "properties": '
_DECODER = json.JSONDecoder()
_SCAN: Any = _DECODER.scan_once  # type: ignore[attr-defined]  # (set by JSONDecoder.__init__)
_LOOKUP: Any = object()


def _layout(text: str) -> tuple[str, Any, Any] | None:
    """(body, headers, properties) of an envelope written exactly as kombu writes it, else None.

    Read member by member, so it also proves there is nothing else in the text: a JSON parser
    (the consumer's) reads the very same values, and the delivery tag added before the last two
    braces lands in these properties.
    """
    if not text.startswith(_HEAD):
        return None
    end = text.find('"', len(_HEAD))
    if end < 0 or not text.startswith(_MIDDLE, end):
        return None
    try:  # the scanner json's raw_decode calls, without its wrapper (StopIteration: not JSON there)
        headers, at = _SCAN(text, end + len(_MIDDLE))
        if not text.startswith(_LAST, at):
            return None
        properties, at = _SCAN(text, at + len(_LAST))
    except (StopIteration, ValueError, RecursionError):
        return None
    if at != len(text) - 1 or text[at] != "}":
        return None
    return text[len(_HEAD) : end], headers, properties


def _whole(text: str) -> dict[str, Any]:
    """An envelope in any other JSON layout: parsed whole (and re-encoded once checked: its
    delivery tag could land elsewhere)."""
    try:
        envelope = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise Refused(f"the stored message is corrupt (not JSON: {exc})") from None
    if type(envelope) is not dict:
        raise Refused("the stored message is corrupt (not a JSON object)")
    return envelope


def _loads(text: str) -> Any:
    """``json.loads(text)``: one scan when the text is a single JSON value from its first to its
    last character (what kombu writes), else ``json.loads`` itself (same values, same errors)."""
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def verified_entry(
    app: Celery,
    facts: Facts,
    row: Any,
    queue: str,
    priority: Any = None,
    task: Any = _LOOKUP,
    keys: dict[tuple[str, int], str] | None = None,
) -> Entry:
    """The Redis entry to send for ``row``'s stored message, once it agrees with the row.

    ``queue``: the row's queue (from its options, or its route); ``priority``: the row's priority
    option, if it has one (the message's must then be the same); ``task``: what
    :func:`~celery_reliable.message.tasks.checked_task` gives for the row's task (looked up if not given);
    ``keys``: the list keys already derived, by (queue, priority), kept across the rows of a batch.

    Raises:
        Refused: the message is malformed or disagrees with the row; the text says how.
    """
    task_name, task_id, message = row.task_name, row.task_id, row.message
    if type(message) is not str:
        raise Refused(f"the stored message is not text: {short(message, 80)}")
    stored_key, sep, text = message.partition("\n")
    if not sep:
        raise Refused("the stored message is corrupt (no list key line)")
    laid_out = _layout(text)
    body: Any
    content_type: Any
    encoding: Any
    if laid_out is not None:
        body, headers, properties = laid_out
        content_type, encoding, reencode = _JSON, "utf-8", False
    else:
        envelope = _whole(text)
        body, headers, properties = envelope.get("body"), envelope.get("headers"), envelope.get("properties")
        content_type, encoding, reencode = envelope.get("content-type"), envelope.get("content-encoding"), True
    if type(body) is not str or type(headers) is not dict or type(properties) is not dict or not properties:
        raise Refused("the stored message is corrupt (no body, headers or properties)")
    if content_type != _JSON or encoding != "utf-8" or properties.get("body_encoding") != "base64":
        raise Refused(
            f"the stored message's body is {short(content_type, 40)} in {short(encoding, 20)}, "
            f"{short(properties.get('body_encoding'), 20)}; only base64 JSON in utf-8 is sent as stored"
        )
    if headers.get("task") != task_name:
        found_task = short(headers.get("task"), 80)
        raise Refused(f"the stored message runs task {found_task}, the row's task is {task_name!r}")
    if headers.get("id") != task_id or properties.get("correlation_id") != task_id:
        raise Refused(
            f"the stored message's task id {short(headers.get('id'), 60)} (correlation id "
            f"{short(properties.get('correlation_id'), 60)}) is not the row's {task_id!r}"
        )
    delivery = properties.get("delivery_info")
    if type(delivery) is not dict or delivery.get("routing_key") != queue or delivery.get("exchange") != "":
        raise Refused(f"the stored message is routed by {short(delivery, 120)}, the row's queue is {queue!r}")
    found = properties.get("priority")
    if type(found) is not int or not 0 <= found <= 255 or (priority is not None and found != priority):
        raise Refused(f"the stored message's priority {short(found, 20)} is not the row's ({priority!r})")
    key = keys.get((queue, found)) if keys is not None else None
    if key is None:
        key = facts.key(queue, found)
        if keys is not None:
            keys[(queue, found)] = key
    if stored_key != key:
        raise Refused(
            f"the stored message's list key {short(stored_key, 80)} is not {key!r}, the list of the row's "
            f"queue {queue!r} at priority {found}"
        )
    try:
        args, kwargs, embed = _loads(binascii.a2b_base64(body, strict_mode=True).decode("utf-8"))
    except (ValueError, TypeError, RecursionError, binascii.Error) as exc:
        raise Refused(f"the stored message's body is not base64 JSON [args, kwargs, embed] ({exc})") from None
    if type(args) is not list or type(kwargs) is not dict:
        raise Refused(
            f"the stored message's args/kwargs are not a list and a mapping: {short(args, 80)} {short(kwargs, 80)}"
        )
    if type(embed) is not dict or any(embed.values()):  # (mostly four empty parts: nothing to look at)
        check_embed(app, embed)
    misfit = arguments_misfit(checked_task(app, task_name) if task is _LOOKUP else task, task_name, args, kwargs)
    if misfit:
        raise Refused(f"the stored message's {misfit}")
    if reencode:
        checked = {"body": body, "content-encoding": encoding, "content-type": content_type, "headers": headers,
                   "properties": properties}  # fmt: skip
        text = json.dumps(checked)
    return Entry(key, text, queue, _JSON)
