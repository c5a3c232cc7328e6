"""Switch celery_reliable on for an app: validate settings, apply broker defaults, connect hooks.

Called from ``ReliableTask.on_bound`` (so nothing is needed beyond using the task class) and
safe to call again: the work is done once per app.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from celery import Celery, signals

from ..broker.facts import (
    AMQP_SCHEMES,
    REDIS_SCHEMES,
    broker_scheme,
    fetch_transport,
    fetch_transport_off,
    visibility_timeout,
)
from ..config import ReliableSettings, get_settings
from .retry import VISIBILITY_MARGIN

logger = logging.getLogger(__name__)

#: The consumer Celery uses unless told otherwise; replaced by ours only when left at this value.
DEFAULT_CONSUMER = "celery.worker.consumer:Consumer"
RELIABLE_CONSUMER = "celery_reliable.worker.consumer:ReliableConsumer"
#: Celery's default prefetch multiplier; with late ack, 1 keeps fewer messages held per worker.
DEFAULT_PREFETCH = 4
#: Shortest expiry of kombu's restore-sweep lock (``unacked_mutex_expire``) that we set, seconds.
MIN_SWEEP_LOCK = 5.0
#: Added to the longest hard time limit when raising the visibility timeout above it.
TIME_LIMIT_MARGIN = 60.0

_installed: weakref.WeakSet[Celery] = weakref.WeakSet()
#: apps whose visibility timeout we chose (the user did not set one)
_owns_visibility: weakref.WeakSet[Celery] = weakref.WeakSet()


def install(app: Celery) -> ReliableSettings:
    """Validate the settings of ``app`` and switch its reliability hooks on (idempotent)."""
    settings = get_settings(app)
    if app in _installed:
        return settings
    _installed.add(app)
    if settings.apply_transport_defaults:
        _apply_transport_defaults(app, settings)
    wants_consumer = settings.store_unknown_messages or settings.redis_atomic_fetch
    if wants_consumer and app.conf.worker_consumer == DEFAULT_CONSUMER:
        app.conf.worker_consumer = RELIABLE_CONSUMER
    _schedule_cleanup(app, settings)
    from .bootstep import ReliableWorkerStep

    app.steps["worker"].add(ReliableWorkerStep)
    from .ledger import LedgerStep
    from .liveness import Liveness
    from .sweep import RestoreSweep

    app.steps["consumer"].add(RestoreSweep)
    app.steps["consumer"].add(Liveness)
    app.steps["consumer"].add(LedgerStep)
    _connect_receivers()
    return settings


def _apply_transport_defaults(app: Celery, settings: ReliableSettings) -> None:
    scheme = broker_scheme(app)
    if scheme in REDIS_SCHEMES:
        options: dict[str, Any] = dict(app.conf.broker_transport_options or {})
        if "visibility_timeout" not in options:
            options["visibility_timeout"] = settings.visibility_timeout
            _owns_visibility.add(app)
        options.setdefault("unacked_restore_interval", settings.restore_interval)
        options.setdefault("unacked_restore_throttle", 1)
        # kombu's restore sweep holds a Redis lock; a worker killed during its sweep keeps it, and
        # with it every sweep, for kombu's 300 s. Restores are transactions, so a shorter lock
        # only risks two sweeps at once, never a message restored twice.
        options.setdefault("unacked_mutex_expire", max(2 * settings.restore_interval, MIN_SWEEP_LOCK))
        options.setdefault("socket_connect_timeout", 10)
        app.conf.broker_transport_options = options
        if app.conf.worker_prefetch_multiplier == DEFAULT_PREFETCH:
            app.conf.worker_prefetch_multiplier = 1
    elif scheme in AMQP_SCHEMES:
        if app.conf.worker_prefetch_multiplier == DEFAULT_PREFETCH:
            app.conf.worker_prefetch_multiplier = 1


def fit_visibility_timeout(app: Celery, time_limit: float | None) -> None:
    """Raise the visibility timeout we chose above a task's hard time limit.

    A task still running when its message becomes visible again runs twice; a task killed at
    its time limit cannot run longer than that, so this keeps long tasks single.
    """
    if app not in _owns_visibility or not time_limit:
        return
    options = dict(app.conf.broker_transport_options or {})
    needed = float(time_limit) + TIME_LIMIT_MARGIN
    if float(options.get("visibility_timeout", 0)) < needed:
        options["visibility_timeout"] = needed
        app.conf.broker_transport_options = options


def atomic_fetch(app: Celery) -> str | None:
    """The transport the app's workers consume Redis with (:mod:`celery_reliable.broker.redis_fetch`),
    or None when they fetch the way kombu does."""
    if atomic_fetch_off(app) is not None:
        return None
    return fetch_transport(app)


def atomic_fetch_off(app: Celery) -> str | None:
    """Why the app's workers do not fetch atomically from Redis, or None when they do.

    Only for ``redis://``, ``rediss://`` and ``sentinel://`` broker URLs on kombu's own Redis
    transports (not Unix sockets or a transport chosen with ``broker_transport``), and only
    through the celery_reliable consumer.
    """
    if app not in _installed:
        return "celery_reliable is not installed on this app (no ReliableTask)"
    if not _is_reliable_consumer(app.conf.worker_consumer):
        return f"worker_consumer {app.conf.worker_consumer!r} is not celery_reliable's ReliableConsumer"
    return fetch_transport_off(app, get_settings(app).redis_atomic_fetch)


def _is_reliable_consumer(consumer: Any) -> bool:
    """A user's own consumer built on ours keeps the atomic fetch (both resolved as Celery resolves
    ``worker_consumer``)."""
    from kombu.utils.imports import symbol_by_name

    try:
        ours = symbol_by_name(RELIABLE_CONSUMER)
        if isinstance(consumer, str):
            consumer = symbol_by_name(consumer)
    except Exception:
        return False
    return isinstance(consumer, type) and issubclass(consumer, ours)


def retry_ceiling(app: Celery) -> float | None:
    """Longest retry delay that stays below the redelivery timeout (a margin kept)."""
    timeout = visibility_timeout(app)
    if timeout is None:
        return None
    return max(timeout - VISIBILITY_MARGIN, timeout / 2)


def _schedule_cleanup(app: Celery, settings: ReliableSettings) -> None:
    if settings.cleanup_interval is not None:
        app.add_periodic_task(
            settings.cleanup_interval,
            app.signature("celery_reliable.cleanup"),
            name="celery_reliable.cleanup",
            expires=settings.cleanup_interval,
        )
    if settings.relay_interval is not None:
        # A run still queued when the next is due is dropped (expires): relay runs never pile up
        # behind a broker or database outage.
        app.add_periodic_task(
            settings.relay_interval,
            app.signature("celery_reliable.relay"),
            name="celery_reliable.relay",
            expires=settings.relay_interval,
        )


_receivers_connected = False


def _connect_receivers() -> None:
    global _receivers_connected
    if _receivers_connected:
        return
    _receivers_connected = True
    signals.worker_process_init.connect(_after_fork, weak=False)
    signals.worker_ready.connect(_check_schema, weak=False)
    # A pool process that ends normally, and a worker running tasks in its main process (solo
    # or threads pool), write the completion records still waiting.
    signals.worker_process_shutdown.connect(_flush_marks, weak=False)
    signals.worker_shutdown.connect(_flush_marks, weak=False)


def _check_schema(sender: Any = None, **_: Any) -> None:
    """Say loudly at worker start if failures could not be stored (database down or not migrated)."""
    app = getattr(sender, "app", None)
    if app is None or app not in _installed:
        return
    from ..exceptions import StoreError
    from ..store.engine import safe_url
    from ..store.migrate import HEAD_REVISION, stored_revision

    url = safe_url(get_settings(app).database_url)
    try:
        revision = stored_revision(app)
    except StoreError as exc:
        logger.error(
            "celery_reliable: database %s is not reachable (%s); final failures will stay with the broker until it is",
            url,
            exc,
        )
        return
    if revision != HEAD_REVISION:
        logger.error(
            "celery_reliable: tables in %s are at revision %s, expected %s; final failures will stay with "
            "the broker until you run: celery -A %s reliable db upgrade",
            url,
            revision or "none",
            HEAD_REVISION,
            app.main or "proj",
        )


def _after_fork(**_: Any) -> None:
    """Each pool process opens its own database connections."""
    from ..store.engine import reset_after_fork

    for app in list(_installed):
        reset_after_fork(app)


def _flush_marks(**_: Any) -> None:
    from .marks import flush_all

    flush_all()


def installed(app: Celery) -> bool:
    """True once :func:`install` ran for ``app``."""
    return app in _installed
