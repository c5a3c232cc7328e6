"""basic.publish frames encoded ahead: byte for byte what py-amqp's frame writer writes."""

from __future__ import annotations

import struct
from datetime import datetime, timezone
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from amqp import Message, spec
from amqp.method_framing import frame_writer
from amqp.serialization import dumps

from celery_reliable.broker.amqp_wire import publish_frames

CELERY_HEADERS: dict[str, Any] = {
    "lang": "py", "task": "t.ok", "id": "0b0c", "shadow": None, "eta": None, "expires": None, "group": None,
    "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": "0b0c", "parent_id": None,
    "argsrepr": "['a', 1]", "kwargsrepr": "{}", "origin": "gen1@host", "ignore_result": False,
    "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {}, "x_reliable_ledger": 1,
}  # fmt: skip


def py_amqp_frames(
    message: Message, channel: int, frame_max: int, exchange: Any, routing_key: Any, mandatory: bool, immediate: bool
) -> bytes:
    written: list[bytes] = []
    transport = SimpleNamespace(write=lambda data: written.append(bytes(data)))
    write = frame_writer(SimpleNamespace(frame_max=frame_max, bytes_sent=0), transport)
    args = dumps("Bssbb", (0, exchange, routing_key, mandatory, immediate))
    write(1, channel, spec.Basic.Publish, args, message)
    return b"".join(written)


def both(body: Any, frame_max: int = 131072, exchange: Any = "", routing_key: Any = "q", **props: Any) -> bytes:
    ours = publish_frames(Message(body, **props), 3, frame_max, exchange, routing_key, True, False)
    theirs = py_amqp_frames(Message(body, **props), 3, frame_max, exchange, routing_key, True, False)
    assert ours == theirs
    return ours


def test_a_celery_message_is_encoded_as_py_amqp_encodes_it() -> None:
    both(
        b'[["a", 1], {}, {"callbacks": null}]', content_type="application/json", content_encoding="utf-8",
        application_headers=CELERY_HEADERS, delivery_mode=2, priority=0, correlation_id="0b0c",
        reply_to="e1f2-reply",
    )  # fmt: skip


@pytest.mark.parametrize(
    "value",
    [
        "text", "ünïcode ✓", "", 0, 1, -1, 2147483647, -2147483647, -2147483648, 2147483648, 2**63 - 1, -(2**63),
        1.5, -0.0, True, False, None, [1, "a", None, [2.5, {"k": "v"}]], (1, 2), {"nested": {"deeper": [True]}},
        {}, [], datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc), Decimal("12.340"), b"raw bytes",
    ],
)  # fmt: skip
def test_every_header_value_type_is_encoded_as_py_amqp_encodes_it(value: Any) -> None:
    both(b"{}", application_headers={"h": value, "after": "x"}, delivery_mode=2)


def test_properties_of_other_types_and_keys_go_to_py_amqp() -> None:
    both(b"x", application_headers={b"bytes-key": 1}, timestamp=1700000000, message_id=b"mid", priority=9)
    both(b"x", expiration="1500", type="t", user_id="guest", app_id="a", cluster_id="c", content_type="")


def test_long_bodies_are_split_as_py_amqp_splits_them() -> None:
    for size in (4000, 4088, 4200, 20000):
        both(b"b" * size, frame_max=4096, application_headers={"a": "h" * 100}, delivery_mode=2)
    both(b"", frame_max=4096, delivery_mode=2)


def test_a_text_body_is_encoded_and_its_encoding_set_as_py_amqp_does() -> None:
    both("hé", delivery_mode=2)
    both("hé", content_encoding="latin-1")


def test_names_too_long_fail_as_in_py_amqp() -> None:
    long = "q" * 256
    with pytest.raises(struct.error):
        publish_frames(Message(b"x"), 1, 131072, "", long, False, False)
    with pytest.raises(struct.error):
        py_amqp_frames(Message(b"x"), 1, 131072, "", long, False, False)
    with pytest.raises(struct.error):
        publish_frames(Message(b"x", correlation_id=long), 1, 131072, "", "q", False, False)
    both(b"x", exchange="ex", routing_key="r" * 255)
    both(b"x", exchange=b"ex", routing_key=b"rk")


def test_values_py_amqp_cannot_encode_fail_as_in_py_amqp() -> None:
    for value in (object(), 2**64, {1.5: "key"}):
        errors = []
        for encode in (publish_frames, py_amqp_frames):
            try:
                encode(Message(b"x", application_headers={"h": value}), 1, 131072, "", "q", False, False)
            except Exception as exc:
                errors.append(type(exc))
        assert len(errors) == 2 and errors[0] is errors[1], errors
