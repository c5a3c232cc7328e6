"""Every ``reliable_*`` setting: its type, default and meaning, in one place.

Settings are read from ``app.conf`` (so ``config_from_object``, Django's ``CELERY_`` namespace and
``app.conf.update`` all work) with ``app.conf.get``: never ``add_defaults``, which would shadow the
values a user sets with ``config_from_object``.
"""

from __future__ import annotations

import dataclasses
import difflib
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from celery import Celery

from .exceptions import ImproperlyConfigured
from .settings_rules import (
    DAY,
    check_bounds,
    check_retry_policies,
    coerce,
    configured_keys,
    count,
    doc,
    markdown_table,
    seconds,
)
from .settings_rules import PREFIX as PREFIX

#: Task names or fnmatch patterns (``billing.*``).
TaskPatterns = tuple[str, ...]


@dataclass(frozen=True)
class ReliableSettings:
    """All celery_reliable settings; the Celery key of field ``x`` is ``reliable_x``."""

    database_url: str = field(
        default="sqlite:///celery_reliable.sqlite3",
        metadata=doc(
            "SQLAlchemy URL of the reliability tables (failed tasks, processed ids). "
            "Point it at the database your tasks write to, so completion can be recorded "
            "in the task's own transaction."
        ),
    )
    database_alias: str = field(
        default="default",
        metadata=doc("Django: the DATABASES alias of the tables' database when reliable_database_url is not set."),
    )
    max_retries: int = field(
        default=5,
        metadata=doc("Retries of a failing task (and of a lost worker) before the failure is stored.", count(0, 1000)),
    )
    retry_backoff: float = field(
        default=2.0,
        metadata=doc("Base of the exponential backoff, seconds: retry n waits up to backoff * 2**n.", seconds(DAY)),
    )
    retry_backoff_max: float = field(
        default=300.0,
        metadata=doc(
            "Longest wait between retries, seconds; also kept below the visibility timeout.", seconds(7 * DAY)
        ),
    )
    retry_jitter: bool = field(
        default=True,
        metadata=doc("Full jitter: wait a random time between 0 and the backoff, to spread retries."),
    )
    retry_for: tuple[str, ...] = field(
        default=("builtins.Exception",),
        metadata=doc("Dotted names of the exceptions that are retried (subclasses included)."),
    )
    permanent_exceptions: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Dotted names of exceptions that are stored at once without retry, "
            "in addition to celery_reliable.PermanentError."
        ),
    )
    retry_policies: Mapping[str, Mapping[str, float]] = field(
        default_factory=dict,
        metadata=doc(
            "Per-exception retry policy: {'pkg.mod.Error': {'max_retries': 10, 'backoff': 1, "
            "'backoff_max': 60, 'countdown': 5}}; the most specific class wins."
        ),
    )
    idempotent: bool = field(
        default=False,
        metadata=doc("Make every ReliableTask idempotent: a task id already completed is not run again."),
    )
    idempotency_retention: float = field(
        default=7 * 24 * 3600.0,
        metadata=doc("How long completed task ids are kept, seconds (longer than any redelivery).", seconds(365 * DAY)),
    )
    idempotency_flush_interval: float | None = field(
        default=0.02,
        metadata=doc(
            "Seconds an idempotent task's completion record may wait, after its message is acknowledged, to be "
            "written with others in one statement by a thread of the pool process; None writes each record before "
            "the acknowledgement. A process killed in that interval forgets those ids (see guarantees).",
            seconds(10.0),
        ),
    )
    visibility_timeout: float = field(
        default=600.0,
        metadata=doc(
            "Redis: seconds before an unacknowledged message of a dead worker is delivered again. "
            "Raised automatically above the longest task time_limit.",
            seconds(30 * DAY, low_open=True),
        ),
    )
    restore_interval: float = field(
        default=10.0,
        metadata=doc(
            "Redis: seconds between sweeps that give back messages of dead workers.", seconds(DAY, low_open=True)
        ),
    )
    worker_heartbeat: float | None = field(
        default=1.0,
        metadata=doc(
            "Redis, with the atomic fetch: seconds between the heartbeats of each worker's main process. The "
            "messages a dead worker held go back to their queues about three beats after it died (its connections "
            "are gone), not after the visibility timeout. None: off.",
            seconds(60.0, low_open=True),
        ),
    )
    worker_lost_after: float = field(
        default=60.0,
        metadata=doc(
            "Redis: a worker whose heartbeat is this many seconds old counts as lost even though a connection of "
            "its name is still open (a host that vanished leaves half-open connections), or when the server refuses "
            "CLIENT LIST; its messages go back to their queues.",
            seconds(DAY, low_open=True),
        ),
    )
    reconcile_after: float | None = field(
        default=60.0,
        metadata=doc(
            "Redis: seconds after which the relay looks in the broker for a message sent from the pending table "
            "(the outbox) whose task has no outcome yet, and sends it again, same task id, if the broker lost it "
            "(a crash without persistence, a failover, a flush). None: off.",
            seconds(DAY, low_open=True),
        ),
    )
    reconcile_rabbitmq_after: float | None = field(
        default=None,
        metadata=doc(
            "RabbitMQ (a queue that cannot be searched by id): seconds after which a message sent from the pending "
            "table whose task has no outcome yet is sent again, same task id, without looking in the broker. A "
            "message still waiting in a queue that long then runs twice (an idempotent task skips it): set it well "
            "above the longest wait of your queues. None (the default): off.",
            seconds(30 * DAY, low_open=True),
        ),
    )
    outbox_only: bool = field(
        default=False,
        metadata=doc(
            "Declare that every message of this app is sent through the outbox (or publish()'s pending table) with "
            "the delivery ledger on: the doctor then counts a Redis without persistence as a delay, not a loss."
        ),
    )
    redis_atomic_fetch: bool = field(
        default=True,
        metadata=doc(
            "Redis: workers take each message off the queue and record it as unacknowledged in one atomic "
            "step (a Lua script; Redis 6.2 or later), so a worker killed in between cannot lose it. "
            "Needs the celery_reliable worker consumer (worker_consumer left at Celery's default)."
        ),
    )
    apply_transport_defaults: bool = field(
        default=True,
        metadata=doc(
            "Apply the recommended broker settings (visibility timeout, restore sweep, "
            "prefetch multiplier 1, a socket connect timeout) unless you set them yourself."
        ),
    )
    worker_gc_freeze: bool = field(
        default=True,
        metadata=doc(
            "Prefork workers: gc.freeze() what the main process loaded before the pool forks, so the "
            "pool processes' garbage collections do not copy the pages they share with it."
        ),
    )
    cleanup_interval: float | None = field(
        default=3600.0,
        metadata=doc(
            "Seconds between runs of the beat task celery_reliable.cleanup, which deletes "
            "processed ids and sent pending rows past their retention; None leaves it out of the beat schedule.",
            seconds(30 * DAY, low_open=True),
        ),
    )
    cleanup_time_limit: float | None = field(
        default=60.0,
        metadata=doc(
            "Seconds after which a run of celery_reliable.cleanup starts no new batch of deletes "
            "(a batch is 5000 rows); the next run goes on where it stopped. None: no limit.",
            seconds(DAY),
        ),
    )
    publish_retries: int = field(
        default=3,
        metadata=doc(
            "publish(): sends tried after the first one fails, before the message goes to the pending table.",
            count(0, 100),
        ),
    )
    publish_retry_backoff: float = field(
        default=0.2,
        metadata=doc(
            "publish(): base of the backoff between send tries, seconds (doubling, full jitter).", seconds(60.0)
        ),
    )
    publish_timeout: float = field(
        default=5.0,
        metadata=doc(
            "publish(): seconds to wait for the broker to connect and (RabbitMQ) to confirm a message.",
            seconds(600.0, low_open=True),
        ),
    )
    redis_wait_replicas: int = field(
        default=0,
        metadata=doc(
            "Redis brokers: a send counts as done only when this many replicas have the message "
            "(Redis WAIT on the same connection); fewer in time is a failed send, retried and then kept "
            "in the pending table. 0: do not wait.",
            count(0, 100),
        ),
    )
    redis_wait_timeout: float = field(
        default=1.0,
        metadata=doc(
            "Seconds a send waits for reliable_redis_wait_replicas replicas to acknowledge.",
            seconds(600.0, low_open=True),
        ),
    )
    publish_all: bool = field(
        default=False,
        metadata=doc(
            "Send every ReliableTask apply_async()/delay() (and, on a ReliableCelery app, send_task()) "
            "through publish(): retried, confirmed, kept in the pending table when the broker is unreachable."
        ),
    )
    external_tasks: TaskPatterns = field(
        default=(),
        metadata=doc(
            "Names (fnmatch patterns such as 'billing.*') of tasks run by other code bases: publish(), the "
            "relay and replay accept them although this app does not register them (send_task by name)."
        ),
    )
    relay_interval: float | None = field(
        default=5.0,
        metadata=doc(
            "Seconds between runs of the beat task celery_reliable.relay, which sends pending "
            "messages; None leaves it out of the beat schedule.",
            seconds(DAY, low_open=True),
        ),
    )
    beat_task_events: bool = field(
        default=False,
        metadata=doc(
            "Send task events (Flower, celery events) for the library's beat tasks celery_reliable.relay and "
            "celery_reliable.cleanup; off, a relay run every few seconds does not fill Flower's task list."
        ),
    )
    relay_batch_size: int = field(
        default=2000,
        metadata=doc(
            "Pending rows claimed and published per batch by the relay (on Redis one pipeline, on RabbitMQ "
            "one wait for confirms per batch).",
            count(1, 100_000),
        ),
    )
    relay_time_limit: float = field(
        default=30.0,
        metadata=doc("A relay pass stops claiming new batches after this many seconds.", seconds(DAY, low_open=True)),
    )
    relay_lease: float = field(
        default=60.0,
        metadata=doc(
            "Seconds a claimed row belongs to its relay; after that another relay may take it (on PostgreSQL "
            "the longest a relay's batch transaction may idle).",
            seconds(DAY, low_open=True),
        ),
    )
    relay_max_attempts: int = field(
        default=20,
        metadata=doc(
            "Failed sends of one pending row before it is marked dead for a person to act on.", count(1, 1000)
        ),
    )
    relay_backoff: float = field(
        default=5.0,
        metadata=doc(
            "Base of the backoff before a pending row that failed to send is tried again, seconds.", seconds(DAY)
        ),
    )
    relay_backoff_max: float = field(
        default=600.0,
        metadata=doc(
            "Longest wait before a pending row that failed to send is tried again, seconds.", seconds(7 * DAY)
        ),
    )
    outbox_grace: float = field(
        default=10.0,
        metadata=doc(
            "Seconds an outbox message waits for its post-commit send before the relay takes it "
            "over (a process that died between commit and send).",
            seconds(DAY),
        ),
    )
    pending_retention: float = field(
        default=24 * 3600.0,
        metadata=doc(
            "How long sent pending rows are kept before the cleanup task deletes them, seconds.", seconds(365 * DAY)
        ),
    )
    store_unknown_messages: bool = field(
        default=True,
        metadata=doc("Store messages for unknown task names and invalid messages instead of dropping them."),
    )
    flower_unauthenticated_actions: bool = field(
        default=False,
        metadata=doc(
            "Flower's Reliability page: allow its replay and purge actions when Flower runs without "
            "authentication (no --basic-auth, --auth). Off: they are refused with 403, since anyone who can "
            "reach Flower's port could replay or delete failed tasks."
        ),
    )
    failure_events: bool = field(
        default=True,
        metadata=doc(
            "Send a 'task-reliable-failure-stored' event (seen by Flower) for every stored failure, and, where "
            "worker_send_task_events is on, a 'task-reliable-resent' event for every message the relay sends."
        ),
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        check_retry_policies(self.retry_policies)


#: Setting name -> dataclass field, for validation and docs.
FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in fields(ReliableSettings)}

_cache: weakref.WeakKeyDictionary[Celery, ReliableSettings] = weakref.WeakKeyDictionary()
_database_sources: list[Callable[[Celery, str], str | None]] = []


def add_database_source(source: Callable[[Celery, str], str | None]) -> None:
    """Let ``source(app, alias)`` (contrib.django) give the URL when ``reliable_database_url`` is not set."""
    if source not in _database_sources:
        _database_sources.append(source)
        _cache.clear()


def load_settings(app: Celery) -> ReliableSettings:
    """Read, validate and return the settings of ``app`` (not cached).

    Raises:
        ImproperlyConfigured: an unknown key, or a value of the wrong type or range.
    """
    values: dict[str, Any] = {}
    for name, key in configured_keys(app).items():
        if name not in FIELDS:
            near = difflib.get_close_matches(name, FIELDS, n=1)
            hint = f" Did you mean {PREFIX}{near[0]}?" if near else ""
            raise ImproperlyConfigured(
                f"Unknown setting {key!r} (value {app.conf.get(key)!r}).{hint} "
                f"Valid settings: {', '.join(PREFIX + n for n in FIELDS)}."
            )
        value = app.conf.get(key)
        if value is None:
            if "None" in str(FIELDS[name].type):
                values[name] = None
            continue
        values[name] = coerce(FIELDS[name], name, value)
    urls = (source(app, values.get("database_alias", "default")) for source in _database_sources)
    if "database_url" not in values and (url := next((u for u in urls if u is not None), None)) is not None:
        values["database_url"] = url
    return ReliableSettings(**values)


def get_settings(app: Celery) -> ReliableSettings:
    """The validated settings of ``app``, read once and cached per app."""
    cached = _cache.get(app)
    if cached is None:
        cached = _cache[app] = load_settings(app)
    return cached


def reset_settings(app: Celery) -> None:
    """Forget the cached settings of ``app`` (after changing its configuration)."""
    _cache.pop(app, None)


def settings_table() -> str:
    """The Markdown reference table of every setting (kept in docs/configuration.md)."""
    return markdown_table(ReliableSettings)
