"""``import celery_reliable`` stays light; operator tools load on use and name the extra they need."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.harness import ROOT

#: Only the operator's tools need these; a worker, producer or cron job never loads them.
OPTIONAL = ("alembic", "prometheus_client", "tornado", "flower", "celery_reliable.ops", "redis", "opentelemetry")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_import_loads_no_operator_tool_and_no_optional_dependency() -> None:
    done = _python(
        "import sys, json, celery_reliable; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {list(OPTIONAL)!r} "
        f"or m.startswith(('celery_reliable.ops', 'celery_reliable.contrib')))))"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_operator_names_load_on_first_use() -> None:
    done = _python(
        "import celery_reliable as r; "
        "print(r.run_checks.__module__, r.summary.__module__, r.upgrade.__module__, r.ReliableCollector.__module__)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "celery_reliable.ops.doctor", "celery_reliable.ops.status", "celery_reliable.store.migrate",
        "celery_reliable.ops.metrics",
    ]  # fmt: skip


def test_a_missing_extra_is_named() -> None:
    # prometheus_client absent (None in sys.modules makes every import of it fail)
    done = _python(
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import celery_reliable\n"
        "try:\n    celery_reliable.ReliableCollector\nexcept ImportError as exc:\n    print(exc)\n"
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'celery_reliable[metrics]'" in done.stdout
    assert "prometheus_client" in done.stdout


def test_the_cli_works_without_the_metrics_extra_and_its_metrics_command_names_it() -> None:
    run = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from celery.__main__ import main\n"
        "sys.argv = ['celery', '-A', 'tests.apps.workerapp', 'reliable'] + sys.argv[1:]\n"
        "main()\n"
    )
    listing = subprocess.run(
        [sys.executable, "-c", run, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert listing.returncode == 0, listing.stderr
    assert "metrics" in listing.stdout and "failed" in listing.stdout
    metrics = subprocess.run(
        [sys.executable, "-c", run, "metrics"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert metrics.returncode != 0
    assert "pip install 'celery_reliable[metrics]'" in metrics.stdout + metrics.stderr
