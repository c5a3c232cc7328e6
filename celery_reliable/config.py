"""Every ``reliable_*`` setting: its type, default and meaning, in one place.

Settings are read from ``app.conf`` (so ``config_from_object``, Django's ``CELERY_`` namespace and
``app.conf.update`` all work) with ``app.conf.get``: never ``add_defaults``, which would shadow the
values a user sets with ``config_from_object``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from celery import Celery

from .exceptions import ImproperlyConfigured

#: Prefix of every key in the Celery configuration.
PREFIX = "reliable_"

#: Seconds in a day, for the upper bounds below.
DAY = 24 * 3600.0


@dataclass(frozen=True)
class Bounds:
    """The values a numeric setting accepts: finite, from ``low`` (excluded if ``low_open``) to ``high``.

    Every numeric setting has an upper bound, so a typo (an extra zero, ``float("inf")``, NaN from a
    bad computation) is refused at start instead of stalling a relay pass or a task's retries.
    """

    low: float
    high: float
    low_open: bool = False
    seconds: bool = False

    def accepts(self, value: float) -> bool:
        if not math.isfinite(value) or value > self.high:
            return False
        return value > self.low if self.low_open else value >= self.low

    def words(self, integer: bool) -> str:
        kind = "an integer" if integer else ("a number of seconds" if self.seconds else "a number")
        low = f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        return f"{kind} {low} and <= {_amount(self.high)}"


def _amount(value: float) -> str:
    """``100000``, or ``2592000 (30 days)`` for a whole number of days."""
    text = f"{value:.0f}" if value == int(value) else f"{value:g}"
    days = value / DAY
    if value >= DAY and days == int(days):
        return f"{text} ({days:.0f} day{'s' if days != 1 else ''})"
    return text


def _doc(text: str, bounds: Bounds | None = None) -> dict[str, Any]:
    return {"doc": text, "bounds": bounds}


def _seconds(high: float, low_open: bool = False) -> Bounds:
    return Bounds(0.0, high, low_open=low_open, seconds=True)


def _count(low: int, high: int) -> Bounds:
    return Bounds(low, high)


#: What each key of a ``reliable_retry_policies`` entry accepts (the same as the task-wide settings).
POLICY_BOUNDS = {
    "max_retries": _count(0, 1000),
    "backoff": _seconds(DAY),
    "backoff_max": _seconds(7 * DAY),
    "countdown": _seconds(7 * DAY),
}


#: Task names or fnmatch patterns (``billing.*``).
TaskPatterns = tuple[str, ...]


@dataclass(frozen=True)
class ReliableSettings:
    """All celery_reliable settings; the Celery key of field ``x`` is ``reliable_x``."""

    database_url: str = field(
        default="sqlite:///celery_reliable.sqlite3",
        metadata=_doc(
            "SQLAlchemy URL of the reliability tables (failed tasks, processed ids). "
            "Point it at the database your tasks write to, so completion can be recorded "
            "in the task's own transaction."
        ),
    )
    max_retries: int = field(
        default=5,
        metadata=_doc(
            "Retries of a failing task (and of a lost worker) before the failure is stored.", _count(0, 1000)
        ),
    )
    retry_backoff: float = field(
        default=2.0,
        metadata=_doc("Base of the exponential backoff, seconds: retry n waits up to backoff * 2**n.", _seconds(DAY)),
    )
    retry_backoff_max: float = field(
        default=300.0,
        metadata=_doc(
            "Longest wait between retries, seconds; also kept below the visibility timeout.", _seconds(7 * DAY)
        ),
    )
    retry_jitter: bool = field(
        default=True,
        metadata=_doc("Full jitter: wait a random time between 0 and the backoff, to spread retries."),
    )
    retry_for: tuple[str, ...] = field(
        default=("builtins.Exception",),
        metadata=_doc("Dotted names of the exceptions that are retried (subclasses included)."),
    )
    permanent_exceptions: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "Dotted names of exceptions that are stored at once without retry, "
            "in addition to celery_reliable.PermanentError."
        ),
    )
    retry_policies: Mapping[str, Mapping[str, float]] = field(
        default_factory=dict,
        metadata=_doc(
            "Per-exception retry policy: {'pkg.mod.Error': {'max_retries': 10, 'backoff': 1, "
            "'backoff_max': 60, 'countdown': 5}}; the most specific class wins."
        ),
    )
    idempotent: bool = field(
        default=False,
        metadata=_doc("Make every ReliableTask idempotent: a task id already completed is not run again."),
    )
    idempotency_retention: float = field(
        default=7 * 24 * 3600.0,
        metadata=_doc(
            "How long completed task ids are kept, seconds (longer than any redelivery).", _seconds(365 * DAY)
        ),
    )
    visibility_timeout: float = field(
        default=600.0,
        metadata=_doc(
            "Redis: seconds before an unacknowledged message of a dead worker is delivered again. "
            "Raised automatically above the longest task time_limit.",
            _seconds(30 * DAY, low_open=True),
        ),
    )
    restore_interval: float = field(
        default=10.0,
        metadata=_doc(
            "Redis: seconds between sweeps that give back messages of dead workers.", _seconds(DAY, low_open=True)
        ),
    )
    redis_atomic_fetch: bool = field(
        default=True,
        metadata=_doc(
            "Redis: workers take each message off the queue and record it as unacknowledged in one atomic "
            "step (a Lua script; Redis 6.2 or later), so a worker killed in between cannot lose it. "
            "Needs the celery_reliable worker consumer (worker_consumer left at Celery's default)."
        ),
    )
    apply_transport_defaults: bool = field(
        default=True,
        metadata=_doc(
            "Apply the recommended broker settings (visibility timeout, restore sweep, "
            "prefetch multiplier 1, a socket connect timeout) unless you set them yourself."
        ),
    )
    cleanup_interval: float | None = field(
        default=3600.0,
        metadata=_doc(
            "Seconds between runs of the beat task celery_reliable.cleanup, which deletes "
            "processed ids past their retention; None leaves it out of the beat schedule.",
            _seconds(30 * DAY, low_open=True),
        ),
    )
    publish_retries: int = field(
        default=3,
        metadata=_doc(
            "publish(): sends tried after the first one fails, before the message goes to the pending table.",
            _count(0, 100),
        ),
    )
    publish_retry_backoff: float = field(
        default=0.2,
        metadata=_doc(
            "publish(): base of the backoff between send tries, seconds (doubling, full jitter).", _seconds(60.0)
        ),
    )
    publish_timeout: float = field(
        default=5.0,
        metadata=_doc(
            "publish(): seconds to wait for the broker to connect and (RabbitMQ) to confirm a message.",
            _seconds(600.0, low_open=True),
        ),
    )
    redis_wait_replicas: int = field(
        default=0,
        metadata=_doc(
            "Redis brokers: a send counts as done only when this many replicas have the message "
            "(Redis WAIT on the same connection); fewer in time is a failed send, retried and then kept "
            "in the pending table. 0: do not wait.",
            _count(0, 100),
        ),
    )
    redis_wait_timeout: float = field(
        default=1.0,
        metadata=_doc(
            "Seconds a send waits for reliable_redis_wait_replicas replicas to acknowledge.",
            _seconds(600.0, low_open=True),
        ),
    )
    publish_all: bool = field(
        default=False,
        metadata=_doc(
            "Send every ReliableTask apply_async()/delay() (and, on a ReliableCelery app, send_task()) "
            "through publish(): retried, confirmed, kept in the pending table when the broker is unreachable."
        ),
    )
    external_tasks: TaskPatterns = field(
        default=(),
        metadata=_doc(
            "Names (fnmatch patterns such as 'billing.*') of tasks run by other code bases: publish(), the "
            "relay and replay accept them although this app does not register them (send_task by name)."
        ),
    )
    relay_interval: float | None = field(
        default=5.0,
        metadata=_doc(
            "Seconds between runs of the beat task celery_reliable.relay, which sends pending "
            "messages; None leaves it out of the beat schedule.",
            _seconds(DAY, low_open=True),
        ),
    )
    relay_batch_size: int = field(
        default=2000,
        metadata=_doc(
            "Pending rows claimed and published per batch by the relay (on Redis one pipeline, on RabbitMQ "
            "one wait for confirms per batch).",
            _count(1, 100_000),
        ),
    )
    relay_time_limit: float = field(
        default=30.0,
        metadata=_doc("A relay pass stops claiming new batches after this many seconds.", _seconds(DAY, low_open=True)),
    )
    relay_lease: float = field(
        default=60.0,
        metadata=_doc(
            "Seconds a claimed row belongs to its relay; after that another relay may take it.",
            _seconds(DAY, low_open=True),
        ),
    )
    relay_max_attempts: int = field(
        default=20,
        metadata=_doc(
            "Failed sends of one pending row before it is marked dead for a person to act on.", _count(1, 1000)
        ),
    )
    relay_backoff: float = field(
        default=5.0,
        metadata=_doc(
            "Base of the backoff before a pending row that failed to send is tried again, seconds.", _seconds(DAY)
        ),
    )
    relay_backoff_max: float = field(
        default=600.0,
        metadata=_doc(
            "Longest wait before a pending row that failed to send is tried again, seconds.", _seconds(7 * DAY)
        ),
    )
    outbox_grace: float = field(
        default=10.0,
        metadata=_doc(
            "Seconds an outbox message waits for its post-commit send before the relay takes it "
            "over (a process that died between commit and send).",
            _seconds(DAY),
        ),
    )
    pending_retention: float = field(
        default=24 * 3600.0,
        metadata=_doc(
            "How long sent pending rows are kept before the cleanup task deletes them, seconds.", _seconds(365 * DAY)
        ),
    )
    store_unknown_messages: bool = field(
        default=True,
        metadata=_doc("Store messages for unknown task names and invalid messages instead of dropping them."),
    )
    flower_unauthenticated_actions: bool = field(
        default=False,
        metadata=_doc(
            "Flower's Reliability page: allow its replay and purge actions when Flower runs without "
            "authentication (no --basic-auth, --auth). Off: they are refused with 403, since anyone who can "
            "reach Flower's port could replay or delete failed tasks."
        ),
    )
    failure_events: bool = field(
        default=True,
        metadata=_doc(
            "Send a 'task-reliable-failure-stored' event (seen by Flower) for every stored failure, and, where "
            "worker_send_task_events is on, a 'task-reliable-resent' event for every message the relay sends."
        ),
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            bounds: Bounds | None = f.metadata.get("bounds")
            value = getattr(self, f.name)
            if bounds is None or value is None:
                continue
            if not bounds.accepts(value):
                raise _bad(f.name, value, accepted(f))
        for exc_name, policy in self.retry_policies.items():
            if not isinstance(policy, Mapping):
                raise _bad("retry_policies", {exc_name: policy}, "a mapping of keyword to number")
            unknown = set(policy) - set(POLICY_BOUNDS)
            if unknown:
                raise _bad(
                    "retry_policies",
                    {exc_name: dict(policy)},
                    f"the keys {sorted(POLICY_BOUNDS)} (unknown: {sorted(unknown)})",
                )
            for key, value in policy.items():
                bounds = POLICY_BOUNDS[key]
                if isinstance(value, bool) or not isinstance(value, int | float) or not bounds.accepts(value):
                    raise _bad("retry_policies", {exc_name: dict(policy)}, f"{key!r} as {bounds.words(False)}")


def _bad(name: str, value: object, accepted: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(
        f"{PREFIX}{name} = {value!r} is not valid: expected {accepted}. "
        f"See the configuration reference for {PREFIX}{name}."
    )


#: Setting name -> dataclass field, for validation and docs.
FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in fields(ReliableSettings)}

_TYPE_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "float | None": "a number or None",
    "bool": "True or False",
    "tuple[str, ...]": "a list of dotted exception names",
    "TaskPatterns": "a list of task names or fnmatch patterns",
    "Mapping[str, Mapping[str, float]]": "a mapping of dotted exception name to policy",
}

_cache: weakref.WeakKeyDictionary[Celery, ReliableSettings] = weakref.WeakKeyDictionary()


def describe_type(f: dataclasses.Field[Any]) -> str:
    """Human words for a field's type, used in errors and in the docs table."""
    return _TYPE_NAMES.get(str(f.type), str(f.type))


def accepted(f: dataclasses.Field[Any]) -> str:
    """What a field accepts, in words: its type, and for a number its range."""
    bounds: Bounds | None = f.metadata.get("bounds")
    if bounds is None:
        return describe_type(f)
    return bounds.words(str(f.type) == "int") + (", or None" if "None" in str(f.type) else "")


def _coerce(name: str, value: Any) -> Any:
    """Check ``value`` against the declared type of ``name``; return it in canonical form."""
    f = FIELDS[name]
    kind = str(f.type)
    ok: bool
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind in ("float", "float | None"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif kind == "str":
        ok = isinstance(value, str) and bool(value)
    elif kind == "tuple[str, ...]":
        if isinstance(value, str):
            value = (value,)
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) and re.fullmatch(r"[\w.]+", v) for v in value)
        if ok:
            value = tuple(value)
    elif kind == "TaskPatterns":
        if isinstance(value, str):
            value = (value,)
        pattern = r"[\w.*?\[\]!:-]+"
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) and re.fullmatch(pattern, v) for v in value)
        if ok:
            value = tuple(value)
    else:  # mapping
        ok = isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
        if ok:
            value = {k: dict(v) if isinstance(v, Mapping) else v for k, v in value.items()}
    if not ok:
        raise _bad(name, value, accepted(f))
    return value


def _configured_keys(app: Celery) -> dict[str, str]:
    """Map setting name -> the key it was found under, for every ``reliable_*`` key the user set."""
    namespace = (getattr(app, "namespace", None) or "").upper()
    pattern = re.compile(
        rf"^(?:{re.escape(namespace)}_)?{PREFIX}(.+)$" if namespace else rf"^{PREFIX}(.+)$",
        re.IGNORECASE,
    )
    found: dict[str, str] = {}
    for key in list(app.conf.keys()):
        match = pattern.match(str(key))
        if match:
            found[match.group(1).lower()] = key
    return found


def load_settings(app: Celery) -> ReliableSettings:
    """Read, validate and return the settings of ``app`` (not cached).

    Raises:
        ImproperlyConfigured: an unknown key, or a value of the wrong type or range.
    """
    values: dict[str, Any] = {}
    for name, key in _configured_keys(app).items():
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
        values[name] = _coerce(name, value)
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
    lines = ["| Setting | Type | Default | Meaning |", "|---|---|---|---|"]
    defaults = ReliableSettings()
    for name, f in FIELDS.items():
        default = getattr(defaults, name)
        if isinstance(default, tuple):
            default = list(default)
        lines.append(f"| `{PREFIX}{name}` | {accepted(f)} | `{default!r}` | {f.metadata['doc']} |")
    return "\n".join(lines) + "\n"
