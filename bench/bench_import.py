"""What ``import celery_reliable`` costs a process, against the imports it cannot avoid.

    python -m bench.bench_import [--runs 15]

Every worker, producer, cron job and web process pays the import once per start. The reference is
``import celery.app.task, sqlalchemy.orm, kombu``: what any Celery app with a SQLAlchemy store
imports anyway. Each figure is the median wall time of a fresh interpreter (``python -c``, bytecode
already compiled) minus a bare interpreter's start, over ``--runs`` runs interleaved so the machine's
load falls on all three alike. Also reported: which heavy optional modules the import loaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

#: The imports any Celery app with a SQLAlchemy store pays anyway.
REFERENCE = "import celery.app.task, sqlalchemy.orm, kombu"
SUBJECT = "import celery_reliable"
#: Loaded only when an operator feature is used (the import must not pull them in).
OPTIONAL = ("alembic", "prometheus_client", "tornado", "flower", "celery_reliable.ops")
#: ``import celery_reliable`` may cost at most this many times the reference.
TARGET = 1.5


def _time(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def loaded_optional() -> list[str]:
    """The optional modules present in ``sys.modules`` after ``import celery_reliable``."""
    code = f"{SUBJECT}; import sys, json; print(json.dumps(sorted(m for m in {list(OPTIONAL)!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return list(json.loads(out))


def measure(runs: int) -> dict[str, float]:
    for code in ("pass", REFERENCE, SUBJECT):  # compile bytecode, warm the page cache
        _time(code)
    bare: list[float] = []
    reference: list[float] = []
    subject: list[float] = []
    for _ in range(runs):
        bare.append(_time("pass"))
        reference.append(_time(REFERENCE))
        subject.append(_time(SUBJECT))
    base = statistics.median(bare)
    ref = statistics.median(reference) - base
    sub = statistics.median(subject) - base
    return {"bare_ms": base * 1000, "reference_ms": ref * 1000, "subject_ms": sub * 1000, "ratio": sub / ref}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args(argv)
    result = measure(max(1, min(args.runs, 200)))
    optional = loaded_optional()
    print(f"| import | ms (median of {args.runs}, interpreter start removed) |")
    print("|---|---|")
    print(f"| `{REFERENCE}` | {result['reference_ms']:.0f} |")
    print(f"| `{SUBJECT}` | {result['subject_ms']:.0f} |")
    print(f"\nratio {result['ratio']:.2f}x (target <= {TARGET}x); interpreter start {result['bare_ms']:.0f} ms")
    print(f"optional modules loaded by the import: {', '.join(optional) or 'none'}")
    return 0 if result["ratio"] <= TARGET and not optional else 1


if __name__ == "__main__":
    sys.exit(main())
