"""The test worker app with OpenTelemetry: ``celery -A tests.apps.otelapp worker``.

Each pool process traces with the SDK's in-memory exporter and the Celery instrumentation; after
every task the spans it finished are appended to the JSON-lines file ``RELIABLE_TEST_SPANS``
(the exporter lives in the worker's process, the test reads the file).
``RELIABLE_TEST_OTEL_INSTRUMENT=0``: the SDK without the instrumentation (no span is started).
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery.signals import task_postrun, worker_process_init

from tests.apps.spans import span_record
from tests.apps.workerapp import app

__all__ = ["app"]

_exporter: Any = None


@worker_process_init.connect(weak=False)
def _start_tracing(**_: Any) -> None:
    global _exporter
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    _exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_exporter))
    trace.set_tracer_provider(provider)
    if os.environ.get("RELIABLE_TEST_OTEL_INSTRUMENT", "1") == "1":
        CeleryInstrumentor().instrument()
    task_postrun.connect(_write_spans, weak=False)  # after the instrumentation's own: its span has ended


def _write_spans(**_: Any) -> None:
    spans = _exporter.get_finished_spans()
    _exporter.clear()
    with open(os.environ["RELIABLE_TEST_SPANS"], "a") as out:
        for span in spans:
            out.write(json.dumps(span_record(span)) + "\n")
