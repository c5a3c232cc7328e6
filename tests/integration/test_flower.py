"""The Reliability page in a real Flower process, over a real worker, Redis broker and SQLite store.

One worker and two Flower processes (open, and with --basic-auth) serve every test here; each
test uses its own task keys and checks exact counts of its own rows.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from celery_reliable.store.pending import PendingValues, add_pending
from tests.conftest import Scenario, make_scenario
from tests.harness import PYTHON, ROOT, free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.redis]

USER, PASSWORD = "ops", "s3cret-pass"
#: Celery config module that sets reliable_flower_unauthenticated_actions = True.
ACTIONS_CONF = "tests.apps.flower_actions_conf"
SCREENSHOT = ROOT / "docs" / "img" / "flower-reliability.png"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    cookies: dict[str, str]
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FlowerProcess:
    """``celery -A tests.apps.workerapp reliable flower`` on a free port; stopped by PID."""

    env: dict[str, str]
    log: Path
    args: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FlowerProcess:
        self.port = free_port()
        cmd = [
            PYTHON, "-m", "celery", "-A", "tests.apps.workerapp", "reliable", "flower",
            "--address=127.0.0.1", f"--port={self.port}", "--reliable_metrics_cache=0", *self.args,
        ]  # fmt: skip
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"flower exited: {self.log.read_text(errors='replace')[-3000:]}")
            return self.request("GET", "/healthcheck").status == 200

        wait_for(ready, timeout, what=f"flower on {self.port}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def request(
        self,
        method: str,
        path: str,
        form: dict[str, Any] | None = None,
        cookies: dict[str, str] | None = None,
        auth: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = dict(headers or {})
        body = None
        if form is not None:
            body = urlencode(form, doseq=True)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        if cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        if auth:
            sent["Authorization"] = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        try:
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            raw = resp.read().decode(errors="replace")
            got = {k.lower(): v for k, v in resp.getheaders()}
            jar: dict[str, str] = {}
            for key, value in resp.getheaders():
                if key.lower() == "set-cookie":
                    name, _, rest = value.partition("=")
                    jar[name] = rest.split(";", 1)[0]
            return Response(resp.status, got, jar, raw)
        finally:
            conn.close()

    def form_token(self, path: str = "/reliability", auth: bool = False) -> tuple[str, dict[str, str]]:
        """The page's form token and the cookie it belongs to."""
        page = self.request("GET", path, auth=auth)
        assert page.status == 200, page.body[:500]
        match = re.search(r'name="_xsrf" value="([^"]+)"', page.body)
        assert match, "no _xsrf field in the page"
        return unescape(match.group(1)), {"_xsrf": page.cookies["_xsrf"]}

    def post(self, path: str, form: dict[str, Any], auth: bool = False) -> Response:
        token, cookies = self.form_token(auth=auth)
        return self.request("POST", path, {**form, "_xsrf": token}, cookies, auth=auth)


@dataclass
class Env:
    scenario: Scenario
    flower: FlowerProcess
    secured: FlowerProcess
    app: Celery

    def failed(self, task_id: str) -> dict[str, Any] | None:
        with self.scenario.db.engine.connect() as conn:
            row = (
                conn.execute(text("SELECT * FROM celery_reliable_failed_task WHERE task_id = :t"), {"t": task_id})
                .mappings()
                .first()
            )
            return dict(row) if row else None

    def wait_failed(self, task_id: str, timeout: float = 45) -> dict[str, Any]:
        row: dict[str, Any] = wait_for(lambda: self.failed(task_id), timeout, what=f"failed row of {task_id}")
        return row

    def fail(self, task: str, key: str, *args: Any) -> dict[str, Any]:
        safe = re.sub(r"[^\w-]", "", key)[:24]
        task_id = f"{safe}-{uuid.uuid4().hex[:6]}"
        self.scenario.send(task, key, *args, task_id=task_id)
        return self.wait_failed(task_id)

    def task_info(self, task_id: str) -> dict[str, Any] | None:
        resp = self.flower.request("GET", f"/api/task/info/{task_id}")
        return resp.json() if resp.status == 200 else None


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("flower")
    scenarios = make_scenario(request, redis_url, f"sqlite:///{tmp / 'reliable.sqlite3'}", tmp)
    scenario = next(scenarios)
    # Without a login, replay and purge need the operator's opt-in (test_flower_security.py checks the refusal).
    open_env = scenario.env(FLOWER_UNAUTHENTICATED_API="true", CELERY_CONFIG_MODULE=ACTIONS_CONF)
    flower = FlowerProcess(open_env, tmp / "flower.log").start()
    secured = FlowerProcess(scenario.env(), tmp / "secured.log", [f"--basic-auth={USER}:{PASSWORD}"]).start()
    app = Celery("flower-test", broker=scenario.broker_url, set_as_current=False)
    app.conf.reliable_database_url = scenario.db.url
    try:
        scenario.worker()
        flower.wait_ready()
        secured.wait_ready()
        env = Env(scenario, flower, secured, app)
        # Flower receives the worker's events: a task it has seen succeed proves it. Events sent
        # before Flower subscribed are gone (Redis pub/sub), so a new probe goes every few seconds.
        probes: list[str] = []

        def flower_saw_one() -> bool:
            if not probes or len(probes) * 5 < time.monotonic() - started:
                probes.append(scenario.send("t.ok", f"probe-{len(probes)}"))
            return any((env.task_info(probe) or {}).get("state") == "SUCCESS" for probe in probes)

        started = time.monotonic()
        wait_for(flower_saw_one, 60, interval=0.5, what="flower sees events")
        yield env
    finally:
        flower.stop()
        secured.stop()
        app.close()
        for _ in scenarios:  # closes the scenario: worker stopped, queue dropped
            pass


def _row_ids(body: str, kind: str = "failure") -> set[int]:
    return {int(m) for m in re.findall(rf'<tr id="{kind}-(\d+)"', body)}


def _events_total(flower: FlowerProcess, event_type: str, *tasks: str) -> float:
    body = flower.request("GET", "/metrics").body
    total = 0.0
    for family in text_string_to_metric_families(body):
        if family.name == "flower_events":
            for sample in family.samples:
                if (
                    sample.name == "flower_events_total"
                    and sample.labels.get("type") == event_type
                    and (sample.labels.get("task") in tasks)
                ):
                    total += sample.value
    return total


def test_page_lists_failed_and_pending_rows_with_filters(env: Env) -> None:
    permanent = env.fail("t.permanent", "list-a")
    keyerror = env.fail("t.custom_permanent", "list-b")
    values = PendingValues(f"pend-{uuid.uuid4().hex[:6]}", "t.ok", ["list-p"], {}, {}, None, None)
    pending_id = add_pending(env.app, [values], source="publish_fallback", delay=3600)[0]

    page = env.flower.request("GET", "/reliability")
    assert page.status == 200
    assert {permanent["id"], keyerror["id"]} <= _row_ids(page.body)
    assert pending_id in _row_ids(page.body, "pending")
    assert 'href="/reliability"' in page.body and "data-reliable-nav" in page.body  # nav link
    flower_tasks_page = env.flower.request("GET", "/tasks")
    assert flower_tasks_page.status == 200 and 'data-reliable-nav="1">Reliability</a>' in flower_tasks_page.body

    only_keyerror = env.flower.request("GET", "/reliability?task=t.custom_permanent")
    assert keyerror["id"] in _row_ids(only_keyerror.body) and permanent["id"] not in _row_ids(only_keyerror.body)
    by_exc = env.flower.request("GET", "/reliability?exception=celery_reliable.exceptions.PermanentError")
    assert permanent["id"] in _row_ids(by_exc.body) and keyerror["id"] not in _row_ids(by_exc.body)
    dead_only = env.flower.request("GET", "/reliability?pending_status=dead")
    assert pending_id not in _row_ids(dead_only.body, "pending")
    assert env.flower.request("GET", "/reliability?status=bogus").status == 400

    api = env.flower.request("GET", "/api/reliable/failures?task=t.custom_permanent&status=failed").json()
    assert [r["id"] for r in api["failures"]] == [keyerror["id"]] and api["count"] == 1
    assert api["failures"][0]["exc_type"] == "KeyError" and api["failures"][0]["args"] == ["list-b"]
    summary = env.flower.request("GET", "/api/reliable/summary").json()
    assert summary["failed_by_task"]["t.custom_permanent"] >= 1 and summary["pending"]["pending"] >= 1
    pending = env.flower.request("GET", "/api/reliable/pending?pending_status=pending").json()["pending"]
    assert [r["id"] for r in pending if r["id"] == pending_id] == [pending_id]


def test_flower_api_shows_failure_retry_and_replay(env: Env) -> None:
    # t.policy fails in no other test here, so its event count moves only through this one.
    stored_before = _events_total(env.flower, "task-reliable-failure-stored", "t.policy")
    row = env.fail("t.policy", "states-a")
    retried = env.scenario.send("t.flaky", "states-b", 1, task_id=f"states-b-{uuid.uuid4().hex[:6]}")

    info = wait_for(lambda: env.task_info(row["task_id"]), 30, what="flower knows the failed task")
    wait_for(lambda: _events_total(env.flower, "task-reliable-failure-stored", "t.policy") > stored_before, 30)
    info = env.task_info(row["task_id"])
    assert info is not None and (info["state"], info["retries"]) == ("FAILURE", 1)  # retried once, then stored
    assert row["attempts"] == 2
    assert _events_total(env.flower, "task-reliable-failure-stored", "t.policy") == stored_before + 1
    wait_for(lambda: (env.task_info(retried) or {}).get("state") == "SUCCESS", 30, what="retried task succeeded")
    assert (env.task_info(retried) or {}).get("retries") == 1
    assert _events_total(env.flower, "task-retried", "t.flaky") >= 1
    listed = env.flower.request("GET", "/api/tasks?state=FAILURE").json()
    assert row["task_id"] in listed

    # Flower names a replay event's task only if the new delivery's task-received came first.
    replayed_before = _events_total(env.flower, "task-reliable-replayed", "t.policy", "")
    resp = env.flower.post("/reliability/replay", {"id": row["id"]})
    assert resp.status == 303, resp.body[:300]
    new_id = wait_for(lambda: (env.failed(row["task_id"]) or {}).get("replay_task_id"), 10, what="replay id")
    # The replayed delivery fails again (the task always does): Flower shows it FAILED, and counts the replay.
    wait_for(lambda: (env.task_info(new_id) or {}).get("state") == "FAILURE", 30, what="replayed task in flower")
    wait_for(lambda: _events_total(env.flower, "task-reliable-replayed", "t.policy", "") == replayed_before + 1, 30)


def test_flower_shows_a_relayed_pending_message(env: Env) -> None:
    from celery_reliable.send.relay import relay_once

    key = f"relayed-{uuid.uuid4().hex[:6]}"
    task_id = f"{key}-id"
    values = PendingValues(task_id, "t.ok", [key], {}, {"queue": env.scenario.queue}, None, None)
    row_id = add_pending(env.app, [values], source="publish_fallback")[0]
    stats = relay_once(env.app, max_batches=5)
    assert stats.sent >= 1
    wait_for(lambda: env.scenario.db.counts().effect(key) == 1, 30, what="relayed message ran")
    wait_for(lambda: (env.task_info(task_id) or {}).get("state") == "SUCCESS", 30, what="flower shows the resend")
    page = env.flower.request("GET", "/reliability?pending_status=sent")
    assert row_id in _row_ids(page.body, "pending")


def test_replay_button_reruns_the_task_and_purge_deletes(env: Env) -> None:
    key = f"replay-{uuid.uuid4().hex[:6]}"
    row = env.fail("t.flaky", key, 4)  # 4 failures: more than the 3 retries, then it works
    assert row["attempts"] == 4 and env.scenario.db.counts().effect(key) == 0
    gone = env.fail("t.permanent", "purge-me")

    resp = env.flower.post("/reliability/replay", {"id": row["id"], "status": "failed"})
    assert resp.status == 303 and resp.headers["location"].startswith("/reliability")
    shown = env.flower.request("GET", resp.headers["location"], cookies=resp.cookies)
    assert f"#{row['id']} t.flaky replayed as" in unescape(shown.body)
    wait_for(lambda: env.scenario.db.counts().effect(key) == 1, 30, what="replayed task ran")
    after = env.failed(row["task_id"])
    assert after is not None and after["status"] == "replayed" and after["replay_count"] == 1

    again = env.flower.post("/reliability/replay", {"id": row["id"]})
    notice = unescape(env.flower.request("GET", again.headers["location"], cookies=again.cookies).body)
    assert "already replayed" in notice
    time.sleep(1)
    assert env.scenario.db.counts().effect(key) == 1

    purged = env.flower.post("/reliability/purge", {"id": gone["id"]})
    assert purged.status == 303 and env.failed(gone["task_id"]) is None
    assert env.failed(row["task_id"]) is not None


def test_actions_need_the_form_token(env: Env) -> None:
    row = env.fail("t.permanent", "xsrf")
    token, cookies = env.flower.form_token()
    no_token = env.flower.request("POST", "/reliability/replay", {"id": row["id"]}, cookies)
    wrong_token = env.flower.request("POST", "/reliability/purge", {"id": row["id"], "_xsrf": "2|00|00|1"}, cookies)
    no_cookie = env.flower.request("POST", "/reliability/purge", {"id": row["id"], "_xsrf": token})
    assert (no_token.status, wrong_token.status, no_cookie.status) == (403, 403, 403)
    after = env.failed(row["task_id"])
    assert after is not None and after["status"] == "failed" and after["replay_task_id"] is None
    assert env.scenario.db.counts().attempt("xsrf") == 1


def test_basic_auth_protects_rows_and_actions(env: Env) -> None:
    row = env.fail("t.permanent", "auth")
    flower = env.secured
    assert flower.request("GET", "/reliability").status == 401
    assert flower.request("GET", "/api/reliable/failures").status == 401
    assert flower.request("GET", "/api/reliable/summary").status == 401
    token, cookies = flower.form_token(auth=True)  # a valid form token, then no credentials
    refused = flower.request("POST", "/reliability/replay", {"id": row["id"], "_xsrf": token}, cookies)
    refused_purge = flower.request("POST", "/reliability/purge", {"id": row["id"], "_xsrf": token}, cookies)
    assert (refused.status, refused_purge.status) == (401, 401)
    cross_site = flower.request(
        "POST", "/reliability/purge", {"id": row["id"], "_xsrf": token}, cookies, auth=True,
        headers={"Sec-Fetch-Site": "cross-site"},
    )  # fmt: skip
    assert cross_site.status == 403
    time.sleep(1)
    after = env.failed(row["task_id"])
    assert after is not None and after["status"] == "failed"
    assert env.scenario.db.counts().attempt("auth") == 1

    page = flower.request("GET", "/reliability?task=t.permanent", auth=True)
    assert page.status == 200 and row["id"] in _row_ids(page.body)
    api = flower.request("GET", "/api/reliable/failures?task=t.permanent", auth=True).json()
    assert row["id"] in [r["id"] for r in api["failures"]]
    purged = flower.post("/reliability/purge", {"id": row["id"]}, auth=True)
    assert purged.status == 303 and env.failed(row["task_id"]) is None


def test_row_content_is_escaped(env: Env) -> None:
    markup = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    row = env.fail("t.permanent", markup)
    page = env.flower.request("GET", "/reliability?task=t.permanent&limit=1000").body
    assert row["id"] in _row_ids(page)
    assert "<script>alert(2)" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page  # in the arguments and the exception message


def test_metrics_on_flower_match_the_tables(env: Env) -> None:
    env.fail("t.custom_permanent", "metrics")

    def db_counts() -> tuple[dict[str, int], dict[str, int], dict[str, int], dict[str, int]]:
        with env.scenario.db.engine.connect() as conn:
            by_task = dict(conn.execute(text(
                "SELECT task_name, COUNT(*) FROM celery_reliable_failed_task WHERE status='failed' GROUP BY task_name"
            )).all())  # fmt: skip
            by_exc = dict(conn.execute(text(
                "SELECT exc_type, COUNT(*) FROM celery_reliable_failed_task WHERE status='failed' GROUP BY exc_type"
            )).all())  # fmt: skip
            by_status = dict(conn.execute(text(
                "SELECT status, COUNT(*) FROM celery_reliable_failed_task GROUP BY status"
            )).all())  # fmt: skip
            pending = dict(conn.execute(text(
                "SELECT status, COUNT(*) FROM celery_reliable_pending_message GROUP BY status"
            )).all())  # fmt: skip
        return by_task, by_exc, by_status, pending

    def scrape() -> dict[str, dict[str, float]]:
        found: dict[str, dict[str, float]] = {}
        for family in text_string_to_metric_families(env.flower.request("GET", "/metrics").body):
            for sample in family.samples:
                label = next(iter(sample.labels.values()), "")
                found.setdefault(sample.name, {})[label] = sample.value
        return found

    before = db_counts()
    metrics = scrape()
    assert db_counts() == before, "the tables changed during the scrape"
    by_task, by_exc, by_status, pending = before
    assert metrics["celery_reliable_up"] == {"": 1.0}
    assert metrics["celery_reliable_failed_tasks"] == {k: float(v) for k, v in by_task.items()}
    assert metrics["celery_reliable_failed_tasks"]["t.custom_permanent"] >= 1
    assert metrics["celery_reliable_failed_tasks_by_exception"] == {k: float(v) for k, v in by_exc.items()}
    assert {k: v for k, v in metrics["celery_reliable_failed_task_rows"].items() if v} == {
        k: float(v) for k, v in by_status.items()
    }
    assert {k: v for k, v in metrics["celery_reliable_pending_messages"].items() if v} == {
        k: float(v) for k, v in pending.items()
    }
    assert metrics["celery_reliable_replayed_tasks"][""] == float(by_status.get("replayed", 0))
    if pending.get("pending"):
        assert metrics["celery_reliable_oldest_pending_age_seconds"][""] > 0


def test_chromium_clicks_replay(env: Env, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    key = f"click-{uuid.uuid4().hex[:6]}"
    row = env.fail("t.flaky", key, 4)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,1000",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.get(f"http://127.0.0.1:{env.flower.port}/reliability")
        button = WebDriverWait(driver, 20).until(
            expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, f"#failure-{row['id']} button.replay"))
        )
        if os.environ.get("RELIABLE_TEST_SCREENSHOT"):
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(SCREENSHOT))
        button.click()
        notice = WebDriverWait(driver, 20).until(
            expected_conditions.presence_of_element_located((By.ID, "reliable-notice"))
        )
        assert f"#{row['id']} t.flaky replayed as" in notice.text
        wait_for(lambda: env.scenario.db.counts().effect(key) == 1, 30, what="task replayed from the browser ran")
        assert (env.failed(row["task_id"]) or {}).get("status") == "replayed"
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium", ignore_errors=True)


def test_nav_link_goes_into_the_navigation_list_only() -> None:
    from celery_reliable.ops.flower.nav import NAV_LIST, add_link

    page = b"<body>" + NAV_LIST + b"<li>Workers</li></ul><ul><li>Theme</li></ul></body>"
    linked = add_link(page, "/p/reliability", active=False)
    assert linked.count(b"Reliability</a></li></ul>") == 1
    assert linked.index(b"Reliability") < linked.index(b"Theme")
    assert b'href="/p/reliability"' in linked and b"active" not in linked
    assert b"aria-current" in add_link(page, "/p/reliability", active=True)
    other = b'<html><ul class="x"><li>a</li></ul></html>'
    assert add_link(other, "/reliability", active=False) is other


def test_only_supported_flower_versions_are_accepted() -> None:
    from celery_reliable.exceptions import ImproperlyConfigured
    from celery_reliable.ops.flower import check_version

    check_version("2.2.0")
    check_version("2.2.7")
    for version in ("2.1.9", "2.3.0", "1.2.0", "dev"):
        with pytest.raises(ImproperlyConfigured, match=r"Flower >=2\.2,<2\.3, found"):
            check_version(version)
