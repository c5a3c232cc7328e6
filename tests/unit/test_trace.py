"""The trace context kept in a message's headers (celery_reliable.message.trace)."""

from __future__ import annotations

import subprocess
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from celery_reliable.message.trace import current_context, resumed, with_context
from celery_reliable.store.pending import PendingValues
from tests.harness import ROOT

_TRACER = TracerProvider().get_tracer("test")


def _values(headers: dict[str, object]) -> PendingValues:
    return PendingValues("id-1", "t.ok", [], {}, {"headers": headers, "queue": "q"}, None, None)


def _parent(span: trace.Span) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-"


def test_the_active_span_is_kept_beside_the_callers_headers() -> None:
    # Given a span active in the caller
    with _TRACER.start_as_current_span("caller") as caller:
        # When a message is kept with the context active here
        values = with_context(_values({"tenant": "acme"}))
    # Then its headers carry the span, next to the caller's own headers and options
    headers = values.options["headers"]
    assert sorted(headers) == ["tenant", "traceparent"]
    assert headers["traceparent"].startswith(_parent(caller))
    assert values.options["queue"] == "q"


def test_a_traceparent_the_caller_set_is_kept_and_no_span_adds_nothing() -> None:
    own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with _TRACER.start_as_current_span("caller"):
        assert with_context(_values({"traceparent": own})).options["headers"] == {"traceparent": own}
    assert current_context() == {}
    assert with_context(_values({})).options["headers"] == {}


def test_resumed_makes_the_kept_context_current_and_restores_this_one() -> None:
    with _TRACER.start_as_current_span("kept") as kept:
        headers = current_context()
    with _TRACER.start_as_current_span("relay") as relay:
        with resumed(headers):
            inside = trace.get_current_span().get_span_context()
            assert (inside.trace_id, inside.span_id) == (
                kept.get_span_context().trace_id,
                kept.get_span_context().span_id,
            )
        assert trace.get_current_span() is relay
        with resumed({"tenant": "acme"}):  # nothing kept: nothing changes
            assert trace.get_current_span() is relay


def test_resumed_leaves_the_callers_own_span_current_and_carries_baggage() -> None:
    from opentelemetry import baggage, context

    # Given a message whose kept context is the span active here (publish() in the caller)
    with _TRACER.start_as_current_span("caller") as caller:
        headers = current_context()
        # When it is sent: the caller's real span stays current (not a copy of its ids)
        with resumed(headers):
            assert trace.get_current_span() is caller
    # and a kept baggage entry is current again around a resend elsewhere
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with _TRACER.start_as_current_span("caller"):
            headers = current_context()
    finally:
        context.detach(token)
    assert headers["baggage"] == "tenant=acme"
    with resumed(headers):
        assert baggage.get_baggage("tenant") == "acme"
    assert baggage.get_baggage("tenant") is None


def test_without_opentelemetry_messages_are_kept_unchanged() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from celery_reliable.message.trace import current_context, resumed, with_context\n"
        "from celery_reliable.store.pending import PendingValues\n"
        "values = PendingValues('i', 't', [], {}, {'headers': {'a': 1}}, None, None)\n"
        "assert with_context(values) is values and current_context() == {}\n"
        "with resumed({'traceparent': '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'}):\n"
        "    pass\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr
