"""The Celery, kombu and redis-py this process runs, and whether they are tested releases."""

from __future__ import annotations

from ...broker.facts import TESTED, found
from .result import Result, Status


def check_versions() -> Result:
    """PASS on tested Celery and kombu minors; WARN on others (they may work, nothing proves it)."""
    rows = found()
    shown = ", ".join(f"{name} {version}" for name, version, _tested in rows)
    untested = [f"{name} {version}" for name, version, tested in rows if tested is False]
    if untested:
        supported = "; ".join(f"{name} " + ", ".join(f"{a}.{b}" for a, b in minors) for name, minors in TESTED.items())
        return Result(
            "versions",
            Status.WARN,
            f"{', '.join(untested)} not tested with celery_reliable (found: {shown})",
            f"install a tested release ({supported}); the atomic Redis fetch is off on an untested kombu",
        )
    return Result("versions", Status.PASS, f"tested releases: {shown}")
