"""The Reliability page's operator tools in a real Flower process (no worker: replays and resends
are checked in the Redis queue they go to), with headless Chromium for what happens in the browser.

Every test writes its own rows (a per-test key in the arguments, found with the search filter) and
checks exact counts of them: pages and totals, date filters, the chart, row pages, replay with
edited arguments, resend and drop of pending rows, unknown ids, selection and confirmations.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from html import unescape
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import insert, select, update

from celery_reliable.store.engine import dispose
from celery_reliable.store.models import FailedTask, PendingMessage, utcnow
from celery_reliable.store.pending import PendingValues, add_pending
from tests.conftest import Scenario, make_scenario
from tests.integration.test_flower import ACTIONS_CONF, FlowerProcess

pytestmark = [pytest.mark.integration, pytest.mark.redis]


@dataclass
class Env:
    scenario: Scenario
    flower: FlowerProcess
    app: Celery

    def failures(self, key: str, n: int, **values: Any) -> list[int]:
        """``n`` failed rows of t.permanent whose argument holds ``key``; their ids, oldest first."""
        rows = [
            {"task_id": f"{key}-{i}", "task_name": "t.permanent", "reason": "failed", "args": [f"{key}-{i}"],
             "kwargs": {}, "options": {"routing_key": self.scenario.queue}, "exc_type": "shop.errors.Declined",
             "exc_message": f"declined {key}", "traceback": f"Traceback {key}\nshop.errors.Declined", "attempts": 4,
             **values}
            for i in range(n)
        ]  # fmt: skip
        with self.scenario.db.engine.begin() as conn:
            conn.execute(insert(FailedTask), rows)
            found = conn.execute(select(FailedTask.id).where(FailedTask.task_id.like(f"{key}-%")))
            return sorted(int(i) for i in found.scalars())

    def pending(self, key: str, n: int) -> list[int]:
        values = [
            PendingValues(f"{key}-p{i}", "t.ok", [f"{key}-p{i}"], {}, {"queue": self.scenario.queue}, None, None)
            for i in range(n)
        ]
        return add_pending(self.app, values, source="publish_fallback", delay=3600)

    def status(self, model: Any, row_id: int) -> str | None:
        with self.scenario.db.engine.connect() as conn:
            found = conn.execute(select(model.status).where(model.id == row_id)).scalar_one_or_none()
            return None if found is None else str(found)

    def queued(self) -> list[tuple[str, list[Any], dict[str, Any]]]:
        """(task id, args, kwargs) of every message in the test queue."""
        client = redis.Redis.from_url(self.scenario.broker_url)
        try:
            raw = client.lrange(self.scenario.queue, 0, -1)
        finally:
            client.close()
        found = []
        for item in raw:
            message = json.loads(item)
            args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
            found.append((message["headers"]["id"], args, kwargs))
        return found

    def shown(self, resp: Any) -> str:
        assert resp.status == 303, resp.body[:300]
        return unescape(self.flower.request("GET", resp.headers["location"], cookies=resp.cookies).body)


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("flower-ops")
    scenarios = make_scenario(request, redis_url, f"sqlite:///{tmp / 'reliable.sqlite3'}", tmp)
    scenario = next(scenarios)
    flower = FlowerProcess(
        scenario.env(FLOWER_UNAUTHENTICATED_API="true", CELERY_CONFIG_MODULE=ACTIONS_CONF), tmp / "flower.log"
    )
    app = Celery("flower-ops-test", broker=scenario.broker_url, set_as_current=False)
    app.conf.reliable_database_url = scenario.db.url
    try:
        flower.start().wait_ready()
        yield Env(scenario, flower, app)
    finally:
        flower.stop()
        dispose(app)
        app.close()
        for _ in scenarios:  # closes the scenario: queue dropped
            pass


def _ids(body: str, kind: str = "failure") -> list[int]:
    return [int(m) for m in re.findall(rf'<tr id="{kind}-(\d+)"', body)]


def _paging(body: str, nav: str) -> str:
    match = re.search(rf'<nav [^>]*id="{nav}"[^>]*>\s*<span class="paging-label">([^<]*)</span>', body)
    assert match, f"no {nav} in the page"
    return match.group(1)


def _key() -> str:
    return f"k{uuid.uuid4().hex[:10]}"


def test_lists_page_on_the_server_with_totals(env: Env) -> None:
    key = _key()
    ids = env.failures(key, 213)
    pending = env.pending(key, 45)
    newest_first = ids[::-1]

    third = env.flower.request("GET", f"/reliability?search={key}&limit=20&page=3")
    assert third.status == 200
    assert _paging(third.body, "failed-paging") == "41-60 of 213"
    assert _ids(third.body) == newest_first[40:60]
    assert 'id="failed-count">213<' in third.body
    links = re.search(r'id="failed-paging".*?</nav>', third.body, re.S)
    assert links is not None
    hrefs = [unescape(h) for h in re.findall(r'href="([^"]+)"', links.group(0))]
    assert hrefs == [f"/reliability?search={key}&limit=20&page=2", f"/reliability?search={key}&limit=20&page=4"]

    last = env.flower.request("GET", f"/reliability?search={key}&limit=20&page=11")
    assert _paging(last.body, "failed-paging") == "201-213 of 213" and _ids(last.body) == newest_first[200:]
    assert 'disabled next"' in last.body

    waiting = env.flower.request("GET", f"/reliability?search={key}&limit=20&pending_page=3")
    assert _paging(waiting.body, "pending-paging") == "41-45 of 45"
    assert _ids(waiting.body, "pending") == pending[40:45]
    assert 'id="pending-count">45<' in waiting.body

    api = env.flower.request("GET", f"/api/reliable/failures?search={key}&limit=20&page=3").json()
    assert api["count"] == 213 and [r["id"] for r in api["failures"]] == newest_first[40:60]
    api_pending = env.flower.request("GET", f"/api/reliable/pending?search={key}&limit=20&pending_page=3").json()
    assert api_pending["count"] == 45 and [r["id"] for r in api_pending["pending"]] == pending[40:45]
    assert env.flower.request("GET", "/reliability?page=0").status == 400


def test_date_exception_and_text_filters_on_both_lists(env: Env) -> None:
    key = _key()
    old, new = env.failures(f"{key}-old", 2), env.failures(f"{key}-new", 3)
    with env.scenario.db.engine.begin() as conn:
        conn.execute(
            update(FailedTask)
            .where(FailedTask.id.in_(old))
            .values(last_failed_at=datetime(2026, 1, 10, 12, tzinfo=timezone.utc))
        )
        conn.execute(
            update(FailedTask)
            .where(FailedTask.id.in_(new))
            .values(last_failed_at=datetime(2026, 2, 10, 12, tzinfo=timezone.utc))
        )
    pending_old, pending_new = env.pending(f"{key}-old", 1), env.pending(f"{key}-new", 2)
    with env.scenario.db.engine.begin() as conn:
        written = {
            pending_old[0]: datetime(2026, 1, 10, 12, tzinfo=timezone.utc),
            **dict.fromkeys(pending_new, datetime(2026, 2, 10, 12, tzinfo=timezone.utc)),
        }
        for row_id, when in written.items():
            conn.execute(update(PendingMessage).where(PendingMessage.id == row_id).values(created_at=when))

    def shown(query: str) -> tuple[list[int], list[int]]:
        page = env.flower.request("GET", f"/reliability?search={key}&{query}")
        assert page.status == 200, page.body[:300]
        return sorted(_ids(page.body)), sorted(_ids(page.body, "pending"))

    assert shown("since=2026-02-01") == (new, pending_new)
    assert shown("until=2026-02-01") == (old, pending_old)
    assert shown("since=2026-01-01&until=2026-03-01") == (sorted(old + new), sorted(pending_old + pending_new))
    assert shown("since=24h") == ([], [])
    assert shown("exception=Declined") == (sorted(old + new), sorted(pending_old + pending_new))
    assert shown("exception=Other") == ([], sorted(pending_old + pending_new))
    assert shown("task=t.permanent&since=2026-02-01") == (new, [])  # pending rows are t.ok
    bad = env.flower.request("GET", "/reliability?since=yesterday")
    assert bad.status == 400 and "since: 'yesterday' is neither an ISO date/time" in unescape(bad.body)


def test_chart_counts_failed_rows_per_hour(env: Env) -> None:
    key = _key()
    this_hour = utcnow().replace(minute=0, second=0, microsecond=0)
    ids = env.failures(key, 6)
    times = [this_hour, this_hour, this_hour, this_hour - timedelta(hours=2), this_hour - timedelta(hours=30)]
    times.append(this_hour - timedelta(days=3))
    with env.scenario.db.engine.begin() as conn:
        for row_id, when in zip(ids, times, strict=True):
            conn.execute(update(FailedTask).where(FailedTask.id == row_id).values(last_failed_at=when))
    day = env.flower.request("GET", f"/reliability?search={key}").body
    counts = [int(c) for c in re.findall(r'class="chart-bar" data-count="(\d+)"', day)]
    assert counts == [0] * 21 + [1, 0, 3]
    assert re.search(r'id="failures-chart" data-total="4"', day)
    assert "<script" not in day[day.index('id="failures-chart"') : day.index("</figure>")]
    week = env.flower.request("GET", f"/reliability?search={key}&span=7d").body
    week_counts = [int(c) for c in re.findall(r'class="chart-bar" data-count="(\d+)"', week)]
    assert len(week_counts) == 28 and sum(week_counts) == 6 and week_counts[-1] == 4  # this hour and 2 h ago


def test_row_pages_show_everything_stored(env: Env) -> None:
    key = _key()
    (failure_id,) = env.failures(key, 1, kwargs={"note": "<b>x</b>"})
    (pending_id,) = env.pending(key, 1)
    page = env.flower.request("GET", f"/reliability/failed/{failure_id}")
    assert page.status == 200
    body = unescape(page.body)
    assert f'"{key}-0"' in body and '"note": "<b>x</b>"' in body and "&lt;b&gt;x&lt;/b&gt;" in page.body
    assert f'"routing_key": "{env.scenario.queue}"' in body and f"Traceback {key}" in body
    assert re.search(r'id="row-attempts">4<', page.body) and 'id="edit-form"' in page.body
    listed = env.flower.request("GET", f"/reliability?search={key}").body
    assert (
        f'href="/reliability/failed/{failure_id}"' in listed and f'href="/reliability/pending/{pending_id}"' in listed
    )

    pending = env.flower.request("GET", f"/reliability/pending/{pending_id}")
    assert pending.status == 200
    assert f'"{key}-p0"' in unescape(pending.body) and 'id="resend-one"' in pending.body
    missing = env.flower.request("GET", "/reliability/failed/987654321")
    assert missing.status == 404 and "no failed task with id 987654321" in unescape(missing.body)
    assert env.flower.request("GET", "/reliability/pending/987654321").status == 404


def test_replay_with_edited_arguments_checks_them_first(env: Env) -> None:
    key = _key()
    (failure_id,) = env.failures(key, 1)
    detail = f"/reliability/failed/{failure_id}"

    def replay(args: str, kwargs: str) -> Any:
        token, cookies = env.flower.form_token(detail)
        form = {"id": failure_id, "edited": "1", "args": args, "kwargs": kwargs, "_xsrf": token}
        return env.flower.request("POST", "/reliability/replay", form, cookies)

    not_json = replay("[1,", "{}")
    assert not_json.headers["location"] == detail
    assert "edited args are not JSON" in env.shown(not_json)
    too_many = replay('["a", "b"]', "{}")
    assert too_many.headers["location"] == detail
    shown = env.shown(too_many)
    assert "Not replayed: the edited arguments were refused." in shown
    assert (
        f"failed task {failure_id}: the edited arguments args=['a', 'b'] kwargs={{}} do not fit the signature "
        "of task 't.permanent', permanent(key)"
    ) in shown
    not_a_list = replay('{"a": 1}', "{}")
    assert "args must be a list" in env.shown(not_a_list)
    assert env.status(FailedTask, failure_id) == "failed" and env.queued() == []

    done = replay(f'["{key}-edited"]', "{}")
    assert f"#{failure_id} t.permanent replayed as" in env.shown(done)
    assert env.status(FailedTask, failure_id) == "replayed"
    assert [(args, kwargs) for _, args, kwargs in env.queued()] == [([f"{key}-edited"], {})]
    redis.Redis.from_url(env.scenario.broker_url).delete(env.scenario.queue)


def test_resend_and_drop_pending_rows(env: Env) -> None:
    key = _key()
    one, two, three, held = env.pending(key, 4)
    with env.scenario.db.engine.begin() as conn:
        values = {"status": "claimed", "lease_expires_at": utcnow() + timedelta(hours=1), "claim_token": "other"}
        conn.execute(update(PendingMessage).where(PendingMessage.id == held).values(**values))

    resent = env.flower.post("/reliability/pending/resend", {"id": [one]})
    assert "Resent 1 pending message(s)." in env.shown(resent)
    assert env.status(PendingMessage, one) == "sent"
    assert [task_id for task_id, _, _ in env.queued()] == [f"{key}-p0"]
    redis.Redis.from_url(env.scenario.broker_url).delete(env.scenario.queue)

    dropped = env.flower.post("/reliability/pending/drop", {"id": [two, three, held]})
    shown = env.shown(dropped)
    assert "Dropped 2 pending message(s)." in shown and "kept 1 held by a relay" in shown
    assert (env.status(PendingMessage, two), env.status(PendingMessage, three)) == (None, None)
    assert env.status(PendingMessage, held) == "claimed"
    unknown = env.flower.post("/reliability/pending/drop", {"id": [held, 987654321]})
    assert unknown.status == 404 and "no pending message with id 987654321" in unescape(unknown.body)
    assert env.status(PendingMessage, held) == "claimed"


def test_purging_an_unknown_id_is_an_error_naming_it(env: Env) -> None:
    key = _key()
    (failure_id,) = env.failures(key, 1)
    page = env.flower.post("/reliability/purge", {"id": [failure_id, 987654321]})
    assert page.status == 404 and "no failed task with id 987654321; nothing was changed" in unescape(page.body)
    api = env.flower.request("POST", "/api/reliable/purge", {"id": [987654321, 987654322]})
    assert (api.status, api.body) == (404, "no failed task with ids 987654321, 987654322; nothing was changed")
    for header in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://evil.example"}):
        cross = env.flower.request("POST", "/api/reliable/purge", {"id": [failure_id]}, headers=header)
        assert cross.status == 403, (header, cross.status)
    assert env.status(FailedTask, failure_id) == "failed"
    purged = env.flower.request("POST", "/api/reliable/purge", {"id": [failure_id]})
    assert purged.status == 200 and purged.json() == {"deleted": 1, "kept_replaying": 0}
    assert env.status(FailedTask, failure_id) is None


def test_hints_name_the_app_flower_runs(env: Env) -> None:
    key = _key()
    (failure_id,) = env.failures(key, 1)
    page = env.flower.request("GET", "/reliability").body
    assert '<code id="pending-hint">celery -A tests.apps.workerapp reliable pending</code>' in page
    detail = env.flower.request("GET", f"/reliability/failed/{failure_id}").body
    assert f"celery -A tests.apps.workerapp reliable failed replay {failure_id} --args" in unescape(detail)
    assert "celery -A proj" not in page and "celery -A proj" not in detail


def _browser(tmp_path: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,2400",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    return driver


def _click(driver: Any, element: Any) -> None:
    """Scroll ``element`` to the middle of the window (Flower's bars cover the edges), then click it."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()


def test_chromium_selects_rows_confirms_with_the_count_and_pages(env: Env, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    key = _key()
    ids = env.failures(key, 25)
    pending = env.pending(key, 2)
    driver = _browser(tmp_path)
    wait = WebDriverWait(driver, 20)
    try:
        driver.get(f"http://127.0.0.1:{env.flower.port}/reliability?search={key}&limit=10")
        assert driver.find_element(By.CSS_SELECTOR, "#failed-paging .paging-label").text == "1-10 of 25"
        chosen = ids[::-1][:3]
        for row_id in chosen:
            _click(driver, driver.find_element(By.CSS_SELECTOR, f"#failure-{row_id} input.row-select"))
        _click(driver, driver.find_element(By.ID, "replay-selected"))
        alert = wait.until(expected_conditions.alert_is_present())
        assert alert.text == "Replay 3 failed tasks?"
        alert.dismiss()
        assert [env.status(FailedTask, i) for i in chosen] == ["failed"] * 3
        _click(driver, driver.find_element(By.ID, "replay-selected"))
        wait.until(expected_conditions.alert_is_present()).accept()
        notice = wait.until(expected_conditions.presence_of_element_located((By.ID, "reliable-notice")))
        assert "Replayed 3 row(s)." in notice.text
        assert [env.status(FailedTask, i) for i in chosen] == ["replayed"] * 3
        assert sorted(task_id for task_id, _, _ in env.queued()) == [] or len(env.queued()) == 3

        _click(driver, driver.find_element(By.ID, "select-all-pending"))
        boxes = driver.find_elements(By.CSS_SELECTOR, 'input.row-select[form="bulk-pending"]')
        assert len(boxes) == 2 and all(box.is_selected() for box in boxes)
        _click(driver, driver.find_element(By.ID, "drop-selected"))
        alert = wait.until(expected_conditions.alert_is_present())
        assert alert.text == "Drop 2 pending messages? They will not be sent."
        alert.accept()
        notice = wait.until(expected_conditions.presence_of_element_located((By.ID, "reliable-notice")))
        assert "Dropped 2 pending message(s)." in notice.text
        assert [env.status(PendingMessage, i) for i in pending] == [None, None]

        remaining = [i for i in ids[::-1] if i not in chosen]  # the list shows failed rows: 22 of them now
        assert driver.find_element(By.CSS_SELECTOR, "#failed-paging .paging-label").text == "1-10 of 22"
        _click(driver, driver.find_element(By.CSS_SELECTOR, "#failed-paging a.next"))
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#failed-paging .paging-label").text == "11-20 of 22")
        shown = [
            int(e.get_attribute("id").split("-")[1])
            for e in driver.find_elements(By.CSS_SELECTOR, "#failed-table tbody tr[id]")
        ]
        assert shown == remaining[10:20]
        _click(driver, driver.find_element(By.ID, "select-all-failed"))
        _click(driver, driver.find_element(By.ID, "purge-selected"))
        alert = wait.until(expected_conditions.alert_is_present())
        assert alert.text == "Purge 10 failed tasks? This cannot be undone."
        alert.dismiss()
        assert all(env.status(FailedTask, i) == "failed" for i in shown)
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium", ignore_errors=True)
        redis.Redis.from_url(env.scenario.broker_url).delete(env.scenario.queue)


def test_chromium_replays_with_edited_arguments(env: Env, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    key = _key()
    (failure_id,) = env.failures(key, 1)
    driver = _browser(tmp_path)
    wait = WebDriverWait(driver, 20)
    try:
        driver.get(f"http://127.0.0.1:{env.flower.port}/reliability/failed/{failure_id}")
        args = driver.find_element(By.ID, "edit-args")
        args.clear()
        args.send_keys('["a", "too", "many"]')
        _click(driver, driver.find_element(By.ID, "replay-edited"))
        alert = wait.until(expected_conditions.alert_is_present())
        assert alert.text == f"Replay failed task #{failure_id} with these arguments?"
        alert.accept()
        notice = wait.until(expected_conditions.presence_of_element_located((By.ID, "reliable-notice")))
        assert "Not replayed: the edited arguments were refused." in notice.text
        assert "do not fit the signature of task 't.permanent'" in notice.text
        assert driver.current_url.endswith(f"/reliability/failed/{failure_id}")
        assert env.status(FailedTask, failure_id) == "failed" and env.queued() == []

        args = driver.find_element(By.ID, "edit-args")
        args.clear()
        args.send_keys(f'["{key}-fixed"]')
        _click(driver, driver.find_element(By.ID, "replay-edited"))
        wait.until(expected_conditions.alert_is_present()).accept()
        notice = wait.until(expected_conditions.presence_of_element_located((By.ID, "reliable-notice")))
        assert f"#{failure_id} t.permanent replayed as" in notice.text and "with edited arguments" in notice.text
        assert [(a, k) for _, a, k in env.queued()] == [([f"{key}-fixed"], {})]
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium", ignore_errors=True)
        redis.Redis.from_url(env.scenario.broker_url).delete(env.scenario.queue)
