"""``python -m tests.chaos.doctor``: what ``celery_reliable.ops.doctor`` says about the chaos app as
configured by the run's environment, as JSON on stdout (``{"exit_code": n, "checks": {...}}``)."""

from __future__ import annotations

import json


def main() -> None:
    from celery_reliable.ops.doctor import run_checks
    from tests.chaos.app import app

    report = run_checks(app)
    checks = {r.check: {"status": r.status.value, "detail": r.detail} for r in report.results}
    print(json.dumps({"exit_code": report.exit_code(), "checks": checks}))


if __name__ == "__main__":
    main()
