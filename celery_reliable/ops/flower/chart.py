"""Failures over time for the Reliability page: failed rows per hour (24 h) or per 6 hours (7 d).

One query of conditional sums, whatever the table's size; the page draws the bars as inline SVG
(no script, nothing from another site). No Flower or tornado here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import and_, case, func, select

from ...store.failures import FailureFilter, session_scope
from ...store.models import FailedTask, utcnow

#: Spans the chart covers: label -> (hours, hours per bar).
SPANS = {"24h": (24, 1), "7d": (7 * 24, 6)}
#: Size of the drawing, in SVG units.
WIDTH, HEIGHT = 720, 120


@dataclass(frozen=True)
class Bar:
    start: datetime
    count: int
    x: float
    y: float
    width: float
    height: float

    def title(self, hours: int) -> str:
        end = self.start + timedelta(hours=hours)
        return f"{self.count} failed from {self.start:%Y-%m-%d %H:%M} to {end:%H:%M} UTC"


@dataclass(frozen=True)
class Chart:
    span: str
    hours_per_bar: int
    bars: list[Bar]
    total: int
    highest: int
    width: int = WIDTH
    height: int = HEIGHT


def counts(app: Celery, selected: FailureFilter, starts: list[datetime], step: timedelta) -> list[int]:
    """Rows ``selected`` whose last failure falls in each window ``[start, start + step)``."""
    when = FailedTask.last_failed_at
    sums = [func.coalesce(func.sum(case((and_(when >= s, when < s + step), 1), else_=0)), 0) for s in starts]
    query = selected.apply(select(*sums).select_from(FailedTask)).where(when >= starts[0])
    with session_scope(app) as session:
        return [int(n) for n in session.execute(query).one()]


def failures_over_time(app: Celery, span: str, selected: FailureFilter | None = None) -> Chart:
    """The chart of ``span`` (a key of :data:`SPANS`), ending with the current hour."""
    hours, per_bar = SPANS[span]
    step = timedelta(hours=per_bar)
    end = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    n = hours // per_bar
    starts = [end - step * (n - i) for i in range(n)]
    found = counts(app, selected or FailureFilter(), starts, step)
    highest = max(found) if found else 0
    slot = WIDTH / n
    bars = []
    for i, (start, count) in enumerate(zip(starts, found, strict=True)):
        height = (HEIGHT - 14) * count / highest if highest else 0.0
        bars.append(Bar(start, count, i * slot + 1, HEIGHT - 12 - height, slot - 2, height))
    return Chart(span, per_bar, bars, sum(found), highest)
