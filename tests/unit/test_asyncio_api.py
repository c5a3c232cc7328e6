"""apublish() refuses what publish() refuses, with the same error; outbox() picks the async outbox.

No broker, no database: everything here is refused or decided before any I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from celery_reliable import AsyncOutbox, BadMessageError, Outbox, apublish, get_settings, outbox, publish
from celery_reliable.message.tasks import ArgumentsMismatchError
from celery_reliable.store.models import PendingMessage


@pytest.fixture
def app() -> Iterator[Celery]:
    # nothing listens there: a test that reached the broker would fail, not pass
    app = Celery("asyncio-api", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.reliable_database_url = "sqlite:////nonexistent-dir/never-opened.sqlite3"

    @app.task(name="shop.ok", shared=False)
    def ok(n: int) -> int:
        return n

    yield app
    app.close()


BAD: list[tuple[str, Any, Any, dict[str, Any], type[BadMessageError]]] = [
    ("shop.ok", [object()], None, {}, BadMessageError),  # not JSON
    ("shop.ok", "1", None, {}, BadMessageError),  # args not a list
    ("shop.ok", [1], None, {"compression": "zlib"}, BadMessageError),  # an option that cannot be replayed
    ("shop.ok", [1], None, {"headers": {"task": "x"}}, BadMessageError),  # Celery's own header
    ("shop.okk", [1], None, {}, BadMessageError),  # not registered (a typo)
    ("shop.ok", [1, 2], None, {}, ArgumentsMismatchError),  # does not fit ok(n)
]


@pytest.mark.parametrize(("name", "args", "kwargs", "options", "error"), BAD)
def test_apublish_refuses_bad_input_exactly_as_publish_does(
    app: Celery, name: str, args: Any, kwargs: Any, options: dict[str, Any], error: type[BadMessageError]
) -> None:
    with pytest.raises(error) as sync:
        publish(app, name, args, kwargs, **options)
    with pytest.raises(error) as async_:
        asyncio.run(apublish(app, name, args, kwargs, **options))
    assert str(async_.value) == str(sync.value)


def test_outbox_of_an_async_session_is_the_async_outbox(app: Celery) -> None:
    async_session = AsyncSession()
    box = outbox(async_session, app)
    assert isinstance(box, AsyncOutbox)
    assert (box.app, box.session) == (app, async_session)
    assert isinstance(outbox(Session(), app), Outbox)
    # bad input is refused at send(), before anything is added to the session
    with pytest.raises(BadMessageError, match="cannot be stored as JSON"):
        box.send("shop.ok", [object()])
    assert list(async_session.sync_session.new) == []
    # a good one becomes a new pending row of the session, due after the grace (the relay's cue)
    task_id = box.send("shop.ok", [7], task_id="fixed-id")
    (row,) = async_session.sync_session.new
    assert isinstance(row, PendingMessage)
    assert (task_id, row.task_id, row.task_name, row.args, row.source, row.status) == (
        "fixed-id", "fixed-id", "shop.ok", [7], "outbox", "pending",
    )  # fmt: skip
    grace = (row.next_attempt_at - row.created_at).total_seconds()
    assert grace == pytest.approx(get_settings(app).outbox_grace, abs=1)
    asyncio.run(async_session.close())  # closed without a commit: nothing was written
