"""Run Flower with the Reliability page: what ``celery flower`` does, plus :func:`install`.

Flower's own option handling is used as is (command line, ``--conf`` file, ``FLOWER_*``
environment variables), so every ``celery flower`` option works unchanged.
"""

from __future__ import annotations

import atexit
import signal
import sys

from celery import Celery
from flower import command  # type: ignore[import-untyped]
from flower.app import Flower  # type: ignore[import-untyped]
from flower.urls import settings  # type: ignore[import-untyped]
from tornado.options import options

from . import check_version, install


def run(app: Celery, argv: list[str], quiet: bool = False) -> None:
    """Serve Flower for ``app`` with the page until SIGTERM or Ctrl-C."""
    check_version()
    command.apply_env_options()
    command.apply_options(sys.argv[0], argv)
    command.extract_settings()
    command.setup_logging()
    flower_app = Flower(capp=app, options=options, **settings)
    install(flower_app)
    atexit.register(flower_app.stop)
    signal.signal(signal.SIGTERM, command.sigterm_handler)
    port = flower_app.start_http_server()
    if not quiet:
        command.print_banner(app, "ssl_options" in settings, port)
    try:
        flower_app.start()
    except (KeyboardInterrupt, SystemExit):
        pass
