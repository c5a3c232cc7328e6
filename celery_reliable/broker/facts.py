"""Facts about the broker and the libraries that talk to it, read from the app and the installed packages.

Which transport an app's broker URL names, how long it holds an unacknowledged message, which
transport the workers consume Redis with (the atomic fetch, and why not when not), and which
Celery, kombu and redis-py run here with what they can do. Where Celery or kombu expose a feature
it is detected; the version numbers only decide what the doctor reports and whether the atomic
Redis fetch, which replaces two private kombu methods, may run. Nothing here connects.
"""

from __future__ import annotations

import inspect
from importlib import metadata
from typing import Any

from celery import Celery

#: RabbitMQ's default ``consumer_timeout`` (30 min): an unacked delivery held longer is requeued.
AMQP_CONSUMER_TIMEOUT = 1800.0
#: kombu's Redis visibility timeout when none is set.
KOMBU_VISIBILITY_TIMEOUT = 3600.0

REDIS_SCHEMES = ("redis", "rediss", "sentinel", "socket")
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")
#: The one transport map: the worker's consuming transport when ``reliable_redis_atomic_fetch`` is on
#: (:mod:`celery_reliable.broker.redis_fetch`), by broker URL scheme.
ATOMIC_FETCH_TRANSPORTS = {
    "redis": "celery_reliable.broker.redis_fetch:Transport",
    "rediss": "celery_reliable.broker.redis_fetch:Transport",
    "sentinel": "celery_reliable.broker.redis_fetch:SentinelTransport",
}


def broker_scheme(app: Celery) -> str:
    """The transport name of the app's broker (``redis``, ``amqp``, ``memory``...)."""
    transport = app.conf.broker_transport
    if transport in ATOMIC_FETCH_TRANSPORTS.values():
        return "sentinel" if "Sentinel" in str(transport) else "redis"
    if transport:
        return str(transport).split(":")[0].split("+")[0].lower()
    raw: Any = app.conf.broker_read_url or app.conf.broker_url or ""
    if isinstance(raw, list | tuple):
        raw = raw[0] if raw else ""
    url = str(raw).split(";")[0]
    return url.split("://", 1)[0].split("+")[0].lower() if "://" in url else "amqp"


def url_schemes(app: Celery) -> set[str]:
    """The schemes of every broker URL the app's workers read from (failover lists included)."""
    raw: Any = app.conf.broker_read_url or app.conf.broker_url or ""
    urls = [str(url).strip() for url in (raw if isinstance(raw, list | tuple) else str(raw).split(";"))]
    return {url.split("://", 1)[0].lower() if "://" in url else "" for url in urls if url}


def visibility_timeout(app: Celery) -> float | None:
    """Seconds after which the broker redelivers an unacknowledged message, if it does."""
    scheme = broker_scheme(app)
    if scheme in REDIS_SCHEMES:
        options = app.conf.broker_transport_options or {}
        return float(options.get("visibility_timeout", KOMBU_VISIBILITY_TIMEOUT))
    if scheme in AMQP_SCHEMES:
        return AMQP_CONSUMER_TIMEOUT
    return None


def fetch_transport_off(app: Celery, enabled: bool) -> str | None:
    """Why the atomic fetch cannot serve this app's broker, or None when it can.

    Only for ``redis://``, ``rediss://`` and ``sentinel://`` broker URLs (not mixed) on kombu's own
    Redis transports (not Unix sockets or a transport chosen with ``broker_transport``), on a
    tested kombu whose fetch methods it was written against. ``enabled``:
    ``reliable_redis_atomic_fetch``.
    """
    if not enabled:
        return "reliable_redis_atomic_fetch is False"
    mismatch = kombu_fetch_mismatch()
    if mismatch is not None:
        return mismatch
    if app.conf.broker_transport not in (None, "", *ATOMIC_FETCH_TRANSPORTS, *ATOMIC_FETCH_TRANSPORTS.values()):
        return f"broker_transport is {app.conf.broker_transport!r}"
    schemes = url_schemes(app)
    if len({ATOMIC_FETCH_TRANSPORTS.get(scheme) for scheme in schemes} - {None}) != 1 or not schemes <= set(
        ATOMIC_FETCH_TRANSPORTS
    ):
        shown = ", ".join(f"{scheme or '?'}://" for scheme in sorted(schemes)) or "no URL"
        return f"only redis://, rediss:// or sentinel:// broker URLs are supported (not mixed), not {shown}"
    return None


def fetch_transport(app: Celery) -> str:
    """The atomic-fetch transport of the app's broker URLs (check :func:`fetch_transport_off` first)."""
    return ATOMIC_FETCH_TRANSPORTS[sorted(url_schemes(app))[0]]


# -- versions ------------------------------------------------------------------------------

#: Minor versions each dependency is tested on (CI runs the compat subset on the older ones).
TESTED: dict[str, tuple[tuple[int, int], ...]] = {
    "celery": ((5, 5), (5, 6), (5, 7)),
    "kombu": ((5, 5), (5, 6), (5, 7)),
}
#: The distributions whose versions the doctor reports.
REPORTED = ("celery", "kombu", "redis", "amqp", "billiard", "flower", "SQLAlchemy")


def minor(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string such as ``5.6.2`` or ``5.7.0rc1``."""
    parts: list[int] = []
    for part in version.split(".")[:2]:
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        parts.append(int(digits or 0))
    while len(parts) < 2:
        parts.append(0)
    return parts[0], parts[1]


def installed(name: str) -> str | None:
    """The installed version of distribution ``name``, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def is_tested(name: str, version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed one) of ``name`` is a minor we test on."""
    version = version if version is not None else installed(name)
    return version is not None and minor(version) in TESTED.get(name, ())


def found() -> list[tuple[str, str, bool | None]]:
    """(name, version, tested) of each reported dependency that is installed; tested is None
    where we make no claim (a library whose every release in our range is expected to work)."""
    rows: list[tuple[str, str, bool | None]] = []
    for name in REPORTED:
        version = installed(name)
        if version is not None:
            rows.append((name, version, is_tested(name, version) if name in TESTED else None))
    return rows


def _celery_minor() -> tuple[int, int]:
    import celery

    return int(celery.VERSION[0]), int(celery.VERSION[1])


#: Celery 5.7's ``send_task`` applies a registered task's own options (queue, time limits...) and
#: leaves ``ignore_result`` unset (None: the worker uses the task's setting); before 5.7 it did
#: neither (``ignore_result`` False). No attribute tells these apart, so the version does.
SEND_TASK_APPLIES_TASK_OPTIONS = _celery_minor() >= (5, 7)
SEND_TASK_IGNORE_RESULT: bool | None = None if SEND_TASK_APPLIES_TASK_OPTIONS else False


def celery_retries_lost_workers() -> bool:
    """Whether Celery's own request can send a retry when its pool process was lost
    (``retry_on_worker_lost``, Celery 5.7); older ones only requeue or fail the message."""
    from celery.worker.request import Request

    return callable(getattr(Request, "_retry_worker_lost", None))


#: The parameters of kombu's private Redis fetch methods that the atomic fetch replaces, as the
#: tested kombu releases declare them.
_POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD
_FETCH_SIGNATURES = {
    "_brpop_start": (("self", _POSITIONAL), ("timeout", _POSITIONAL)),
    "_brpop_read": (("self", _POSITIONAL), ("options", inspect.Parameter.VAR_KEYWORD)),
}


def kombu_fetch_mismatch() -> str | None:
    """Why the atomic fetch must not replace this kombu's Redis fetch, or None when it may.

    The atomic fetch overrides ``Channel._brpop_start`` and ``_brpop_read``: it runs only on a
    tested kombu minor whose methods still take the parameters it was written against.
    """
    version = installed("kombu") or "unknown"
    if not is_tested("kombu", version):
        tested = ", ".join(f"{a}.{b}" for a, b in TESTED["kombu"])
        return f"kombu {version} is not a tested release (tested: {tested})"
    from kombu.transport import redis as kombu_redis

    for name, expected in _FETCH_SIGNATURES.items():
        method = getattr(kombu_redis.Channel, name, None)
        if method is None:
            return f"kombu {version} has no Redis Channel.{name}"
        params = tuple((p.name, p.kind) for p in inspect.signature(method).parameters.values())
        if params != expected:
            return f"kombu {version} changed Redis Channel.{name}{inspect.signature(method)}"
    return None


def kombu_sweeps_on_its_own() -> bool:
    """Whether kombu's Redis transport runs its restore sweep at the period we set
    (``unacked_restore_interval`` and ``unacked_restore_throttle``, kombu 5.7). Before 5.7 the
    sweep scans only every 100 s, whatever the visibility timeout."""
    from kombu.transport import redis as kombu_redis

    return hasattr(kombu_redis.Channel, "unacked_restore_throttle")
