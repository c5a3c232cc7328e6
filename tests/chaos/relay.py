"""``python -m tests.chaos.relay [PASSES [PAUSE]]``: relay passes of the chaos app
(``relay_once``), as an operator or another relay process would run them; prints each pass's
stats, or the error it raised."""

from __future__ import annotations

import sys
import time


def main(passes: int = 1, pause: float = 0.0) -> int:
    from celery_reliable import relay_once
    from tests.chaos.app import app

    code = 0
    for i in range(passes):
        if i:
            time.sleep(pause)
        try:
            stats = relay_once(app, time_limit=10)
        except Exception as exc:
            print(f"relay pass raised {type(exc).__name__}: {exc}", flush=True)
            code = 1
            continue
        print(f"relay pass: claimed={stats.claimed} sent={stats.sent} failed={stats.failed}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(*(int(sys.argv[1]), float(sys.argv[2])) if len(sys.argv) > 2 else ()))
