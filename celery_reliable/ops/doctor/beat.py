"""The relay must run on a schedule, or messages kept in the pending table are never sent."""

from __future__ import annotations

from celery import Celery

from ...config import ReliableSettings
from .result import Result, Status

RELAY = "celery_reliable.relay"
#: Schedulers that keep their own copy of the schedule (beat_schedule is only their starting point).
STORED_SCHEDULERS = ("django_celery_beat", "redbeat")


def check_relay(app: Celery, settings: ReliableSettings) -> Result:
    """``beat_schedule`` has an entry running ``celery_reliable.relay``."""
    schedule = app.conf.beat_schedule or {}
    entries = [name for name, entry in schedule.items() if isinstance(entry, dict) and entry.get("task") == RELAY]
    if entries:
        every = schedule[entries[0]].get("schedule")
        return Result(
            "beat.relay",
            Status.PASS,
            f"{RELAY} is in beat_schedule ({entries[0]!r}, every {every}); run exactly one celery beat",
        )
    scheduler = str(app.conf.beat_scheduler or "")
    if any(name in scheduler for name in STORED_SCHEDULERS):
        return Result(
            "beat.relay",
            Status.NOTE,
            f"{RELAY} is not in beat_schedule; {scheduler} keeps its own schedule, so check it holds a "
            f"periodic task for {RELAY}",
            f"add a periodic task for {RELAY} in your scheduler (every few seconds)",
        )
    reason = "reliable_relay_interval = None" if settings.relay_interval is None else "it was removed"
    return Result(
        "beat.relay",
        Status.WARN,
        f"{RELAY} is not scheduled ({reason}): messages publish() could not send stay in the pending table",
        f"app.conf.reliable_relay_interval = 5.0 (the default) and run one celery beat, or schedule {RELAY} yourself",
    )
