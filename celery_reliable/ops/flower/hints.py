"""The ``celery -A …`` command the page's hints name: the ``-A`` value Flower was started with.

No Flower or tornado here.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

from celery import Celery


def app_argument(argv: Sequence[str]) -> str | None:
    """The value of ``-A``/``--app`` in a command line, or ``None``."""
    for i, arg in enumerate(argv):
        if arg in ("-A", "--app") and i + 1 < len(argv):
            return argv[i + 1]
        for prefix in ("--app=", "-A="):
            if arg.startswith(prefix):
                return arg[len(prefix) :]
        if arg.startswith("-A") and len(arg) > 2 and not arg.startswith("-A="):
            return arg[2:]
    return None


def celery_command(app: Celery, argv: Sequence[str] | None = None) -> str:
    """``celery -A <app>``: the ``-A`` value of this process, else the app's main name, else ``proj``."""
    name = app_argument(sys.argv if argv is None else argv) or app.main or "proj"
    return f"celery -A {shlex.quote(name)}"
