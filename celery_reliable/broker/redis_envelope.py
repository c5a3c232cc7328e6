"""Is a Redis queue entry a message kombu can deliver? Checked before it is handed to kombu.

kombu's Redis transport trusts every entry of a queue list: ``_deliver`` and ``Message`` index into
it, decode its body and later restore it, and any exception there leaves the worker's event loop,
so one malformed entry (not JSON, not UTF-8, a ``properties`` that is not an object, a body that is
not base64...) stops the worker. :func:`parse` checks everything those steps touch, catching every
exception (``RecursionError`` and ``UnicodeDecodeError`` included), and says what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kombu.utils.json import loads

#: Deepest nesting of lists and objects a message may have. The worker's main process pickles each
#: request to hand it to a pool process; a structure nested deeper than Python's recursion limit
#: allows there (a few hundred levels) would make that raise, after Celery registered the job.
MAX_DEPTH = 200


def deeper_than(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when ``value`` nests lists/tuples/objects more than ``limit`` levels (no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list | tuple):
                stack.append((child, depth + 1))
    return False


def may_nest_deeper(text: bytes | str, limit: int = MAX_DEPTH) -> bool:
    """Cheap pre-check on JSON text: fewer openers than ``limit`` cannot nest deeper than it."""
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{") > limit
    return text.count("[") + text.count("{") > limit


class Undeliverable(Exception):
    """An entry that is not a message kombu can deliver; the text says why."""


def _kind(value: Any) -> str:
    if isinstance(value, str) and not _encodable(value):
        return "a string with a lone surrogate (not UTF-8)"
    return "null" if value is None else type(value).__name__


def _encodable(text: str) -> bool:
    """Redis keys and fields are sent as UTF-8: a lone surrogate (JSON ``"\\ud800"``) cannot be."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse(item: bytes | str, codecs: Mapping[str, Any]) -> dict[str, Any]:
    """The message of queue entry ``item``, checked; raises :class:`Undeliverable` with the reason.

    ``codecs`` are the channel's body codecs (kombu: ``{"base64": ...}``).
    """
    try:
        text = item.decode("utf-8") if isinstance(item, bytes) else item
    except UnicodeDecodeError as exc:
        raise Undeliverable(f"not UTF-8 text (byte {item[exc.start : exc.start + 1]!r} at {exc.start})") from None
    try:
        message = loads(text)
    except RecursionError:
        raise Undeliverable(f"JSON nested more than {MAX_DEPTH} levels deep") from None
    except Exception as exc:
        raise Undeliverable(f"not JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(message, dict):
        raise Undeliverable(f"a JSON {_kind(message)}, not an object")
    if may_nest_deeper(text) and deeper_than(message):
        raise Undeliverable(f"JSON nested more than {MAX_DEPTH} levels deep")
    check(message, codecs)
    return message


def check(message: dict[str, Any], codecs: Mapping[str, Any]) -> None:
    """Raise :class:`Undeliverable` unless kombu can deliver, acknowledge and restore ``message``."""
    properties = message.get("properties")
    if not isinstance(properties, dict):
        raise Undeliverable(f"'properties' is {_kind(properties)}, not an object")
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not tag or not _encodable(tag):
        raise Undeliverable(f"'properties.delivery_tag' is {_kind(tag)}, not a non-empty UTF-8 string")
    info = properties.get("delivery_info")
    if not isinstance(info, dict):
        raise Undeliverable(f"'properties.delivery_info' is {_kind(info)}, not an object")
    for key in ("exchange", "routing_key"):
        if not isinstance(info.get(key), str) or not _encodable(info[key]):
            raise Undeliverable(f"'properties.delivery_info.{key}' is {_kind(info.get(key))}, not a UTF-8 string")
    if "headers" in message and not isinstance(message["headers"], dict):
        # kombu reads headers with .get() and writes ``redelivered`` into them when it requeues
        raise Undeliverable(f"'headers' is {_kind(message['headers'])}, not an object")
    for key in ("content-type", "content-encoding"):
        if message.get(key) is not None and not isinstance(message[key], str):
            raise Undeliverable(f"'{key}' is {_kind(message[key])}, not a string")
    body = message.get("body")
    if body is not None and not isinstance(body, str):
        raise Undeliverable(f"'body' is {_kind(body)}, not a string")
    encoding = properties.get("body_encoding")
    if encoding is not None and not isinstance(encoding, str):
        raise Undeliverable(f"'properties.body_encoding' is {_kind(encoding)}, not a string")
    if body and encoding and encoding.lower() != "utf-8":
        codec = codecs.get(encoding)
        if codec is None:
            raise Undeliverable(f"unknown 'properties.body_encoding' {encoding[:50]!r}")
        try:
            codec.decode(body)
        except Exception as exc:
            raise Undeliverable(f"the body is not valid {encoding} ({type(exc).__name__}: {str(exc)[:200]})") from None
