"""Version facts: what counts as tested, and when the atomic fetch steps aside."""

from __future__ import annotations

import pytest
from celery import Celery

from celery_reliable.broker import facts as versions
from celery_reliable.ops.doctor.result import Status
from celery_reliable.ops.doctor.versions import check_versions
from celery_reliable.worker.install import atomic_fetch_off, install
from tests.conftest import REDIS_URL


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5.6.2", (5, 6)), ("5.7.0rc1", (5, 7)), ("5", (5, 0)), ("6.10.1.post2", (6, 10))],
)
def test_minor(text: str, expected: tuple[int, int]) -> None:
    assert versions.minor(text) == expected


def test_installed_releases_are_tested() -> None:
    # the suite runs on a supported Celery and kombu (CI runs it on each tested minor)
    assert versions.is_tested("celery") and versions.is_tested("kombu")
    result = check_versions()
    assert result.status is Status.PASS
    assert f"celery {versions.installed('celery')}" in result.detail


def test_untested_kombu_warns_and_switches_the_atomic_fetch_off(monkeypatch: pytest.MonkeyPatch) -> None:
    real = versions.installed
    monkeypatch.setattr(versions, "installed", lambda name: "5.8.0" if name == "kombu" else real(name))
    result = check_versions()
    assert result.status is Status.WARN
    assert "kombu 5.8.0 not tested" in result.detail
    reason = versions.kombu_fetch_mismatch()
    assert reason is not None and "kombu 5.8.0 is not a tested release" in reason
    app = Celery("untested-kombu", broker=REDIS_URL, set_as_current=False)
    install(app)
    assert atomic_fetch_off(app) == reason


def test_changed_fetch_method_switches_the_atomic_fetch_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from kombu.transport import redis as kombu_redis

    def _brpop_start(self: object, timeout: float = 1, extra: int = 0) -> None:
        return None

    monkeypatch.setattr(kombu_redis.Channel, "_brpop_start", _brpop_start)
    reason = versions.kombu_fetch_mismatch()
    assert reason is not None and "changed Redis Channel._brpop_start" in reason


def test_tested_kombu_fetch_signatures_match() -> None:
    assert versions.kombu_fetch_mismatch() is None
