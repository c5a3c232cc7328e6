"""Trace continuity through the pending table, the relay, a stored failure and its replay.

The test process is the producer, the relay and the operator: it traces with the SDK's in-memory
exporter and the Celery instrumentation. The worker (``tests.apps.otelapp``) traces too and writes
its finished spans to a file; the assertions join the two by span ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from celery_reliable import outbox, publish, relay_once, replay
from celery_reliable.store.engine import get_engine
from tests.apps.spans import span_record
from tests.conftest import Scenario
from tests.harness import wait_for
from tests.integration import test_publish
from tests.integration.test_publish import AppFactory, dead_broker

pytestmark = pytest.mark.integration

apps = test_publish.apps  # the fixture: producer and relay apps, closed afterwards

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def provider() -> TracerProvider:
    """This process's tracer provider (set once: OpenTelemetry keeps the first)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)
    return provider


@pytest.fixture(params=["instrumented", "api-only"])
def tracing(request: pytest.FixtureRequest, provider: TracerProvider) -> Iterator[str]:
    """The producer and relay with the Celery instrumentation, or with the API and SDK only."""
    _EXPORTER.clear()
    instrumented = request.param == "instrumented"
    if instrumented:
        CeleryInstrumentor().instrument(tracer_provider=provider)
    try:
        yield request.param
    finally:
        if instrumented:
            CeleryInstrumentor().uninstrument()
        _EXPORTER.clear()


def _local() -> list[dict[str, Any]]:
    return [span_record(span) for span in _EXPORTER.get_finished_spans()]


def _worker_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _runs(path: Path, name: str) -> list[dict[str, Any]]:
    return [span for span in _worker_spans(path) if span["name"] == f"run/{name}"]


def _one(spans: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [span for span in spans if all(span[key] == value for key, value in match.items())]
    assert len(found) == 1, (match, spans)
    return found[0]


def _hex(span: Any) -> tuple[str, str]:
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _start(scenario: Scenario, spans: Path, **env: str) -> None:
    worker = scenario.worker(start=False, RELIABLE_TEST_SPANS=str(spans), **env)
    worker.app_module = "tests.apps.otelapp"
    worker.start()


def test_a_message_kept_for_the_relay_runs_in_the_callers_trace(
    scenario: Scenario,
    apps: AppFactory,
    tracing: str,
    tmp_path: Path,
) -> None:
    spans = tmp_path / "worker-spans.jsonl"
    tracer = trace.get_tracer("test")
    # Given a message published inside the caller's span while the broker is down
    down = apps(dead_broker(scenario.broker_url), scenario.db.url, scenario.queue, tasks=("t.ok",),
                reliable_publish_retries=0)  # fmt: skip
    with tracer.start_as_current_span("caller") as caller:
        result = publish(down, "t.ok", ["traced-1"])
        # and the caller's span is still the current one after the failed send
        assert trace.get_current_span() is caller
    assert result.pending
    caller_trace, caller_id = _hex(caller)
    # When the relay sends it from another trace (a beat pass of its own)
    relay_app = apps(scenario.broker_url, scenario.db.url, scenario.queue, tasks=("t.ok",))
    with tracer.start_as_current_span("relay pass") as relay_span:
        stats = relay_once(relay_app)
    assert (stats.sent, stats.failed) == (1, 0)
    _start(scenario, spans)
    run = wait_for(lambda: _runs(spans, "t.ok"), 60, what="the worker's run span")
    # Then the worker's run is in the caller's trace
    assert [span["trace_id"] for span in run] == [caller_trace]
    assert _hex(relay_span)[0] != caller_trace
    if tracing == "instrumented":
        # under the relay's send span, itself a child of the caller's span
        resend = _one(_local(), name="apply_async/t.ok", task_id=result.task_id, parent_id=caller_id)
        assert resend["trace_id"] == caller_trace
        assert run[0]["parent_id"] == resend["span_id"]
    else:
        # directly under the caller's span (the context kept in the row's headers)
        assert run[0]["parent_id"] == caller_id


@pytest.mark.redis
def test_an_outbox_message_sent_by_the_relay_runs_in_the_trace_it_was_staged_in(
    redis_sqlite_scenario: Scenario, apps: AppFactory, tracing: str, tmp_path: Path
) -> None:
    scenario = redis_sqlite_scenario
    spans = tmp_path / "worker-spans.jsonl"
    tracer = trace.get_tracer("test")
    app = apps(scenario.broker_url, scenario.db.url, scenario.queue, tasks=("t.ok",), reliable_outbox_grace=0)
    # Given a message staged in the caller's transaction (a Connection: no send after the commit)
    with tracer.start_as_current_span("caller") as caller, get_engine(app).begin() as connection:
        task_id = outbox(connection, app).send("t.ok", ["staged-1"])
    caller_trace, caller_id = _hex(caller)
    # When the relay sends it, from a trace of its own
    with tracer.start_as_current_span("relay pass"):
        assert relay_once(app).sent == 1
    _start(scenario, spans)
    run = wait_for(lambda: _runs(spans, "t.ok"), 60, what="the worker's run span")
    # Then the run is in the caller's trace
    assert [span["trace_id"] for span in run] == [caller_trace]
    if tracing == "instrumented":
        resend = _one(_local(), name="apply_async/t.ok", task_id=task_id)
        assert (resend["trace_id"], resend["parent_id"], run[0]["parent_id"]) == (
            caller_trace,
            caller_id,
            resend["span_id"],
        )
    else:
        assert run[0]["parent_id"] == caller_id


@pytest.mark.redis
def test_a_replayed_failure_runs_in_the_failed_runs_trace(
    redis_sqlite_scenario: Scenario,
    apps: AppFactory,
    tracing: str,
    tmp_path: Path,
) -> None:
    scenario = redis_sqlite_scenario
    spans = tmp_path / "worker-spans.jsonl"
    tracer = trace.get_tracer("test")
    _start(scenario, spans, RELIABLE_TEST_MAX_RETRIES="1", RELIABLE_TEST_BACKOFF="0.01")
    app: Celery = apps(scenario.broker_url, scenario.db.url, scenario.queue, tasks=("t.always_fail",))
    # Given a task that failed for good after one retry, published in the caller's span
    with tracer.start_as_current_span("caller") as caller:
        task_id = publish(app, "t.always_fail", ["traced-2"]).task_id
    caller_trace, _ = _hex(caller)
    row = wait_for(lambda: [r for r in scenario.db.failed_rows() if r["task_id"] == task_id], 60, what="failure")[0]
    first, retry = wait_for(lambda: len(_runs(spans, "t.always_fail")) == 2 and _runs(spans, "t.always_fail"), 30)
    # the retry continues the trace: its run is under the retry's send span, under the first run
    assert {first["trace_id"], retry["trace_id"]} == {caller_trace}
    retry_send = _one(_worker_spans(spans), name="apply_async/t.always_fail", parent_id=first["span_id"])
    assert retry["parent_id"] == retry_send["span_id"]
    # and the failed row keeps the context of the last (failed) run
    headers = _options(row)["headers"]
    assert headers["traceparent"].split("-")[:3] == ["00", caller_trace, retry["span_id"]]
    # When an operator replays it, inside a trace of its own
    with tracer.start_as_current_span("operator") as operator:
        new_id = replay(app, row["id"]).task_id
    assert _hex(operator)[0] != caller_trace
    runs = wait_for(lambda: len(_runs(spans, "t.always_fail")) >= 4 and _runs(spans, "t.always_fail"), 60)
    # Then the replayed runs are in the original trace, under the failed run
    replayed = runs[2]
    assert {span["trace_id"] for span in runs} == {caller_trace}
    if tracing == "instrumented":
        send = _one(_local(), name="apply_async/t.always_fail", task_id=new_id)
        assert (send["trace_id"], send["parent_id"]) == (caller_trace, retry["span_id"])
        assert replayed["parent_id"] == send["span_id"]
    else:
        assert replayed["parent_id"] == retry["span_id"]


@pytest.mark.redis
def test_without_any_instrumentation_retries_and_replays_carry_the_callers_context(
    redis_sqlite_scenario: Scenario, apps: AppFactory, provider: TracerProvider, tmp_path: Path
) -> None:
    scenario = redis_sqlite_scenario
    _EXPORTER.clear()
    # Given a worker and a producer that load OpenTelemetry but start no span of their own
    _start(scenario, tmp_path / "none.jsonl", RELIABLE_TEST_MAX_RETRIES="1", RELIABLE_TEST_BACKOFF="0.01",
           RELIABLE_TEST_OTEL_INSTRUMENT="0")  # fmt: skip
    app = apps(scenario.broker_url, scenario.db.url, scenario.queue, tasks=("t.always_fail",))
    with trace.get_tracer("test").start_as_current_span("caller") as caller:
        task_id = publish(app, "t.always_fail", ["plain-1"]).task_id
    caller_trace, caller_id = _hex(caller)

    def failed(**match: Any) -> dict[str, Any]:
        rows = [r for r in scenario.db.failed_rows() if all(r[k] == v for k, v in match.items())]
        return rows[0] if rows else {}

    # When it fails for good after a retry
    row = wait_for(lambda: failed(task_id=task_id), 60, what="failure")
    # Then the retried run still had the caller's context, and the row keeps it
    assert row["attempts"] == 2
    assert _options(row)["headers"]["traceparent"].split("-")[:3] == ["00", caller_trace, caller_id]
    # and a replay (from another trace) sends it again with that context
    with trace.get_tracer("test").start_as_current_span("operator"):
        replay(app, row["id"])
    again = wait_for(lambda: failed(replay_of_id=row["id"]), 60, what="the replay's failure")
    assert again["attempts"] == 2
    assert _options(again)["headers"]["traceparent"].split("-")[:3] == ["00", caller_trace, caller_id]
    # (no span but the test's own anywhere)
    assert ([span["name"] for span in _local()], _worker_spans(tmp_path / "none.jsonl")) == (["caller", "operator"], [])


def _options(row: dict[str, Any]) -> dict[str, Any]:
    options = row["options"]
    return options if isinstance(options, dict) else dict(json.loads(options))
