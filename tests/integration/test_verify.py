"""``celery -A proj reliable verify`` run for real: its own workers, killed by PID, exact counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from celery_reliable.store.migrate import upgrade
from tests.harness import reliable_cli

pytestmark = pytest.mark.integration

TABLES = (
    "celery_reliable_verify_effect",
    "celery_reliable_failed_task",
    "celery_reliable_pending_message",
    "celery_reliable_processed_task",
)


def _project(tmp_path: Path, broker: str, db: str) -> None:
    upgrade(db)
    (tmp_path / "vproj.py").write_text(
        "from celery import Celery\n"
        f"app = Celery('vproj', broker={broker!r}, task_cls='celery_reliable:ReliableTask')\n"
        f"app.conf.reliable_database_url = {db!r}\n"
        "app.conf.result_backend = None\n"
        "app.conf.reliable_retry_backoff = 0.5\n"  # a killed probe's retry waits less than the default
    )


def _verify(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    done = reliable_cli(tmp_path, "vproj", "verify", "--json", *args, timeout=150)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        output = f"{done.stdout}\n{done.stderr[-3000:]}"
        raise AssertionError(f"no JSON report (exit {done.returncode}):\n{output}") from None
    return done.returncode, report


def _rows_left(db: str) -> dict[str, int]:
    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in TABLES}
    finally:
        engine.dispose()


def _redis_keys_of(url: str, queue: str) -> list[str]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = [k.decode() for k in client.scan_iter(match=f"*{queue}*", count=1000)]
        unacked = [v for v in client.hvals("unacked") if queue.encode() in v]
        return keys + [f"unacked entry of {queue}"] * len(unacked)
    finally:
        client.close()


def _amqp_has(url: str, queue: str) -> list[str]:
    from kombu import Connection

    found = []
    with Connection(url) as conn:
        for kind in ("queue", "exchange"):
            channel = conn.channel()
            try:
                if kind == "queue":
                    channel.queue_declare(queue=queue, passive=True)
                else:
                    channel.exchange_declare(exchange=queue, type="direct", passive=True)
                found.append(kind)
            except Exception:  # 404 NOT_FOUND closes the channel: gone
                pass
            finally:
                try:
                    channel.close()
                except Exception:
                    pass
    return found


def _assert_nothing_lost(code: int, report: dict[str, Any]) -> None:
    assert (code, report["exit_code"], report["passed"]) == (0, 0, True), report
    assert report["published"] == 60
    assert report["by_path"] == {"publish": 30, "outbox": 15, "relay": 15}
    assert report["relayed"] >= 15
    assert [k["kind"] for k in report["kills"]] == ["pool-process", "workers"]
    assert all(k["pids"] for k in report["kills"])
    assert report["worker_starts"] >= 2  # started, then started again after the whole-worker kill
    assert (report["effects"], report["effect_rows"], report["duplicates"]) == (56, 56, 0)
    assert (report["stored_failures"], report["poison_stored"], report["unexpected_failures"]) == (4, 4, 0)
    assert report["failure_reasons"] == {"permanent": 2, "exception": 2}
    assert (report["pending_left"], report["lost"], report["lost_probes"]) == (0, 0, [])
    assert report["cleaned_up"] and not report["timed_out"]
    assert "FAIL" in report["doctor"]["counts"]  # the doctor's verdict is part of the report


@pytest.mark.redis
def test_verify_redis_sqlite(tmp_path: Path, redis_url: str, sqlite_db: str) -> None:
    _project(tmp_path, redis_url, sqlite_db)
    code, report = _verify(tmp_path, "-n", "60", "--poison", "4", "--kills", "2", "--workers", "1")
    _assert_nothing_lost(code, report)
    assert report["broker"] == redis_url and report["queue"].startswith("celery_reliable.verify.")
    assert _redis_keys_of(redis_url, report["queue"]) == []
    assert _rows_left(sqlite_db) == dict.fromkeys(TABLES, 0)


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_verify_rabbitmq_postgres(tmp_path: Path, amqp_url: str, postgres_db: str) -> None:
    _project(tmp_path, amqp_url, postgres_db)
    code, report = _verify(tmp_path, "-n", "60", "--poison", "4", "--kills", "2", "--workers", "1")
    _assert_nothing_lost(code, report)
    assert "guest:**@" in report["broker"] and "guest:guest" not in json.dumps(report)
    assert _amqp_has(amqp_url, report["queue"]) == []
    assert _rows_left(postgres_db) == dict.fromkeys(TABLES, 0)


@pytest.mark.redis
def test_verify_detects_a_real_loss(tmp_path: Path, redis_url: str, sqlite_db: str) -> None:
    """Plain Celery acknowledges before running: the probes the kills hit are gone, and verify says so."""
    _project(tmp_path, redis_url, sqlite_db)
    code, report = _verify(
        tmp_path, "-n", "60", "--poison", "0", "--kills", "2", "--workers", "1",
        "--probe", "plain-early-ack", "--pause", "0.2",
    )  # fmt: skip
    assert (code, report["exit_code"], report["passed"]) == (1, 1, False)
    assert report["published"] == 60 and report["stored_failures"] == 0
    assert report["lost"] > 0, report
    assert report["lost"] == report["published"] - report["effects"] - report["stored_failures"]
    assert len(report["lost_probes"]) == report["lost"]
    assert report["cleaned_up"]
    assert _redis_keys_of(redis_url, report["queue"]) == []
    assert _rows_left(sqlite_db) == dict.fromkeys(TABLES, 0)


def test_verify_refuses_an_unmigrated_database(tmp_path: Path, sqlite_db: str) -> None:
    (tmp_path / "vproj.py").write_text(
        "from celery import Celery\n"
        "app = Celery('vproj', broker='redis://127.0.0.1:1/0')\n"
        f"app.conf.reliable_database_url = {sqlite_db!r}\n"
    )
    code, report = _verify(tmp_path)
    assert (code, report["passed"]) == (3, False)
    assert "reliable db upgrade" in report["error"]


def test_plan_says_what_it_would_touch_and_does_nothing(tmp_path: Path, sqlite_db: str) -> None:
    (tmp_path / "vproj.py").write_text(
        "from celery import Celery\n"
        "app = Celery('vproj', broker='redis://127.0.0.1:1/0')\n"
        f"app.conf.reliable_database_url = {sqlite_db!r}\n"
    )
    code, plan = _verify(tmp_path, "--plan", "-n", "8", "--poison", "2", "--kills", "1")
    assert code == 0
    assert plan["app"] == "vproj" and plan["queue"].startswith("celery_reliable.verify.")
    assert plan["paths"] == {"publish": 4, "outbox": 2, "relay": 2}
    assert plan["kills"] == ["pool-process"] and len(plan["poison_probes"]) == 2
    assert any(plan["queue"] in line for line in plan["touches"])
    assert not Path(sqlite_db.removeprefix("sqlite:///")).exists()  # nothing was opened or created
