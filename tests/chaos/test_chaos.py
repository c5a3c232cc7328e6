"""Chaos runs: every scenario x mode x broker, counted to the message.

A small subset runs in CI; the rest is marked ``chaos_full``, which pytest deselects by default
(pyproject addopts); ``scripts/chaos`` selects them all with ``-m chaos`` and prints the table.
celery_reliable is held to exact
numbers: nothing lost where the doctor passes the configuration, no duplicate effect of an
idempotent task, every poison message stored. Plain Celery's numbers are recorded; only what is
deterministic about them is asserted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chaos.harness import Result, chaos_run
from tests.chaos.scenarios import SCENARIOS

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.fault, pytest.mark.postgres]

#: The runs CI makes (about three and a half minutes): the rest are marked chaos_full, deselected by default.
CI = {
    ("worker_kill_default_vt", "reliable", "publish", "redis"),
    ("broker_crash_nopersist", "reliable", "outbox", "redis"),
    ("slow_worker", "reliable", "publish", "redis"),
    ("fetch_kill", "reliable", "publish", "redis"),
    ("child_kill", "reliable", "publish", "rabbitmq"),
    ("broker_outage", "reliable", "publish", "redis"),
    ("producer_kill", "reliable", "outbox", "redis"),
    ("flaky_poison", "reliable", "publish", "rabbitmq"),
}


def _cases() -> list[Any]:
    cases = []
    for name, (_fn, _opts, modes, brokers) in SCENARIOS.items():
        for mode, publishing in modes:
            for broker in brokers:
                marks = [getattr(pytest.mark, broker)]
                if (name, mode, publishing, broker) not in CI:
                    marks.append(pytest.mark.chaos_full)
                cases.append(
                    pytest.param(name, mode, publishing, broker, id=f"{name}-{mode}-{publishing}-{broker}", marks=marks)
                )
    return cases


def check_reliable(r: Result) -> None:
    """celery_reliable: exact numbers."""
    doctor_passes = r.doctor is not None and r.doctor["exit_code"] == 0
    if r.scenario == "broker_crash_nopersist" and r.publishing == "publish":
        # Redis without persistence: the doctor fails it, and the crash loses the queued backlog.
        assert r.doctor is not None and "redis.persistence" in r.doctor["fail"], r.doctor
        assert r.lost > 0, r.line()
        return
    if r.scenario == "producer_kill" and r.publishing == "publish":
        # publish() after the commit: a producer killed in between never sent the message.
        assert r.lost == r.faults == 3, r.line()
        return
    if r.scenario == "worker_kill_default_vt_noheartbeat":
        # no heartbeats: what each kill's worker held waits out the 600 s visibility timeout
        assert r.lost > 0 and r.lost == r.in_broker and r.duplicates == 0, r.line()
        return
    if r.scenario == "fetch_kill_kombu":
        # kombu's fetch: the doctor warns; what it loses is recorded (a kill must land in the window)
        assert r.doctor is not None and "redis.fetch" in r.doctor["warn"], r.doctor
        assert r.duplicates == 0 and r.stored == 0, r.line()
        return
    assert doctor_passes, f"the doctor fails this configuration: {r.doctor}"
    assert r.lost == 0, r.line()
    assert r.duplicates == 0, r.line()  # idempotent tasks (two_relays: no consumer fault at all)
    assert r.stored == r.poison, (r.line(), r.stored_by_reason)
    assert (r.pending, r.in_broker) == (0, 0), r.line()
    assert r.drained, r.line()
    assert r.waiting == 0, r.line()  # every row sent from the pending table reached its outcome
    if r.scenario.startswith("worker_kill"):
        # a dead worker's messages ran again within seconds (heartbeats), whatever the timeout
        assert len(r.recovery) >= r.faults and max(r.recovery) < 15, r.line()
    if r.scenario in ("broker_crash_nopersist", "broker_flush", "sentinel_failover"):
        assert r.events.get("ledger_resent", 0) > 0, r.line()  # Redis did lose messages; the relay resent them
    if r.scenario == "slow_worker":
        assert r.runs == r.committed, r.line()  # nothing a slow worker held was taken from it


def check_plain(r: Result) -> None:
    """Plain Celery: only what is certain is asserted; the rest is recorded."""
    assert r.stored == 0 and r.pending == 0  # it has neither table in use
    if r.scenario == "producer_kill":
        assert r.lost == r.faults == 3, r.line()
    elif r.scenario == "flaky_poison":
        assert r.lost == r.poison, r.line()  # poison messages vanish; transient failures retried
    elif r.scenario == "child_kill" and r.mode == "plain_default":
        assert r.lost == r.faults + r.poison, r.line()  # each killed task was acked when it started
    elif r.scenario == "child_kill":
        # requeued on worker loss: the poison ones forever (on RabbitMQ at the head of the
        # queue, where they can keep every pool process busy and starve the rest)
        assert r.lost >= r.poison and r.in_broker >= r.poison, r.line()
    elif r.scenario == "worker_kill" and r.mode == "plain_default":
        assert r.lost >= r.faults, r.line()  # each kill hit a running task, acked when it started
    elif r.scenario == "db_down":
        assert r.lost >= r.poison, r.line()


@pytest.mark.parametrize("name,mode,publishing,broker", _cases())
def test_chaos(
    request: pytest.FixtureRequest, name: str, mode: str, publishing: str, broker: str, tmp_path: Path
) -> None:
    request.getfixturevalue("postgres_server")
    if broker == "rabbitmq":
        request.getfixturevalue("amqp_url")
    run_scenario, options, _modes, _brokers = SCENARIOS[name]
    with chaos_run(name, mode, broker, tmp_path, publishing=publishing, **options) as run:
        result = run_scenario(run)
    assert result.committed > 0, result.line()
    if mode == "reliable":
        check_reliable(result)
    else:
        check_plain(result)
