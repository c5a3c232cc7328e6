"""The caller's trace context, kept with a message through the pending and failed tables.

A message that waits in the pending table is sent later by the relay, in another process; a
failed one is sent again by ``replay()``, from wherever a person runs it. Neither process has the
caller's trace context, so a tracer would start a new trace there. The context is kept in the
message's own headers (W3C ``traceparent`` and ``tracestate``, as OpenTelemetry's propagator
writes them) and made current again around the resend, so the resent message continues the trace.

OpenTelemetry is optional and never imported here: a process that has not loaded
``opentelemetry.context`` has no active context, so there is nothing to keep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from ..store.pending import PendingValues

#: The headers of W3C trace context (what OpenTelemetry's default propagator reads and writes).
TRACE_HEADERS = ("traceparent", "tracestate")


def _loaded() -> bool:
    return "opentelemetry.context" in sys.modules


def current_context() -> dict[str, str]:
    """The trace context active here, as message headers (empty without one or without OpenTelemetry)."""
    if not _loaded():
        return {}
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return {key: value for key, value in carrier.items() if isinstance(value, str)}


def with_context(values: PendingValues, carrier: Mapping[str, str] | None = None) -> PendingValues:
    """``values`` whose headers carry ``carrier`` (default: the context active here).

    A ``traceparent`` the caller put in the headers itself is kept as it is.
    """
    carrier = current_context() if carrier is None else carrier
    if not carrier:
        return values
    options = dict(values.options or {})
    headers = dict(options.get("headers") or {})
    if "traceparent" in headers:
        return values
    headers.update(carrier)
    options["headers"] = headers
    return dataclasses.replace(values, options=options)


@contextlib.contextmanager
def resumed(headers: Any) -> Iterator[None]:
    """Make the context kept in ``headers`` current for a resend, restoring this one after.

    A publish hook (OpenTelemetry's Celery instrumentation) then starts its span in the kept
    trace and writes that into the message instead of this process's own context. Whatever such
    a hook leaves attached (a send that raised never ends its span) is dropped on the way out.
    """
    if not _loaded() or not isinstance(headers, Mapping) or not isinstance(headers.get("traceparent"), str):
        yield
        return
    from opentelemetry import context, trace
    from opentelemetry.propagate import extract

    kept = extract({key: value for key, value in headers.items() if isinstance(value, str)})
    span = trace.get_current_span(kept).get_span_context()
    here = trace.get_current_span().get_span_context()
    if (span.trace_id, span.span_id) == (here.trace_id, here.span_id):  # publish(): the caller's own
        yield
        return
    token = context.attach(kept)
    try:
        yield
    finally:
        context.detach(token)


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """Restore the current context after a send: a publish hook whose send raised leaves its span
    attached (its after-publish half never runs), and the caller's later spans would nest under it."""
    if not _loaded():
        yield
        return
    from opentelemetry import context

    token = context.attach(context.get_current())
    try:
        yield
    finally:
        context.detach(token)
