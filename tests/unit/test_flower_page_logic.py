"""The Reliability page's logic that needs no Flower: paging, filters, the chart's counts, hints.

The page itself (pagination links, selection, dialogs, detail pages) is tested against a real
Flower and Chromium in tests/integration/test_flower_ops.py.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import insert

from celery_reliable.exceptions import ReplayError
from celery_reliable.ops.flower.actions import edited_arguments
from celery_reliable.ops.flower.chart import failures_over_time
from celery_reliable.ops.flower.hints import app_argument, celery_command
from celery_reliable.ops.flower.rows import BadQuery, Paging, Query
from celery_reliable.store.engine import dispose
from celery_reliable.store.migrate import upgrade
from celery_reliable.store.models import FailedTask, utcnow


def test_paging_says_which_rows_of_how_many() -> None:
    third = Paging(page=3, limit=20, total=213)
    assert (third.label(), third.pages, third.has_previous, third.has_next) == ("41-60 of 213", 11, True, True)
    last = Paging(page=11, limit=20, total=213)
    assert (last.label(), last.has_next) == ("201-213 of 213", False)
    assert Paging(page=1, limit=20, total=0).label() == "0 of 0"
    assert Paging(page=12, limit=20, total=213).label() == "none of 213 (past the last page)"
    assert not Paging(page=1, limit=20, total=20).has_next


def test_query_refuses_bad_values_with_their_name() -> None:
    with pytest.raises(BadQuery, match="since: 'yesterday' is neither an ISO date/time"):
        Query(since="yesterday")
    with pytest.raises(BadQuery, match="page must be 1 or more, got 0"):
        Query(page=0)
    with pytest.raises(BadQuery, match="span must be one of 24h, 7d, got '1y'"):
        Query(span="1y")
    selected = Query(task="t.a", exception="KeyError", search="x", since="2026-01-31", until="2h").failure_filter()
    assert (selected.task_name, selected.exc_type, selected.search) == ("t.a", "KeyError", "x")
    assert selected.since is not None and selected.since.isoformat() == "2026-01-31T00:00:00+00:00"
    assert selected.until is not None and abs(utcnow() - timedelta(hours=2) - selected.until) < timedelta(seconds=5)
    assert Query(page=3, search="a b").params(page=4) == {"page": "4", "search": "a b"}


def test_edited_arguments_are_json_with_kombu_markers_read() -> None:
    args, kwargs = edited_arguments(
        '[1, "a"]', '{"when": {"__type__": "datetime", "__value__": "2026-01-31T12:00:00"}}'
    )
    assert args == [1, "a"] and kwargs["when"].isoformat() == "2026-01-31T12:00:00"
    with pytest.raises(ReplayError, match="edited kwargs are not JSON: Expecting"):
        edited_arguments("[]", "{oops")


def test_hints_name_the_app_flower_was_started_with() -> None:
    assert app_argument(["celery", "-A", "shop.celery", "reliable", "flower"]) == "shop.celery"
    assert app_argument(["celery", "--app=shop.app", "flower"]) == "shop.app"
    assert app_argument(["celery", "-Ashop", "flower"]) == "shop"
    assert app_argument(["celery", "flower"]) is None
    app = Celery("billing", set_as_current=False)
    assert celery_command(app, ["celery", "-A", "shop.celery"]) == "celery -A shop.celery"
    assert celery_command(app, ["flower"]) == "celery -A billing"
    assert celery_command(Celery(set_as_current=False), ["flower"]) == "celery -A proj"


def test_chart_counts_failures_per_hour_and_per_six_hours(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chart.sqlite3'}"
    upgrade(url)
    app = Celery("chart", set_as_current=False)
    app.conf.reliable_database_url = url
    now = utcnow()
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    hours_back = [0, 0, 0, 1, 3, 30, 200]  # 3 this hour, 1 an hour before, 1 three hours before, 2 older
    rows = [
        {"task_id": f"c-{i}", "task_name": "t.chart", "reason": "failed", "args": [], "kwargs": {},
         "exc_type": "KeyError", "exc_message": "x", "last_failed_at": this_hour - timedelta(hours=back, seconds=-1)}
        for i, back in enumerate(hours_back)
    ]  # fmt: skip
    try:
        from celery_reliable.store.engine import get_engine

        with get_engine(app).begin() as conn:
            conn.execute(insert(FailedTask), rows)
        day = failures_over_time(app, "24h")
        assert len(day.bars) == 24 and day.total == 5 and day.highest == 3
        assert [b.count for b in day.bars] == [0] * 20 + [1, 0, 1, 3]
        week = failures_over_time(app, "7d")
        assert len(week.bars) == 28 and week.total == 6 and sum(b.count for b in week.bars[-4:]) == 5
        assert day.bars[-1].start + timedelta(hours=1) > now >= day.bars[-1].start
    finally:
        dispose(app)
        app.close()
