"""Table metrics: ``celery -A proj reliable metrics`` (stdout and --output), the collector, the alert rules."""

from __future__ import annotations

import re
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery import Celery
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from celery_reliable.ops.metrics import ReliableCollector, register
from celery_reliable.store.failures import FailureRecord, claim_for_replay, finish_replay, record_failure, session_scope
from celery_reliable.store.migrate import upgrade
from celery_reliable.store.models import PendingMessage, utcnow
from celery_reliable.store.pending import PendingValues, add_pending
from celery_reliable.store.processed import mark_processed
from tests.harness import ROOT, reliable_cli

pytestmark = pytest.mark.integration

ALERTS = ROOT / "docs" / "prometheus" / "alerts.yml"
UNREACHABLE = "postgresql+psycopg://nobody:secret@127.0.0.1:1/none"


def _project(tmp_path: Path, db_url: str) -> Celery:
    (tmp_path / "metricsproj.py").write_text(
        "from celery import Celery\n"
        "app = Celery('metricsproj', broker='memory://')\n"
        f"app.conf.reliable_database_url = {db_url!r}\n"
    )
    app = Celery("metricsproj", broker="memory://", set_as_current=False)
    app.conf.reliable_database_url = db_url
    return app


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return reliable_cli(tmp_path, "metricsproj", "metrics", *args)


def _values(text: str) -> dict[str, dict[str, float]]:
    """``{sample name: {first label value or "": value}}``."""
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = next(iter(sample.labels.values()), "")
            found.setdefault(sample.name, {})[label] = sample.value
    return found


def _failure(app: Celery, task_id: str, task: str, exc: str) -> int:
    return record_failure(app, FailureRecord(task_id=task_id, task_name=task, reason="exception", exc_type=exc))


def _fill(app: Celery) -> None:
    """2 failed rows waiting (t.a ValueError, t.b KeyError) + 1 replayed; pending: 2 pending (one
    created 10 s ago, 2 failed sends), 1 dead (5 failed sends), 1 sent; 3 processed ids."""
    _failure(app, "a1", "t.a", "ValueError")
    replayed = _failure(app, "a2", "t.a", "ValueError")
    _failure(app, "b1", "t.b", "KeyError")
    assert claim_for_replay(app, replayed, "a2-replay")
    finish_replay(app, replayed, sent=True)
    ids = add_pending(
        app, [PendingValues(f"p{i}", "t.p", [i], {}, {}, None, None) for i in range(4)],
        source="publish_fallback", delay=3600,
    )  # fmt: skip
    changes: list[tuple[int, dict[str, Any]]] = [
        (ids[0], {"attempts": 2, "created_at": utcnow() - timedelta(seconds=10)}),
        (ids[2], {"status": "dead", "attempts": 5}),
        (ids[3], {"status": "sent", "sent_at": utcnow()}),
    ]
    with session_scope(app) as session:
        for row_id, values in changes:
            session.execute(update(PendingMessage).where(PendingMessage.id == row_id).values(**values))
    for i in range(3):
        assert mark_processed(app, f"done-{i}", "t.done")


def _check_values(found: dict[str, dict[str, float]]) -> None:
    assert found["celery_reliable_up"] == {"": 1.0}
    assert found["celery_reliable_failed_tasks"] == {"t.a": 1.0, "t.b": 1.0}
    assert found["celery_reliable_failed_tasks_by_exception"] == {"ValueError": 1.0, "KeyError": 1.0}
    assert found["celery_reliable_failed_task_rows"] == {"failed": 2.0, "replaying": 0.0, "replayed": 1.0}
    assert found["celery_reliable_replayed_tasks"] == {"": 1.0}
    assert found["celery_reliable_pending_messages"] == {
        "pending": 2.0, "claimed": 0.0, "sent": 1.0, "done": 0.0, "dead": 1.0, "expired": 0.0, "invalid": 0.0,
    }  # fmt: skip
    assert found["celery_reliable_pending_send_failures"] == {
        "pending": 2.0, "claimed": 0.0, "sent": 0.0, "done": 0.0, "dead": 5.0, "expired": 0.0, "invalid": 0.0,
    }  # fmt: skip
    assert 10.0 <= found["celery_reliable_oldest_pending_age_seconds"][""] < 60.0
    assert found["celery_reliable_processed_task_ids"] == {"": 3.0}
    assert found["celery_reliable_attention"] == {"": 2.0}  # failed rows waiting, a dead pending row


def test_cli_prints_exact_values_and_writes_a_textfile_atomically(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'metrics.sqlite3'}"
    upgrade(db_url)
    app = _project(tmp_path, db_url)
    _fill(app)

    printed = _cli(tmp_path)
    assert printed.returncode == 0, printed.stderr
    _check_values(_values(printed.stdout))

    out_dir = tmp_path / "textfile"
    out_dir.mkdir()
    target = out_dir / "celery_reliable.prom"
    target.write_text("stale\n")
    written = _cli(tmp_path, "--output", str(target))
    assert written.returncode == 0, written.stderr
    assert written.stdout == ""
    _check_values(_values(target.read_text()))
    assert [p.name for p in out_dir.iterdir()] == ["celery_reliable.prom"]  # no temporary file left
    nowhere = _cli(tmp_path, "--output", str(tmp_path / "missing-dir" / "x.prom"))
    assert nowhere.returncode == 1 and "cannot write" in nowhere.stderr
    app.close()


def test_cli_reports_an_unreadable_database(tmp_path: Path) -> None:
    _project(tmp_path, UNREACHABLE)
    result = _cli(tmp_path)
    assert result.returncode == 1
    assert _values(result.stdout) == {"celery_reliable_up": {"": 0.0}}
    assert "could not be read" in result.stderr
    assert "secret" not in result.stdout + result.stderr


def test_collector_caches_readings(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'cache.sqlite3'}"
    upgrade(db_url)
    app = _project(tmp_path, db_url)
    cached, fresh = CollectorRegistry(), CollectorRegistry()
    register(app, cached, cache_seconds=300)
    register(app, fresh, cache_seconds=0)

    def failed(registry: CollectorRegistry) -> dict[str, float]:
        return _values(generate_latest(registry).decode()).get("celery_reliable_failed_tasks", {})

    assert failed(cached) == {} and failed(fresh) == {}
    _failure(app, "c1", "t.c", "ValueError")
    assert failed(cached) == {}  # the reading from before is reused
    assert failed(fresh) == {"t.c": 1.0}
    with pytest.raises(ValueError, match="cache_seconds"):
        ReliableCollector(app, cache_seconds=-1)
    app.close()


def test_registering_reads_nothing_and_a_dead_database_gives_up_zero(tmp_path: Path) -> None:
    app = _project(tmp_path, UNREACHABLE)
    registry = CollectorRegistry(auto_describe=True)
    register(app, registry, cache_seconds=0)  # describe() only: no database query
    assert _values(generate_latest(registry).decode()) == {"celery_reliable_up": {"": 0.0}}
    with pytest.raises(ValueError, match="Duplicated"):
        register(app, registry)
    app.close()


def test_alert_rules_use_metrics_that_exist(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'alerts.sqlite3'}"
    upgrade(db_url)
    app = _project(tmp_path, db_url)
    _fill(app)
    registry = CollectorRegistry()
    register(app, registry, cache_seconds=0)
    exposed = {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}
    app.close()

    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    assert len(rules) >= 5
    from celery_reliable import events

    known_events = {events.FAILURE_STORED, events.REPLAYED, events.MESSAGE_STORED}
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
        for name in re.findall(r"celery_reliable_\w+", rule["expr"]):
            assert name in exposed, f"{rule['alert']} uses {name}, which is not exposed"
        for event_type in re.findall(r'type="([^"]+)"', rule["expr"]):
            assert event_type in known_events, f"{rule['alert']} counts unknown event {event_type}"
