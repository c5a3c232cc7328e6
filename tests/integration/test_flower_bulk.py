"""Ten thousand failed rows with ten thousand task names, in a real Flower process.

Anyone who can publish can create task names (an unknown task is stored under the name in its
header), so the page's filter lists and the metrics must stay bounded, and "replay all" must not
hold the request while it works through the rows: it runs in the background, a batch at a time.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, insert, select

from celery_reliable.ops.status import OTHER, TOP
from celery_reliable.store.models import FailedTask
from tests.conftest import Scenario, make_scenario
from tests.harness import wait_for
from tests.integration.test_flower import FlowerProcess

pytestmark = [pytest.mark.integration, pytest.mark.redis]

ROWS = 10_000
#: Names offered by the page's task filter (celery_reliable.ops.flower.rows.CHOICES).
CHOICES = 50


@dataclass
class Env:
    scenario: Scenario
    flower: FlowerProcess

    def statuses(self) -> dict[str, int]:
        with self.scenario.db.engine.connect() as conn:
            rows = conn.execute(select(FailedTask.status, func.count()).group_by(FailedTask.status)).all()
        return {str(status): int(count) for status, count in rows}


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("flower-bulk")
    scenarios = make_scenario(request, redis_url, f"sqlite:///{tmp / 'reliable.sqlite3'}", tmp)
    scenario = next(scenarios)
    # Ten thousand distinct names, as unknown messages would leave them (reason unknown_task); the
    # Flower accepts flood.* as another code base's tasks, so a replay sends them to the test queue.
    key = uuid.uuid4().hex[:8]
    rows = [
        {"task_id": f"bulk-{key}-{i}", "task_name": f"flood.task_{i:05d}", "reason": "unknown_task",
         "args": [i], "kwargs": {}, "options": {"routing_key": scenario.queue}, "exc_type": "NotRegistered",
         "exc_message": f"flood.task_{i:05d}"}
        for i in range(ROWS)
    ]  # fmt: skip
    with scenario.db.engine.begin() as conn:
        conn.execute(insert(FailedTask), rows)
    env = scenario.env(FLOWER_UNAUTHENTICATED_API="true", CELERY_CONFIG_MODULE="tests.apps.flower_bulk_conf")
    flower = FlowerProcess(env, tmp / "flower.log")
    try:
        flower.start().wait_ready()
        yield Env(scenario, flower)
    finally:
        flower.stop()
        for _ in scenarios:  # closes the scenario: queue dropped
            pass


def test_page_and_metrics_stay_bounded_with_ten_thousand_task_names(env: Env) -> None:
    page = env.flower.request("GET", "/reliability")
    assert page.status == 200
    size = len(page.body.encode())
    datalist = page.body[page.body.index('<datalist id="task-names">') : page.body.index("</datalist>")]
    assert datalist.count("<option ") == CHOICES
    assert size < 120_000, size  # 50 rows, 50 names: a 520 KB page before the cap

    families = list(text_string_to_metric_families(env.flower.request("GET", "/metrics").body))
    ours = [s for f in families if f.name.startswith("celery_reliable_") for s in f.samples]
    by_task = {s.labels["task"]: s.value for s in ours if s.name == "celery_reliable_failed_tasks"}
    assert len(by_task) == TOP + 1 and by_task[OTHER] == ROWS - TOP
    assert sum(by_task.values()) == ROWS
    assert len(ours) < 130, len(ours)  # 10,005 series before the cap


def test_the_last_page_of_ten_thousand_rows_is_one_page_of_rows(env: Env) -> None:
    with env.scenario.db.engine.connect() as conn:
        oldest = conn.execute(select(FailedTask.id).order_by(FailedTask.id).limit(50)).scalars().all()
    started = time.monotonic()
    last = env.flower.request("GET", "/reliability?limit=50&page=200")
    took = time.monotonic() - started
    assert last.status == 200 and took < 5.0, took
    label = re.search(r'id="failed-paging"[^>]*>\s*<span class="paging-label">([^<]*)<', last.body)
    assert label is not None and label.group(1) == f"9951-10000 of {ROWS}"
    assert [int(i) for i in re.findall(r'<tr id="failure-(\d+)"', last.body)] == sorted(oldest, reverse=True)
    assert len(last.body.encode()) < 120_000


def test_replay_all_returns_at_once_and_replays_every_row_in_the_background(env: Env) -> None:
    queue = env.scenario.queue
    started = time.monotonic()
    resp = env.flower.post("/reliability/replay", {"all": "1", "status": "failed"})
    took = time.monotonic() - started
    assert resp.status == 303, resp.body[:300]
    assert took < 1.0, f"the request took {took:.2f} s"
    notice = unescape(env.flower.request("GET", resp.headers["location"], cookies=resp.cookies).body)
    assert f"Replay of {ROWS} row(s) started" in notice
    assert 'id="reliable-job"' in notice

    busy = env.flower.post("/reliability/purge", {"all": "1", "status": ""})
    shown = unescape(env.flower.request("GET", busy.headers["location"], cookies=busy.cookies).body)
    assert "Not started: a replay of all matching rows is still running" in shown

    job = wait_for(
        lambda: (p := env.flower.request("GET", "/api/reliable/job").json()) and not p["running"] and p,
        240, interval=1, what="the replay job to finish",
    )  # fmt: skip
    assert (job["done"], job["succeeded"], job["error_count"], job["stopped"]) == (ROWS, ROWS, 0, "")
    assert env.statuses() == {"replayed": ROWS}
    client = redis.Redis.from_url(env.scenario.broker_url)
    try:
        assert client.llen(queue) == ROWS  # each row sent exactly once
    finally:
        client.close()
    with env.scenario.db.engine.connect() as conn:
        distinct = conn.execute(select(func.count(func.distinct(FailedTask.replay_task_id)))).scalar_one()
    assert distinct == ROWS
