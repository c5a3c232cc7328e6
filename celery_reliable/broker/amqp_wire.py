"""AMQP 0-9-1 ``basic.publish`` frames, encoded without writing them: a batch goes out in few writes.

py-amqp writes each message with its own ``sendall`` and serialises its properties through a
general encoder; a relay sending thousands of messages a second spends a third of its time there.
:func:`publish_frames` gives the very bytes py-amqp's frame writer puts on the socket for a
message (a test compares them), so a batch can be written as one buffer. Header values other than
text, numbers, booleans, None, lists and mappings (and properties of unexpected types) are encoded
by py-amqp itself, so every message still encodes, and fails, exactly as it would there.
"""

from __future__ import annotations

from struct import Struct
from typing import Any

#: Basic.Publish (class 60, method 40) and a zero ticket: the start of every method frame.
_PUBLISH = b"\x00\x3c\x00\x28\x00\x00"
_FRAME_END = b"\xce"
_FRAME_HEAD = Struct(">BHI")
_CONTENT_HEAD = Struct(">HHQ")
_U32 = Struct(">I")
_I32 = Struct(">i")
_I64 = Struct(">q")
_F64 = Struct(">d")
_FLAGS = Struct(">H")

#: Basic properties in the order of their flag bits (the first is bit 15), with their AMQP type.
_PROPERTIES = (
    ("content_type", "s"), ("content_encoding", "s"), ("application_headers", "F"), ("delivery_mode", "o"),
    ("priority", "o"), ("correlation_id", "s"), ("reply_to", "s"), ("expiration", "s"), ("message_id", "s"),
    ("timestamp", "L"), ("type", "s"), ("user_id", "s"), ("app_id", "s"), ("cluster_id", "s"),
)  # fmt: skip

#: Encoded table keys (a key and its length octet), kept for the names messages repeat.
_keys: dict[str, bytes] = {}
_KEYS_KEPT = 4096


class _Other(Exception):
    """A value this module leaves to py-amqp's encoder."""


def _shortstr(value: Any) -> bytes:
    if type(value) is not str:
        raise _Other
    data = value.encode("utf-8", "surrogatepass")
    if len(data) > 255:
        raise _Other
    return bytes((len(data),)) + data


def _key(key: Any) -> bytes:
    found = _keys.get(key)
    if found is None:
        if type(key) is not str:
            raise _Other
        found = _shortstr(key)
        if len(_keys) < _KEYS_KEPT:
            _keys[key] = found
    return found


def _item(value: Any, out: list[bytes]) -> None:
    """Append a field value, as py-amqp's table writer encodes it."""
    kind = type(value)
    if kind is str:
        data = value.encode("utf-8", "surrogatepass")
        out.append(b"S" + _U32.pack(len(data)))
        out.append(data)
    elif kind is bool:
        out.append(b"t\x01" if value else b"t\x00")
    elif kind is int:
        if -2147483647 <= value <= 2147483647:
            out.append(b"I" + _I32.pack(value))
        elif -(2**63) <= value < 2**63:
            out.append(b"L" + _I64.pack(value))
        else:
            raise _Other
    elif value is None:
        out.append(b"V")
    elif kind is float:
        out.append(b"d" + _F64.pack(value))
    elif kind is dict:
        out.append(b"F" + _table(value))
    elif kind is list or kind is tuple:
        items: list[bytes] = []
        for element in value:
            _item(element, items)
        data = b"".join(items)
        out.append(b"A" + _U32.pack(len(data)))
        out.append(data)
    else:
        raise _Other


def _table(table: dict[Any, Any]) -> bytes:
    out: list[bytes] = []
    for key, value in table.items():
        out.append(_key(key))
        _item(value, out)
    data = b"".join(out)
    return _U32.pack(len(data)) + data


def properties(values: dict[str, Any], message: Any) -> bytes:
    """The property flags and list of a message's content header (``message``: py-amqp's, for the
    values left to it)."""
    flags = 0
    out: list[bytes] = []
    try:
        for bit, (name, kind) in enumerate(_PROPERTIES):
            value = values.get(name)
            if value is None:
                continue
            flags |= 1 << (15 - bit)
            if kind == "s":
                out.append(_shortstr(value))
            elif kind == "F":
                if type(value) is not dict:
                    raise _Other
                out.append(_table(value))
            elif kind == "o":
                if type(value) is not int or not 0 <= value <= 255:
                    raise _Other
                out.append(bytes((value,)))
            else:
                raise _Other
    except (_Other, RecursionError):
        return bytes(message._serialize_properties())
    return _FLAGS.pack(flags) + b"".join(out)


def _publish_args(exchange: Any, routing_key: Any, mandatory: bool, immediate: bool) -> bytes:
    try:
        names = _shortstr(exchange or "") + _shortstr(routing_key or "")
    except _Other:
        from amqp.serialization import dumps

        return _PUBLISH[:4] + bytes(dumps("Bssbb", (0, exchange, routing_key, mandatory, immediate)))
    return _PUBLISH + names + bytes(((1 if mandatory else 0) | ((1 if immediate else 0) << 1),))


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME_HEAD.pack(kind, channel, len(payload)) + payload + _FRAME_END


def publish_frames(
    message: Any, channel: int, frame_max: int, exchange: str, routing_key: str, mandatory: bool, immediate: bool
) -> bytes:
    """The frames of ``basic.publish`` of a py-amqp ``Message``, as py-amqp's frame writer writes them.

    A body longer than a frame allows is split as py-amqp splits it (frames of ``frame_max - 8``
    bytes). A text body is encoded with the message's ``content_encoding`` (utf-8 if unset, and
    then set, as py-amqp does).
    """
    body = message.body
    if isinstance(body, str):
        body = body.encode(message.properties.setdefault("content_encoding", "utf-8"))
    args = _publish_args(exchange, routing_key, mandatory, immediate)
    header = _CONTENT_HEAD.pack(60, 0, len(body)) + properties(message.properties, message)
    parts = [_frame(1, channel, args), _frame(2, channel, header)]
    chunk = frame_max - 8
    for start in range(0, len(body), chunk):
        parts.append(_frame(3, channel, body[start : start + chunk]))
    return b"".join(parts)
