"""The Reliability page inside Flower: failed and pending rows, replay and purge, metrics.

Start Flower with it: ``celery -A proj reliable flower [any celery flower option]``, or add it
to a Flower application you build yourself with :func:`install`. Supported: Flower 2.2
(``pip install celery_reliable[flower]``); it relies on Flower's handler classes and layout.
"""

from __future__ import annotations

import logging
from typing import Any

import flower  # type: ignore[import-untyped]
from prometheus_client import REGISTRY
from tornado.options import define, options

from ...config import get_settings
from ...exceptions import ImproperlyConfigured
from .. import metrics
from .api import api_rules
from .nav import nav_transform
from .routes import page_rules

logger = logging.getLogger(__name__)

#: Flower versions this page is built and tested for: ``(lowest, first unsupported)``.
SUPPORTED = ((2, 2), (2, 3))

define(
    "reliable_metrics_cache", type=float, default=metrics.DEFAULT_CACHE_SECONDS,
    help="seconds a /metrics reading of the celery_reliable tables is reused",
)  # fmt: skip
define("reliable_nav_link", type=bool, default=True, help="add a Reliability link to Flower's navigation bar")

#: The collector this process registered (Prometheus' default registry takes one per metric name).
_collector: list[metrics.ReliableCollector] = []


def check_version(version: str | None = None) -> None:
    """Refuse a Flower version the page was not built for (its handler classes may differ).

    Raises:
        ImproperlyConfigured: naming the installed and the supported versions.
    """
    version = version or str(flower.__version__)
    try:
        found = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        found = (0, 0)
    low, high = SUPPORTED
    if not low <= found < high:
        raise ImproperlyConfigured(
            f"the celery_reliable Flower page supports Flower >={low[0]}.{low[1]},<{high[0]}.{high[1]}, "
            f"found {version}; install a supported version (pip install 'celery_reliable[flower]')."
        )


def url_prefix(flower_app: Any) -> str:
    """Flower's ``--url_prefix`` as a path prefix ("" or "/prefix")."""
    prefix = str(getattr(flower_app.options, "url_prefix", "") or "").strip("/")
    return f"/{prefix}" if prefix else ""


def install(flower_app: Any, *, metrics_cache: float | None = None, nav_link: bool | None = None) -> None:
    """Add the page, its JSON API and the table metrics to a ``flower.app.Flower`` application.

    Handlers go in with tornado's ``Application.add_handlers`` (ahead of Flower's catch-all
    404), so they are served on Flower's port, behind Flower's authentication. The app's
    ``reliable_*`` settings are validated first (:class:`ImproperlyConfigured` if one is not). The metrics
    collector joins Prometheus' default registry, which Flower serves on ``/metrics``; it is
    registered once per process.
    """
    check_version()
    get_settings(flower_app.capp)  # an invalid reliable_* setting stops Flower now, with its message
    prefix = url_prefix(flower_app)
    flower_app.add_handlers(r".*", page_rules(prefix) + api_rules(prefix))
    if options.reliable_nav_link if nav_link is None else nav_link:
        flower_app.add_transform(nav_transform(f"{prefix}/reliability"))
    if not _collector:
        cache = options.reliable_metrics_cache if metrics_cache is None else metrics_cache
        try:
            collector = metrics.ReliableCollector(flower_app.capp, cache_seconds=cache)
        except ValueError:
            raise ImproperlyConfigured(
                f"--reliable_metrics_cache={cache!r} is not valid: expected a number of seconds from 0 to "
                f"{metrics.MAX_CACHE_SECONDS:g} (how long a /metrics reading of the tables is reused)"
            ) from None
        REGISTRY.register(collector)
        _collector.append(collector)
    logger.info("celery_reliable: Reliability page at %s/reliability", prefix)


__all__ = ["SUPPORTED", "check_version", "install"]
