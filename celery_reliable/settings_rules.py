"""The words and ranges of the ``reliable_*`` settings: what each accepts and how a refusal reads.

Kept apart from :mod:`celery_reliable.config` (the settings themselves) so the field list stays
readable: each field names its bounds with :func:`seconds` or :func:`count` and its doc with
:func:`doc`; the same :class:`Bounds` refuse a bad value at start and write the docs table.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
        return f"{kind} {low} and <= {amount(self.high)}"


def amount(value: float) -> str:
    """``100000``, or ``2592000 (30 days)`` for a whole number of days."""
    text = f"{value:.0f}" if value == int(value) else f"{value:g}"
    days = value / DAY
    if value >= DAY and days == int(days):
        return f"{text} ({days:.0f} day{'s' if days != 1 else ''})"
    return text


def doc(text: str, bounds: Bounds | None = None) -> dict[str, Any]:
    return {"doc": text, "bounds": bounds}


def seconds(high: float, low_open: bool = False) -> Bounds:
    return Bounds(0.0, high, low_open=low_open, seconds=True)


def count(low: int, high: int) -> Bounds:
    return Bounds(low, high)


#: What each key of a ``reliable_retry_policies`` entry accepts (the same as the task-wide settings).
POLICY_BOUNDS = {
    "max_retries": count(0, 1000),
    "backoff": seconds(DAY),
    "backoff_max": seconds(7 * DAY),
    "countdown": seconds(7 * DAY),
}


TYPE_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "float | None": "a number or None",
    "bool": "True or False",
    "tuple[str, ...]": "a list of dotted exception names",
    "TaskPatterns": "a list of task names or fnmatch patterns",
    "Mapping[str, Mapping[str, float]]": "a mapping of dotted exception name to policy",
}


def bad(name: str, value: object, accepted: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(
        f"{PREFIX}{name} = {value!r} is not valid: expected {accepted}. "
        f"See the configuration reference for {PREFIX}{name}."
    )


def describe_type(f: dataclasses.Field[Any]) -> str:
    """Human words for a field's type, used in errors and in the docs table."""
    return TYPE_NAMES.get(str(f.type), str(f.type))


def accepted(f: dataclasses.Field[Any]) -> str:
    """What a field accepts, in words: its type, and for a number its range."""
    bounds: Bounds | None = f.metadata.get("bounds")
    if bounds is None:
        return describe_type(f)
    return bounds.words(str(f.type) == "int") + (", or None" if "None" in str(f.type) else "")


def coerce(f: dataclasses.Field[Any], name: str, value: Any) -> Any:
    """Check ``value`` against the declared type of field ``f`` (setting ``name``); return it in canonical form."""
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
        raise bad(name, value, accepted(f))
    return value


def configured_keys(app: Any) -> dict[str, str]:
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


def markdown_table(settings_cls: Any) -> str:
    """The Markdown reference table of every field of ``settings_cls`` (docs/configuration.md)."""
    lines = ["| Setting | Type | Default | Meaning |", "|---|---|---|---|"]
    defaults = settings_cls()
    for f in dataclasses.fields(settings_cls):
        default = getattr(defaults, f.name)
        if isinstance(default, tuple):
            default = list(default)
        lines.append(f"| `{PREFIX}{f.name}` | {accepted(f)} | `{default!r}` | {f.metadata['doc']} |")
    return "\n".join(lines) + "\n"


def check_retry_policies(policies: Mapping[str, Any]) -> None:
    """Refuse a ``reliable_retry_policies`` entry that is not a mapping of known keys to numbers in range."""
    for exc_name, policy in policies.items():
        if not isinstance(policy, Mapping):
            raise bad("retry_policies", {exc_name: policy}, "a mapping of keyword to number")
        unknown = set(policy) - set(POLICY_BOUNDS)
        if unknown:
            raise bad(
                "retry_policies",
                {exc_name: dict(policy)},
                f"the keys {sorted(POLICY_BOUNDS)} (unknown: {sorted(unknown)})",
            )
        for key, value in policy.items():
            bounds = POLICY_BOUNDS[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not bounds.accepts(value):
                raise bad("retry_policies", {exc_name: dict(policy)}, f"{key!r} as {bounds.words(False)}")


def check_bounds(settings: Any) -> None:
    """Refuse a field of ``settings`` (a dataclass) whose value is outside its :class:`Bounds`."""
    for f in dataclasses.fields(settings):
        bounds: Bounds | None = f.metadata.get("bounds")
        value = getattr(settings, f.name)
        if bounds is not None and value is not None and not bounds.accepts(value):
            raise bad(f.name, value, accepted(f))
