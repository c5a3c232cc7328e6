"""Failure records: what is kept of a request so a person can replay it, and what is never kept."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

from celery_reliable.worker.record import (
    FIRST_FAILED_HEADER,
    format_exception,
    from_request,
    replay_options,
    retry_headers,
)


def _request(**extra: object) -> dict[str, object]:
    request: dict[str, object] = {
        "id": "t-1", "task": "shop.charge", "args": [7], "kwargs": {"amount": 3}, "retries": 2,
        "hostname": "w1@host", "parent_id": "p-1", "root_id": "r-1", "shadow": None,
        "delivery_info": {"exchange": "", "routing_key": "payments", "priority": 5},
        "headers": {"tenant": "acme", "task": "evil.run", "id": "other-id"},
        "callbacks": [{"task": "shop.notify", "args": [], "kwargs": {}, "options": {}}],
    }  # fmt: skip
    request.update(extra)
    return request


def test_a_record_keeps_what_a_replay_needs() -> None:
    record = from_request("shop.charge", _request(), ValueError("card declined"), reason="exception")
    assert (record.task_id, record.task_name, record.args, record.kwargs) == ("t-1", "shop.charge", [7], {"amount": 3})
    assert (record.exc_type, record.exc_message, record.attempts) == ("ValueError", "card declined", 3)
    assert record.hostname == "w1@host" and record.reason == "exception"
    assert record.options["routing_key"] == "payments" and record.options["priority"] == 5
    assert record.options["link"] == [{"task": "shop.notify", "args": [], "kwargs": {}, "options": {}}]


def test_protocol_headers_are_never_kept_as_user_headers() -> None:
    options = replay_options(_request())
    assert options["headers"] == {"tenant": "acme"}


def test_a_replayed_delivery_points_back_to_its_row() -> None:
    record = from_request("shop.charge", _request(x_reliable_replay_of="12"), ValueError("x"), reason="exception")
    assert record.replay_of_id == 12
    garbled = _request(x_reliable_replay_of="12; drop")
    garbled = from_request("shop.charge", garbled, ValueError("x"), reason="exception")
    assert garbled.replay_of_id is None


def test_exception_names_are_qualified_except_builtins() -> None:
    class CardDeclined(Exception):
        pass

    name, message, text = format_exception(CardDeclined("no funds"), traceback="Traceback ...")
    assert name.endswith("test_record.test_exception_names_are_qualified_except_builtins.<locals>.CardDeclined")
    assert (message, text) == ("no funds", "Traceback ...")
    assert format_exception(KeyError("k"))[0] == "KeyError"


def test_the_first_failure_time_travels_with_the_retries() -> None:
    # Given a first attempt that fails: its retry carries the time, with the request's own headers
    first = SimpleNamespace(headers={"tenant": "acme"})
    before = datetime.now(timezone.utc)
    sent = retry_headers(first, None)
    assert sent["tenant"] == "acme" and before <= datetime.fromisoformat(sent[FIRST_FAILED_HEADER])
    # When the retried attempt fails again: the same time goes on, and headers given to retry() are kept
    later = SimpleNamespace(headers=dict(sent))
    assert retry_headers(later, {"x": 1}) == {"x": 1, FIRST_FAILED_HEADER: sent[FIRST_FAILED_HEADER]}
    # Then the stored record says when the first attempt failed; a replay does not inherit it
    record = from_request("shop.charge", _request(headers=dict(sent)), ValueError("x"), reason="exception")
    assert record.first_failed_at == datetime.fromisoformat(sent[FIRST_FAILED_HEADER])
    assert FIRST_FAILED_HEADER not in record.options["headers"]
    # And a request without it, or with garbage in it, was its task's first failure
    assert from_request("shop.charge", _request(), ValueError("x"), reason="exception").first_failed_at is None
    garbled = _request(headers={FIRST_FAILED_HEADER: "yesterday"})
    assert from_request("shop.charge", garbled, ValueError("x"), reason="exception").first_failed_at is None
