"""``python -m celery_reliable.ops.verify.worker APP READY_FILE WORKER_ARGS...``: a probe worker.

The application's own app (``celery -A APP``) with the probe tasks registered, remote control
and task events off (the probe workers answer no ``celery inspect`` and show in no monitor),
running Celery's ``worker`` command unchanged. ``READY_FILE`` is written when the worker
consumes, so the verify command waits on a file rather than on log lines.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path
from typing import Any

#: prctl option: the signal this process gets when its parent dies (Linux).
PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """Linux: a warm shutdown when the verify command dies, so no probe worker outlives it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent was already gone
        raise SystemExit(1)


def main(argv: list[str]) -> int:
    """Run a probe worker; returns only for bad usage (Celery's worker exits the process)."""
    if len(argv) < 2:
        sys.stderr.write("usage: python -m celery_reliable.ops.verify.worker APP READY_FILE [worker options]\n")
        return 2
    app_path, ready_file, rest = argv[0], Path(argv[1]), argv[2:]
    _stop_with_parent()
    from celery import signals
    from celery.app.utils import find_app

    app = find_app(app_path)
    from . import probe as _probe  # noqa: F401  (registers the probe tasks on the app)

    # -Q names the probe queue, which no task_queues setting lists
    app.conf.update(worker_enable_remote_control=False, worker_send_task_events=False, task_create_missing_queues=True)

    def ready(sender: Any = None, **_: Any) -> None:
        ready_file.write_text("ready\n")

    signals.worker_ready.connect(ready, weak=False)
    app.worker_main(["worker", *rest])  # exits the process when the worker stops
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
