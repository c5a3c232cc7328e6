"""A finished span as the OpenTelemetry tests compare it (in the worker and in the test process)."""

from __future__ import annotations

from typing import Any


def span_record(span: Any) -> dict[str, Any]:
    """What the tests compare of a finished span: its name, ids, parent and links (hex)."""
    context = span.get_span_context()
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "links": [f"{link.context.span_id:016x}" for link in span.links],
        "task_id": span.attributes.get("messaging.message.id"),
    }
