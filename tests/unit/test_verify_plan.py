"""The plan of a verify run: which probes are poison, how each is published, when kills fire."""

from __future__ import annotations

import re

import pytest

from celery_reliable.ops.verify.plan import PROBES, Plan, VerifyOptions
from celery_reliable.ops.verify.store import seq_of


def test_poison_probes_are_spread_and_alternate_kinds() -> None:
    plan = Plan(VerifyOptions(messages=60, poison=4))
    assert plan.poison() == {7: "permanent", 22: "retryable", 37: "permanent", 52: "retryable"}
    assert Plan(VerifyOptions(messages=3, poison=3)).poison() == {0: "permanent", 1: "retryable", 2: "permanent"}
    assert Plan(VerifyOptions(messages=10, poison=0)).poison() == {}


def test_paths_kills_and_names() -> None:
    plan = Plan(VerifyOptions(messages=8, kills=3))
    assert [plan.path(s) for s in range(8)] == ["publish", "publish", "outbox", "relay"] * 2
    assert [plan.kill_kind(i) for i in range(3)] == ["pool-process", "workers", "pool-process"]
    assert [plan.kill_at(i, 100) for i in range(3)] == [25, 50, 75]
    assert plan.queue.startswith("celery_reliable.verify.") and plan.queue != Plan(plan.options).queue
    assert "_" not in plan.prefix and "%" not in plan.prefix  # no LIKE wildcard in the task-id prefix
    assert seq_of(plan.task_id(42), plan.prefix) == 42
    assert seq_of("verify-other-0000042", plan.prefix) is None
    assert plan.task_name == PROBES["idempotent"] and plan.idempotent


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("messages", 0, "messages = 0"),
        ("poison", 11, "from 0 to messages (10)"),
        ("workers", 0, "workers = 0"),
        ("timeout", 0, "seconds > 0"),
        ("probe", "fast", "one of"),
    ],
)
def test_bad_options_are_refused_with_the_accepted_values(field: str, value: object, expected: str) -> None:
    with pytest.raises(ValueError, match=re.escape(expected)):
        VerifyOptions(**{"messages": 10, field: value})  # type: ignore[arg-type]
