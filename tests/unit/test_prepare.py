"""prepare(): what publish() and the outbox accept, and what a pending row stores. No broker, no database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery

from celery_reliable.exceptions import BadMessageError, NotJSONArgumentsError
from celery_reliable.message.prepare import ALLOWED_OPTIONS, check_delivery_options, prepare, send_options


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("prep", broker="memory://", set_as_current=False)
    app.conf.reliable_external_tasks = ["billing.*"]

    @app.task(name="shop.ok", shared=False)
    def ok(n: int) -> int:
        return n

    @app.task(name="shop.any", shared=False)
    def any_args(*args: Any, **kwargs: Any) -> None:
        return None

    yield app
    app.close()


def test_a_message_becomes_the_columns_of_a_row(app: Celery) -> None:
    eta = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    values = prepare(app, "shop.ok", [1], None, {"task_id": "t-1", "eta": eta, "queue": "q", "priority": 3,
                                                 "headers": {"tenant": "acme"}})  # fmt: skip
    assert (values.task_id, values.task_name, values.args, values.kwargs) == ("t-1", "shop.ok", [1], {})
    assert values.eta == eta
    assert values.options == {"headers": {"tenant": "acme"}, "queue": "q", "priority": 3}
    options = send_options(app, values)
    assert options == {"queue": "q", "priority": 3, "headers": {"tenant": "acme"}, "eta": eta}


def test_countdown_and_expires_become_absolute_times(app: Celery) -> None:
    before = datetime.now(timezone.utc)
    values = prepare(app, "shop.ok", [1], None, {"countdown": 60, "expires": 120})
    assert values.eta is not None and values.expires_at is not None
    assert timedelta(seconds=59) < values.eta - before < timedelta(seconds=62)
    assert timedelta(seconds=119) < values.expires_at - before < timedelta(seconds=122)


def test_a_fresh_task_id_when_none_is_given(app: Celery) -> None:
    first, second = prepare(app, "shop.any"), prepare(app, "shop.any")
    assert first.task_id and second.task_id and first.task_id != second.task_id


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "options", "match"),
    [
        ("shop.ok", [1], None, {"delivery_mode": 2}, r"unsupported option\(s\) \['delivery_mode'\]"),
        ("", None, None, {}, "task name must be a non-empty string"),
        ("shop.okk", [1], None, {}, "Did you mean 'shop.ok'"),
        ("shop.ok", [1, 2], None, {}, r"ok\(n\)"),
        ("shop.ok", "1", None, {}, "args must be a list or a tuple"),
        ("shop.ok", [1], [("a", 1)], {}, "kwargs must be a mapping"),
        ("shop.ok", [1], None, {"eta": datetime.now(timezone.utc), "countdown": 1}, "eta or countdown, not both"),
        ("shop.ok", [1], None, {"countdown": -1}, "countdown must be seconds >= 0"),
        ("shop.ok", [1], None, {"eta": "tomorrow"}, "eta must be a datetime"),
        ("shop.ok", [1], None, {"expires": "soon"}, "expires must be seconds or a datetime"),
        ("shop.ok", [1], None, {"priority": 300}, "priority must be an integer from 0 to 255"),
        ("shop.ok", [1], None, {"queue": 7}, "queue must be a string"),
        ("shop.ok", [1], None, {"headers": {"task": "evil.run"}}, r"headers \['task'\] are Celery's own"),
        ("shop.ok", [1], None, {"link": {"task": "evil.run", "args": [], "kwargs": {}, "options": {}}}, "evil.run"),
        ("shop.ok", [1], None, {"time_limit": 0}, "time_limit must be seconds > 0"),
    ],
)
def test_bad_input_is_refused_with_the_problem_named(
    app: Celery, name: str, args: Any, kwargs: Any, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(BadMessageError, match=match):
        prepare(app, name, args, kwargs, options)


def test_arguments_that_are_not_json_are_their_own_error(app: Celery) -> None:
    with pytest.raises(NotJSONArgumentsError, match="JSON"):
        prepare(app, "shop.any", [object()])


def test_tasks_of_other_code_bases_are_sent_by_name_when_listed(app: Celery) -> None:
    assert prepare(app, "billing.charge", [1]).task_name == "billing.charge"
    with pytest.raises(BadMessageError, match="reliable_external_tasks"):
        prepare(app, "mailing.send", [1])


def test_every_allowed_option_survives_the_check_of_stored_rows() -> None:
    # what prepare() stores must pass the relay's check of the same row
    stored = {"queue": "q", "exchange": "x", "routing_key": "r", "priority": 1, "shadow": "s", "reply_to": "rt",
              "time_limit": 5, "soft_time_limit": 4, "headers": {"tenant": "acme"}}  # fmt: skip
    check_delivery_options("shop.ok", stored)
    assert set(stored) - {"headers"} <= ALLOWED_OPTIONS
