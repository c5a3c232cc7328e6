"""The relay's row checks alone: ``RowChecks`` over rows as a light claim returns them, no database.

    python -m bench.bench_row_checks --n 2000 --repeat 15

Rows are what ``publish()`` stores (a message built ahead for Redis), with the columns a light
claim reads (``options`` as text, no arguments); the best of ``repeat`` passes over one batch is
printed in µs per row.
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace
from typing import Any

from bench.bench_publish import close_app, make_app, pending_rows


def claimed(app: Any, n: int) -> list[Any]:
    """``n`` rows as ``claim_rows(light=True)`` returns them on PostgreSQL."""
    rows = []
    for i, stored in enumerate(pending_rows(app, 0, n)):
        rows.append(
            SimpleNamespace(
                id=i + 1, task_id=stored["task_id"], task_name=stored["task_name"], args=None, kwargs=None,
                options=None, options_text=json.dumps(stored.get("options") or {}), eta=stored.get("eta"),
                expires_at=stored.get("expires_at"), message=stored["message"],
            )
        )  # fmt: skip
    return rows


def main() -> None:
    from celery_reliable.send.publisher import get_publisher
    from celery_reliable.send.relay_check import RowChecks

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="rows in the batch")
    parser.add_argument("--repeat", type=int, default=15, help="passes over the batch (the best is shown)")
    args = parser.parse_args()
    app = make_app("row-checks", "redis://127.0.0.1:6379/15", "bench-row-checks")
    try:
        rows = claimed(app, args.n)
        facts = get_publisher(app).facts
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            checks = RowChecks(app, facts)  # one per batch, as the relay makes it
            for row in rows:
                checks.columns(row)
                checks.stored_entry(row)
            best = min(best, time.perf_counter() - start)
    finally:
        close_app(app)
    print(f"RowChecks (columns + stored entry): {best / args.n * 1e6:.2f} µs per row, best of {args.repeat}")


if __name__ == "__main__":
    main()
