"""The pure parts of the worker's defences against hostile input (the worker itself is tested
with real brokers in tests/integration/test_quarantine.py, test_queue_fuzz.py and
test_hostile_worker.py)."""

from __future__ import annotations

import base64
import json
import pickle
from typing import Any

import pytest
from celery import Celery
from kombu.exceptions import EncodeError, OperationalError
from kombu.transport.virtual.base import Base64
from redis.exceptions import ConnectionError as RedisConnectionError

from celery_reliable.broker import redis_envelope as envelope
from celery_reliable.broker.redis_quarantine import split_entry
from celery_reliable.exceptions import PermanentError, StoreError
from celery_reliable.store.failures import FailureRecord
from celery_reliable.worker import arguments, failure_store, raw, requeue

CODECS = {"base64": Base64()}


def _envelope(**changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "body": base64.b64encode(b'[["k"], {}, {}]').decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": "t.ok", "id": "abc"},
        "properties": {
            "delivery_info": {"exchange": "", "routing_key": "q"},
            "body_encoding": "base64",
            "delivery_tag": "tag-1",
        },
    }
    message.update(changes)
    return message


def _props(**changes: Any) -> dict[str, Any]:
    props = dict(_envelope()["properties"])
    props.update(changes)
    return props


def test_a_good_envelope_parses() -> None:
    assert envelope.parse(json.dumps(_envelope()).encode(), CODECS)["properties"]["delivery_tag"] == "tag-1"


@pytest.mark.parametrize(
    "item,why",
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "a JSON list, not an object"),
        (b'"text"', "a JSON str, not an object"),
        (b'{"a": "\xff"}', "not UTF-8 text (byte b'\\xff' at 7)"),
        (b"[" * 5000 + b"]" * 5000, "JSON nested more than 200 levels deep"),
        (json.dumps({"h": json.loads("[" * 300 + "]" * 300)}).encode(), "JSON nested more than 200 levels deep"),
        (json.dumps(_envelope(properties=None)).encode(), "'properties' is null, not an object"),
        (json.dumps(_envelope(properties=_props(delivery_tag=5))).encode(), "'properties.delivery_tag' is int"),
        (json.dumps(_envelope(properties=_props(delivery_tag=""))).encode(), "'properties.delivery_tag' is str"),
        (json.dumps(_envelope(properties=_props(delivery_tag="\ud800"))).encode(), "a lone surrogate"),
        (json.dumps(_envelope(properties=_props(delivery_info=[]))).encode(), "'properties.delivery_info' is list"),
        (
            json.dumps(_envelope(properties=_props(delivery_info={"exchange": ""}))).encode(),
            "'properties.delivery_info.routing_key' is null",
        ),
        (json.dumps(_envelope(headers=None)).encode(), "'headers' is null, not an object"),
        (json.dumps(_envelope(body=42)).encode(), "'body' is int, not a string"),
        (json.dumps(_envelope(body="abc")).encode(), "the body is not valid base64"),
        (
            json.dumps(_envelope(properties=_props(body_encoding="rot13"))).encode(),
            "unknown 'properties.body_encoding'",
        ),
        (json.dumps(_envelope(**{"content-type": 7})).encode(), "'content-type' is int, not a string"),
    ],
)
def test_what_kombu_cannot_deliver_is_named(item: bytes, why: str) -> None:
    with pytest.raises(envelope.Undeliverable) as caught:
        envelope.parse(item, CODECS)
    assert why in str(caught.value)


def test_nesting_is_measured_without_recursion() -> None:
    deep: Any = 1
    for _ in range(100_000):
        deep = [deep]
    assert envelope.deeper_than(deep, 200) and not envelope.deeper_than([[1], {"a": [2]}], 200)
    assert not envelope.may_nest_deeper('{"a": [1, 2]}') and envelope.may_nest_deeper("[" * 201)


def test_raw_text_keeps_text_and_falls_back_to_base64() -> None:
    assert raw.raw_text(b"ctl \x1b\x07 kept") == {"size": 11, "text": "ctl \x1b\x07 kept"}
    assert raw.raw_text(b"a\x00b") == {"size": 3, "base64": "YQBi", "encoding": "base64: holds NUL characters"}
    assert raw.raw_text(b"\xff") == {"size": 1, "base64": "/w==", "encoding": "base64: not UTF-8 text"}
    cut = raw.raw_text(b"x" * 70_000)
    assert len(cut["text"]) == raw.MAX_RAW and cut["size"] == 70_000 and "65536 characters" in cut["truncated"]
    cut64 = raw.raw_text(b"\xff" * 70_000)
    assert len(cut64["base64"]) <= raw.MAX_RAW and "truncated" in cut64


def test_a_record_is_built_from_any_message() -> None:
    class Odd:
        headers = ["not", "a", "mapping"]
        properties = None
        delivery_info = {"exchange": 5, 7: "x", "routing_key": "q"}
        content_type = "x" * 1000
        content_encoding = None
        body = {"not": "bytes"}

    record = raw.message_record(Odd(), "invalid_message", ValueError("bad"), trust_id=True)
    assert record.task_id.startswith("raw-") and record.task_name == "<unknown>"
    assert record.raw_message["headers"] == {"not_a_mapping": ["not", "a", "mapping"]}
    assert record.raw_message["delivery_info"] == {"exchange": 5, "routing_key": "q"}
    assert record.options["exchange"] is None and record.options["routing_key"] == "q"
    assert record.raw_message["content_type"] == {"value": "x" * 1000}
    assert (record.exc_type, record.exc_message) == ("ValueError", "bad")

    class Huge(Odd):
        headers = {"id": "t-1", "task": "t.x", "big": "h" * 100_000}
        body = b'[["a"], {"k": 1}, {}]'
        content_type = "application/json"

    record = raw.message_record(Huge(), "unknown_task", None, trust_id=True)
    assert record.task_id == "t-1" and record.task_name == "t.x"
    assert (record.args, record.kwargs) == (["a"], {"k": 1})
    assert "truncated" in record.raw_message["headers"]["json"]


def test_escaping_for_a_database_that_refuses_nul_and_surrogates() -> None:
    assert failure_store.escape_text("a\x00b\ud800c\x1b") == "a\\x00b\\ud800c\x1b"
    value = failure_store.escape_value({"k\x00": ["\ud800", b"\xff", 1, None]})
    assert value == {"k\\x00": ["\\ud800", "\\xff", 1, None]}
    record = failure_store.escaped(FailureRecord(task_id="t\x00", task_name="n", reason="r", exc_message="m\x00"))
    assert record.task_id == "t\\x00" and record.exc_message.startswith("m\\x00 [celery_reliable: NUL")


def test_hand_backs_are_counted_per_task_id_in_bounded_memory() -> None:
    counter = requeue.RequeueCounter(size=3)
    assert [counter.add("a"), counter.add("a"), counter.add("b")] == [1, 2, 1]
    for key in "cde":
        counter.add(key)
    assert len(counter) == 3 and counter.add("a") == 1  # "a" was forgotten first
    counter.forget("a")
    assert counter.add("a") == 1
    assert [requeue.pause_for(n) for n in (1, 2, 3, 5, 6, 50)] == [0.5, 1.0, 2.0, 8.0, 10.0, 10.0]


def test_only_a_broker_or_database_that_is_away_counts_as_passing() -> None:
    for exc in (
        OperationalError("down"),
        ConnectionRefusedError(),
        TimeoutError(),
        RedisConnectionError(),
        StoreError(),
    ):
        assert requeue.is_transient(exc), exc
    for exc in (TypeError("sig"), EncodeError("json"), ValueError(), PermanentError()):
        assert not requeue.is_transient(exc), exc


def test_a_handed_back_failure_crosses_processes_whole() -> None:
    record = FailureRecord(task_id="t1", task_name="t.x", reason="permanent", args=[1], exc_message="boom")
    back = pickle.loads(pickle.dumps(requeue.HandedBack("its failure could not be stored", record)))
    assert back.record == record and str(back) == "its failure could not be stored"


def test_arguments_are_checked_like_celery_checks_them() -> None:
    app = Celery("hostile-unit", set_as_current=False)

    @app.task(bind=True, name="u.one", shared=False)
    def one(self: Any, key: Any) -> None: ...

    @app.task(name="u.untyped", typing=False, shared=False)
    def untyped(key: Any) -> None: ...

    assert arguments.check(one, ["k"], {}) is None and arguments.check(one, [], {"key": 1}) is None
    misfit = arguments.check(one, [1, 2, 3, 4], {})
    assert isinstance(misfit, arguments.BadArgumentsError) and isinstance(misfit, PermanentError)
    assert "args=[1, 2, 3, 4]" in str(misfit) and "too many positional arguments" in str(misfit)
    assert "It expects one(key" in str(misfit) and "replay" in str(misfit)
    assert arguments.check(untyped, [1, 2, 3], {}) is None  # typing off: Celery does not check it either
    assert "not a mapping" in str(arguments.check(untyped, [1], ["x"]))  # never runnable
    assert "not a list" in str(arguments.check(untyped, "abc", {}))


def test_a_quarantine_element_is_split_into_its_id_and_entry() -> None:
    assert split_entry(b"0a1b:{not json") == ("0a1b", b"{not json")
    entry_id, entry = split_entry(b"\xff no id here")
    assert entry == b"\xff no id here" and entry_id.startswith("h") and len(entry_id) == 33
    assert split_entry(b"\xff no id here")[0] == entry_id  # the same each time it is read


def test_a_sub_second_countdown_is_sent_as_whole_seconds() -> None:
    from celery_reliable.worker.retry import sendable_countdown

    # kombu's native delayed delivery (quorum queues) raises ValueError for 0 < countdown < 1
    assert [sendable_countdown(c) for c in (0, 0.2, 0.5, 0.7, 1, 2.5)] == [0, 0.0, 0.0, 1.0, 1, 2.5]
