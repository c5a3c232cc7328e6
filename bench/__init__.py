"""Benchmarks of celery_reliable (run with ``python -m bench.bench_consumer``)."""

from __future__ import annotations

#: The name of every benchmark task (one variant per worker run).
TASK_NAME = "bench.noop"


def keys(prefix: str, run: str) -> dict[str, str]:
    """The Redis keys of one run, written by the worker and read by the runner."""
    base = f"{prefix}{run}:"
    return {name: base + name for name in ("ready", "done", "first", "end")}
