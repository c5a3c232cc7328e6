"""The retry decision (pure logic)."""

from __future__ import annotations

import pytest

from celery_reliable import ImproperlyConfigured, PermanentError, RetryPolicy
from celery_reliable.worker.retry import backoff_delay, decide, resolve_exceptions


def _decide(exc: BaseException, retries: int, **kw: object):  # type: ignore[no-untyped-def]
    options: dict = {
        "max_retries": 3,
        "backoff": 2.0,
        "backoff_max": 100.0,
        "jitter": False,
        "retry_for": (Exception,),
        "permanent": (),
        "policies": {},
    }
    options.update(kw)
    return decide(exc, retries, **options)


def test_exponential_backoff_is_capped() -> None:
    assert [backoff_delay(n, 2.0, 10.0, jitter=False) for n in range(5)] == [2.0, 4.0, 8.0, 10.0, 10.0]


def test_full_jitter_spans_zero_to_backoff() -> None:
    assert backoff_delay(3, 2.0, 100.0, jitter=True, rand=lambda: 0.0) == 0.0
    assert backoff_delay(3, 2.0, 100.0, jitter=True, rand=lambda: 0.5) == 8.0


def test_huge_retry_counts_do_not_overflow() -> None:
    assert backoff_delay(10_000, 1.0, 60.0, jitter=False) == 60.0


def test_retries_until_the_limit() -> None:
    assert [_decide(ValueError(), n).retry for n in range(5)] == [True, True, True, False, False]
    assert _decide(ValueError(), 3).reason == "retries exhausted"


def test_permanent_errors_never_retry() -> None:
    assert _decide(PermanentError("x"), 0).reason == "permanent"
    assert _decide(KeyError("x"), 0, permanent=(KeyError,)).reason == "permanent"


def test_exceptions_outside_retry_for_are_not_retried() -> None:
    decision = _decide(ValueError(), 0, retry_for=(ConnectionError,))
    assert (decision.retry, decision.reason) == (False, "not retryable")


def test_most_specific_policy_wins() -> None:
    policies = {
        OSError: RetryPolicy(max_retries=10, countdown=1.0),
        ConnectionError: RetryPolicy(max_retries=1, countdown=5.0),
    }
    decision = _decide(ConnectionRefusedError(), 0, policies=policies)
    assert (decision.retry, decision.countdown, decision.max_retries) == (True, 5.0, 1)
    assert not _decide(ConnectionRefusedError(), 1, policies=policies).retry
    assert _decide(FileNotFoundError(), 5, policies=policies).retry


def test_policy_makes_an_exception_retryable() -> None:
    decision = _decide(KeyError(), 0, retry_for=(), policies={KeyError: RetryPolicy(countdown=2)})
    assert decision.retry and decision.countdown == 2


def test_delay_never_exceeds_the_visibility_ceiling() -> None:
    decision = _decide(ValueError(), 2, backoff=100.0, backoff_max=1000.0, ceiling=30.0)
    assert decision.countdown == 30.0
    fixed = _decide(ValueError(), 0, policies={ValueError: RetryPolicy(countdown=500)}, ceiling=30.0)
    assert fixed.countdown == 30.0


def test_resolving_names() -> None:
    assert resolve_exceptions(["builtins.KeyError"], "x") == (KeyError,)
    with pytest.raises(ImproperlyConfigured, match=r"cannot import 'nope\.Missing'"):
        resolve_exceptions(["nope.Missing"], "reliable_retry_for")
    with pytest.raises(ImproperlyConfigured, match="not an exception class"):
        resolve_exceptions(["os.path"], "reliable_retry_for")
