"""Who may change rows through Flower, and what Flower's answers give away: real Flower processes.

Four Flowers over one Redis queue and one SQLite store: without authentication (the actions are
refused), without authentication but with ``reliable_flower_unauthenticated_actions`` (allowed),
with ``--basic-auth`` (allowed with credentials), and one whose database does not answer (a 503
that names no host, user or database). Rows are written straight into the table; a replay only
puts a message on the test's own queue (no worker needed), which is counted and then dropped.
"""

from __future__ import annotations

import base64
import http.client
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from celery_reliable.store.models import FailedTask
from tests.conftest import Scenario, make_scenario
from tests.harness import wait_for
from tests.integration.test_flower import ACTIONS_CONF, PASSWORD, USER, FlowerProcess

pytestmark = [pytest.mark.integration, pytest.mark.redis]

#: The database of the broken Flower: every part of it must stay out of the HTTP answers.
SECRET_USER, SECRET_PASSWORD, SECRET_DB = "reliable_secret_user", "S3cret-pw-71", "reliable_secret_db"
DOWN_URL = f"postgresql+psycopg://{SECRET_USER}:{SECRET_PASSWORD}@127.0.0.1:1/{SECRET_DB}"


@dataclass
class Env:
    scenario: Scenario
    open: FlowerProcess
    opted_in: FlowerProcess
    secured: FlowerProcess
    down: FlowerProcess

    @property
    def engine(self) -> Engine:
        return self.scenario.db.engine

    def add_failed(self, count: int = 1, task: str = "t.ok", **values: Any) -> list[int]:
        """``count`` failed rows of ``task`` (sent to the test queue if replayed); their ids."""
        key = uuid.uuid4().hex[:8]
        rows = [
            {"task_id": f"sec-{key}-{i}", "task_name": task, "reason": "exception", "args": [f"sec-{key}-{i}"],
             "kwargs": {}, "options": {"routing_key": self.scenario.queue}, "exc_type": "ValueError",
             "exc_message": "boom", **values}
            for i in range(count)
        ]  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(insert(FailedTask), rows)
            found = conn.execute(select(FailedTask.id).where(FailedTask.task_id.like(f"sec-{key}-%")))
            return sorted(int(i) for i in found.scalars())

    def row(self, failure_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            found = conn.execute(select(FailedTask.__table__).where(FailedTask.id == failure_id)).mappings().first()
            return dict(found) if found else None


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("flower-security")
    scenarios = make_scenario(request, redis_url, f"sqlite:///{tmp / 'reliable.sqlite3'}", tmp)
    scenario = next(scenarios)
    api = {"FLOWER_UNAUTHENTICATED_API": "true"}
    flowers = [
        FlowerProcess(scenario.env(**api), tmp / "open.log"),
        FlowerProcess(scenario.env(**api, CELERY_CONFIG_MODULE=ACTIONS_CONF), tmp / "opted-in.log"),
        FlowerProcess(scenario.env(), tmp / "secured.log", [f"--basic-auth={USER}:{PASSWORD}"]),
        FlowerProcess(scenario.env(**api, RELIABLE_TEST_DB=DOWN_URL), tmp / "down.log"),
    ]
    try:
        for flower in flowers:
            flower.start()
        for flower in flowers:
            flower.wait_ready()
        yield Env(scenario, *flowers)
    finally:
        for flower in flowers:
            flower.stop()
        for _ in scenarios:  # closes the scenario: queue dropped
            pass


def raw_get(flower: FlowerProcess, path: str, cookie: str = "", auth: bool = False) -> tuple[int, Any, str]:
    """(status, every header with repeats, body) of a GET, for checking Set-Cookie attributes."""
    conn = http.client.HTTPConnection("127.0.0.1", flower.port, timeout=30)
    headers = {"Cookie": cookie} if cookie else {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read().decode(errors="replace")
    finally:
        conn.close()


def _queued(env: Env) -> int:
    return env.scenario.depth()[0]


def post_with_cookie_token(flower: FlowerProcess, path: str, form: dict[str, Any]) -> Any:
    """A POST with a valid form token taken from the cookie (a page without forms has no token field)."""
    page = flower.request("GET", "/reliability")
    token = page.cookies["_xsrf"]
    return flower.request("POST", path, {**form, "_xsrf": token}, {"_xsrf": token})


def test_actions_are_refused_when_flower_runs_without_authentication(env: Env) -> None:
    one, other = env.add_failed(2)
    before = _queued(env)
    page = env.open.request("GET", "/reliability")
    assert page.status == 200
    assert "Flower runs without authentication" in unescape(page.body)
    assert 'class="btn btn-sm btn-primary replay"' not in page.body and 'id="replay-all"' not in page.body

    attempts = {
        "replay one": ("/reliability/replay", {"id": one}),
        "replay many": ("/reliability/replay", {"id": [one, other]}),
        "replay all": ("/reliability/replay", {"all": "1", "status": "failed"}),
        "purge one": ("/reliability/purge", {"id": one}),
        "purge all": ("/reliability/purge", {"all": "1", "status": ""}),
        "replay edited": ("/reliability/replay", {"id": one, "edited": "1", "args": '["x"]', "kwargs": "{}"}),
        "resend pending": ("/reliability/pending/resend", {"id": one}),
        "drop pending": ("/reliability/pending/drop", {"id": [one, other]}),
    }
    for what, (path, form) in attempts.items():
        refused = post_with_cookie_token(env.open, path, form)
        assert refused.status == 403, (what, refused.status, refused.body[:300])
        text = unescape(refused.body)
        assert "Replay and purge are refused: Flower runs without authentication" in text, what
        assert "--basic-auth or --auth" in text and "reliable_flower_unauthenticated_actions = True" in text

    for failure_id in (one, other):
        row = env.row(failure_id)
        assert row is not None and (row["status"], row["replay_task_id"], row["replay_count"]) == ("failed", None, 0)
    assert _queued(env) == before  # nothing was sent


def test_actions_work_with_basic_auth_or_the_explicit_opt_in(env: Env) -> None:
    by_login, by_opt_in, purged = env.add_failed(3)
    before = _queued(env)

    no_login = env.secured.request("POST", "/reliability/replay", {"id": by_login})
    assert no_login.status in (401, 403)
    replayed = env.secured.post("/reliability/replay", {"id": by_login}, auth=True)
    assert replayed.status == 303, replayed.body[:300]
    opted_in = env.opted_in.post("/reliability/replay", {"id": by_opt_in})
    assert opted_in.status == 303, opted_in.body[:300]
    gone = env.opted_in.post("/reliability/purge", {"id": purged})
    assert gone.status == 303

    for failure_id in (by_login, by_opt_in):
        row = env.row(failure_id)
        assert row is not None and (row["status"], row["replay_count"]) == ("replayed", 1)
    assert env.row(purged) is None
    wait_for(lambda: _queued(env) == before + 2, 10, what="the two replays in the queue")


def test_page_headers_forbid_framing_and_foreign_scripts(env: Env) -> None:
    status, headers, body = raw_get(env.opted_in, "/reliability")
    assert status == 200
    assert headers["X-Frame-Options"] == "DENY"
    csp = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp and "base-uri 'none'" in csp
    nonce = re.search(r"script-src 'self' 'nonce-([\w-]+)'", csp)
    assert nonce and f'<script nonce="{nonce.group(1)}">' in body  # the one inline script runs, no other
    assert "onclick=" not in body  # inline handlers would be blocked by the policy

    xsrf = [c for c in headers.get_all("Set-Cookie") if c.startswith("_xsrf=")]
    assert len(xsrf) == 1 and "SameSite=Strict" in xsrf[0]
    # A form-token cookie first set by one of Flower's own pages is sent again, same-site only.
    _status, flower_headers, _ = raw_get(env.opted_in, "/tasks")
    from_flower = next(c for c in flower_headers.get_all("Set-Cookie") if c.startswith("_xsrf="))
    assert "samesite" not in from_flower.lower()
    cookie = from_flower.split(";", 1)[0]
    _status, again, _ = raw_get(env.opted_in, "/reliability", cookie=cookie)
    reissued = [c for c in again.get_all("Set-Cookie") if c.startswith("_xsrf=")]
    assert len(reissued) == 1 and reissued[0].startswith(f"{cookie};") and "SameSite=Strict" in reissued[0]


def test_notice_cookie_stays_under_4_kb(env: Env) -> None:
    # 20 rows whose (unregistered) task names fill the column: each replay error quotes the name.
    ids = env.add_failed(20, task="unregistered." + "x" * 240)
    resp = env.opted_in.post("/reliability/replay", {"id": ids})
    assert resp.status == 303, resp.body[:300]
    notice = resp.cookies["reliable_notice"]
    assert len(f"reliable_notice={notice}") < 4096
    shown = unescape(env.opted_in.request("GET", resp.headers["location"], cookies=resp.cookies).body)
    assert "Replayed 0 row(s)." in shown and "is not registered" in shown
    assert re.search(r"… and \d+ more", shown)
    assert all((env.row(i) or {}).get("status") == "failed" for i in ids)


def test_store_errors_name_no_host_user_or_database(env: Env) -> None:
    answers = [
        env.down.request("GET", "/reliability"),
        env.down.request("GET", "/api/reliable/summary"),
        env.down.request("GET", "/api/reliable/failures"),
    ]
    for answer in answers:
        assert answer.status == 503, answer.body[:300]
        assert "celery_reliable store cannot be read" in answer.body
        for secret in (SECRET_USER, SECRET_PASSWORD, SECRET_DB, "127.0.0.1", "postgresql", ":1/"):
            assert secret not in answer.body, (secret, answer.body[:300])
    # The operator finds the reason in Flower's log, with the password masked.
    log = wait_for(lambda: env.down.log.read_text(errors="replace"), 5, what="flower log")
    assert f"{SECRET_USER}:**@127.0.0.1:1/{SECRET_DB} is not reachable" in log
    assert SECRET_PASSWORD not in log


def test_chromium_confirms_a_purge_under_the_content_security_policy(env: Env, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    (row,) = env.add_failed(1)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1400,1000",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.get(f"http://127.0.0.1:{env.opted_in.port}/reliability?task=t.ok&limit=5")
        button = WebDriverWait(driver, 20).until(
            expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, f"#failure-{row} button.purge"))
        )
        button.click()
        alert = WebDriverWait(driver, 10).until(expected_conditions.alert_is_present())
        assert alert.text == f"Purge 1 failed task (#{row})? This cannot be undone."  # asked by the page's nonce script
        alert.dismiss()
        assert env.row(row) is not None  # cancelled: nothing sent
        driver.find_element(By.CSS_SELECTOR, f"#failure-{row} button.purge").click()
        WebDriverWait(driver, 10).until(expected_conditions.alert_is_present()).accept()
        WebDriverWait(driver, 20).until(expected_conditions.presence_of_element_located((By.ID, "reliable-notice")))
        assert env.row(row) is None
        violations = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
        assert violations == []
    finally:
        driver.quit()


@pytest.mark.parametrize(
    ("extra_env", "args", "message"),
    [
        (
            {"RELIABLE_TEST_BACKOFF": "nan"},
            [],
            "reliable_retry_backoff = nan is not valid: expected a number of seconds",
        ),
        (
            {},
            ["--reliable_metrics_cache=nan"],
            "--reliable_metrics_cache=nan is not valid: expected a number of seconds",
        ),
    ],
)
def test_flower_refuses_to_start_with_a_nan_setting(
    env: Env, tmp_path: Path, extra_env: dict[str, str], args: list[str], message: str
) -> None:
    flower = FlowerProcess(env.scenario.env(**extra_env), tmp_path / "flower.log", args).start()
    try:
        assert flower.proc is not None
        code = flower.proc.wait(timeout=30)  # a refused start takes ~2 s
    finally:
        flower.stop()
    output = flower.log.read_text(errors="replace")
    assert code == 1 and message in output, output[-2000:]
    assert "Traceback" not in output
