"""The retry decision: backoff with full jitter and per-exception policies. Pure, no I/O."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kombu.utils.imports import symbol_by_name

from ..exceptions import ImproperlyConfigured, PermanentError

#: Seconds kept between the longest retry delay and the Redis visibility timeout, so a
#: retry waiting in a worker's memory is never handed to a second worker.
VISIBILITY_MARGIN = 30.0


@dataclass(frozen=True)
class RetryPolicy:
    """How one kind of exception is retried; ``None`` fields fall back to the task's values."""

    max_retries: int | None = None
    backoff: float | None = None
    backoff_max: float | None = None
    countdown: float | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, float]) -> RetryPolicy:
        max_retries = values.get("max_retries")
        return cls(
            max_retries=None if max_retries is None else int(max_retries),
            backoff=values.get("backoff"),
            backoff_max=values.get("backoff_max"),
            countdown=values.get("countdown"),
        )


@dataclass(frozen=True)
class RetryDecision:
    """What to do with a failed attempt."""

    retry: bool
    countdown: float
    max_retries: int
    reason: str


def backoff_delay(
    retries: int,
    base: float,
    cap: float,
    jitter: bool,
    rand: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff ``min(cap, base * 2**retries)``; with jitter, uniform in [0, that]."""
    delay = min(cap, base * (2.0 ** min(retries, 62)))
    if jitter:
        delay *= rand()
    return max(0.0, delay)


def sendable_countdown(countdown: float) -> float:
    """``countdown`` as every broker takes it: kombu's native delayed delivery (RabbitMQ quorum
    queues) counts whole seconds and refuses one between 0 and 1, so those become the nearer of 0
    and 1."""
    return float(round(countdown)) if 0 < countdown < 1 else countdown


def resolve_exceptions(names: Iterable[str], setting: str) -> tuple[type[BaseException], ...]:
    """Import dotted exception names; a name that is not an exception class is a config error."""
    resolved: list[type[BaseException]] = []
    for name in names:
        try:
            obj = symbol_by_name(name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"{setting}: cannot import {name!r} ({exc}). Give the full dotted path, "
                "e.g. 'requests.exceptions.Timeout'."
            ) from None
        if not (isinstance(obj, type) and issubclass(obj, BaseException)):
            raise ImproperlyConfigured(f"{setting}: {name!r} is {obj!r}, not an exception class.")
        resolved.append(obj)
    return tuple(resolved)


def policy_for(exc: BaseException, policies: Mapping[type[BaseException], RetryPolicy]) -> RetryPolicy | None:
    """The policy of the most specific class in ``exc``'s MRO that has one."""
    for klass in type(exc).__mro__:
        if klass in policies:
            return policies[klass]
    return None


def decide(
    exc: BaseException,
    retries: int,
    *,
    max_retries: int,
    backoff: float,
    backoff_max: float,
    jitter: bool,
    retry_for: tuple[type[BaseException], ...],
    permanent: tuple[type[BaseException], ...],
    policies: Mapping[type[BaseException], RetryPolicy],
    ceiling: float | None = None,
    rand: Callable[[], float] = random.random,
) -> RetryDecision:
    """Decide whether attempt number ``retries`` (0 = first run) that raised ``exc`` is retried.

    ``ceiling`` caps every delay (the broker's visibility timeout less a margin), so a delayed
    retry can never be redelivered to another worker while the first one still holds it.
    """
    if isinstance(exc, PermanentError) or isinstance(exc, permanent):
        return RetryDecision(False, 0.0, max_retries, "permanent")
    policy = policy_for(exc, policies)
    if policy is None and not isinstance(exc, retry_for):
        return RetryDecision(False, 0.0, max_retries, "not retryable")
    policy = policy or RetryPolicy()
    limit = max_retries if policy.max_retries is None else policy.max_retries
    if retries >= limit:
        return RetryDecision(False, 0.0, limit, "retries exhausted")
    cap = backoff_max if policy.backoff_max is None else policy.backoff_max
    if ceiling is not None:
        cap = min(cap, ceiling)
    if policy.countdown is not None:
        delay = min(policy.countdown, cap)
    else:
        base = backoff if policy.backoff is None else policy.backoff
        delay = backoff_delay(retries, base, cap, jitter, rand)
    return RetryDecision(True, delay, limit, "retry")
