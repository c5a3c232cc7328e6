"""What the library puts in a worker's log: the broker URL as the user wrote it, no Alembic chatter."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from kombu import Connection

from celery_reliable.broker.facts import ATOMIC_FETCH_TRANSPORTS
from celery_reliable.broker.redis_fetch import fetch_connection
from celery_reliable.store.migrate import current_revision, upgrade


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("redis://:secret@127.0.0.1:6399/3", "127.0.0.1:6399/3"),
        ("rediss://127.0.0.1:6399/1", "127.0.0.1:6399/1"),
        ("sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380", "127.0.0.1:26379/"),
    ],
)
def test_the_atomic_fetch_connection_shows_the_real_scheme(url: str, where: str) -> None:
    # Given the connection the worker consumes with (the atomic-fetch transport)
    scheme = url.split(":", 1)[0]
    connection = fetch_connection(Connection(url), ATOMIC_FETCH_TRANSPORTS[scheme])
    assert str(connection.transport_cls).startswith("celery_reliable.broker.redis_fetch:")
    # Then "Connected to ..." shows the URL's own scheme and address, the password masked (how kombu
    # masks an empty password differs between its versions), also on a clone
    for shown in (connection.as_uri(), connection.clone().as_uri()):
        assert shown.startswith(f"{scheme}://") and where in shown and "secret" not in shown, shown
        assert "Transport" not in shown
    assert connection.as_uri(include_password=True).startswith(url.split(":", 1)[0] + "://")


def test_alembic_stays_quiet_unless_configured(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'quiet.sqlite3'}"
    caplog.set_level(logging.INFO)
    # When the library migrates and checks its tables with the log at INFO
    upgrade(url)
    assert current_revision(url) is not None
    # Then Alembic's INFO lines ("Context impl ...") are not in it
    assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []
    assert logging.getLogger("alembic").level == logging.NOTSET
    # And a user who set Alembic's level gets its lines
    caplog.clear()
    logging.getLogger("alembic").setLevel(logging.INFO)
    try:
        current_revision(url)
    finally:
        logging.getLogger("alembic").setLevel(logging.NOTSET)
    assert "Context impl SQLiteImpl." in [r.getMessage() for r in caplog.records]
