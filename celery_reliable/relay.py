"""The relay: sends pending messages (outbox rows and failed sends) in batches.

Runs as the beat task ``celery_reliable.relay`` every ``reliable_relay_interval`` seconds (and
by hand). Rows are leased to one pass under a fencing token, so several relays at once never
send a row twice within a lease. A pass stops at the first broker failure (the rows it did not
try go back untouched), so a broker outage costs one failed send per pass, not one per row.
On Redis a batch is sent in one pipeline; on RabbitMQ a batch is published on a confirm-mode
channel and its confirms awaited together (a row is marked sent only once the broker acked it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, Task, shared_task

from .config import get_settings
from .publisher import (
    check_delivery_options,
    decoded,
    get_publisher,
    is_bad_input,
    is_known_task,
    reset_publisher,
    send_options,
)
from .store.models import PendingStatus, utcnow
from .store.pending import PendingRow, claim_rows, mark_failed, mark_sent, mark_status, release

logger = logging.getLogger(__name__)


@dataclass
class RelayStats:
    """What one relay pass did."""

    claimed: int = 0
    sent: int = 0
    failed: int = 0
    dead: int = 0
    expired: int = 0
    invalid: int = 0
    released: int = 0
    batches: int = 0
    broker_down: bool = False
    errors: list[str] = field(default_factory=list)

    def add(self, other: RelayStats) -> None:
        for key in ("claimed", "sent", "failed", "dead", "expired", "invalid", "released", "batches"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        self.broker_down = self.broker_down or other.broker_down
        self.errors.extend(other.errors)


def _decode(app: Celery, row: PendingRow) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    if not is_known_task(app, row.task_name):
        raise ValueError(f"task {row.task_name!r} is not registered in app {app.main!r}")
    check_delivery_options(row.task_name, row.options if row.options is not None else {})
    args = decoded(row.args) if row.args is not None else []
    kwargs = decoded(row.kwargs) if row.kwargs is not None else {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError(f"stored args/kwargs are not a list and a mapping: {row.args!r} {row.kwargs!r}")
    return args, kwargs, send_options(app, row)


def send_rows(app: Celery, token: str, rows: Sequence[PendingRow]) -> RelayStats:
    """Send claimed rows; mark each sent, expired, invalid, or failed (backed off / dead)."""
    settings = get_settings(app)
    stats = RelayStats(claimed=len(rows))
    now = utcnow()
    ready: list[tuple[PendingRow, list[Any], dict[str, Any], dict[str, Any]]] = []
    expired: list[int] = []
    invalid: list[tuple[int, str]] = []
    for row in rows:
        if row.expires_at is not None and row.expires_at <= now:
            expired.append(row.id)
            continue
        try:
            ready.append((row, *_decode(app, row)))
        except Exception as exc:
            invalid.append((row.id, f"{type(exc).__name__}: {exc}"))
    stats.expired = mark_status(app, token, expired, PendingStatus.EXPIRED, "expires passed before it was sent")
    for row_id, error in invalid:
        stats.invalid += mark_status(app, token, [row_id], PendingStatus.INVALID, error)
        logger.error("Pending message %d cannot be sent: %s", row_id, error)
    if not ready:
        return stats
    publisher = get_publisher(app)
    sent: list[int] = []
    failures: list[tuple[int, str]] = []
    untried: list[int] = []
    with publisher.lock:
        if publisher.scheme in ("redis", "rediss"):
            # One pipeline: every message added is in Redis after the flush, or (a broker error)
            # none is known to be. A message that cannot even be built is that row's fault alone.
            added: list[int] = []
            try:
                ctx = publisher.context()
                with publisher.producer.batch(max_size=max(1, len(ready))):
                    for row, args, kwargs, options in ready:
                        try:
                            publisher.send(row.task_name, args, kwargs, row.task_id, options, ctx=ctx)
                        except Exception as exc:
                            if not is_bad_input(exc):
                                raise
                            invalid.append((row.id, f"{type(exc).__name__}: {exc}"))
                            stats.invalid += mark_status(app, token, [row.id], PendingStatus.INVALID, invalid[-1][1])
                            logger.error("Pending message %d cannot be sent: %s", row.id, invalid[-1][1])
                            continue
                        added.append(row.id)
                sent = added
            except Exception as exc:
                # The broker is away: count one failed send, give the others back untouched.
                error = f"{type(exc).__name__}: {exc}"
                tried = added[:1] or [r.id for r, *_ in ready if r.id not in {i for i, _ in invalid}][:1]
                failures = [(row_id, error) for row_id in tried]
                untried = [r.id for r, *_ in ready if r.id not in tried and r.id not in {i for i, _ in invalid}]
                stats.broker_down = True
                reset_publisher(app)
        elif publisher.batch_confirms:
            # Publish the batch on a confirm-mode channel, then wait for the confirms: sent = acked.
            outcome = publisher.send_confirmed(
                [(row.task_name, args, kwargs, row.task_id, options) for row, args, kwargs, options in ready]
            )
            sent = [ready[i][0].id for i in outcome.sent]
            failures = [(ready[i][0].id, error) for i, error in outcome.failed]
            untried = [ready[i][0].id for i in outcome.untried]
            if outcome.broker_down:
                stats.broker_down = True
                reset_publisher(app)
        else:
            ctx = publisher.context()
            for index, (row, args, kwargs, options) in enumerate(ready):
                try:
                    publisher.send(row.task_name, args, kwargs, row.task_id, options, ctx=ctx)
                    sent.append(row.id)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    if is_bad_input(exc):
                        stats.invalid += mark_status(app, token, [row.id], PendingStatus.INVALID, error)
                        logger.error("Pending message %d cannot be sent: %s", row.id, error)
                        continue
                    failures.append((row.id, error))
                    stats.broker_down = True
                    untried = [r.id for r, *_ in ready[index + 1 :]]
                    reset_publisher(app)
                    break
    stats.sent = mark_sent(app, token, sent)
    stats.released = release(app, token, untried)
    rescheduled, dead = mark_failed(
        app, token, failures, max_attempts=settings.relay_max_attempts,
        base=settings.relay_backoff, cap=settings.relay_backoff_max,
    )  # fmt: skip
    stats.failed, stats.dead = rescheduled + dead, dead
    if failures:
        stats.errors.append(failures[0][1])
        logger.warning("Relay: %d message(s) not sent (%s)", len(failures), failures[0][1])
    if dead:
        logger.error("Relay: %d pending message(s) failed too often and are marked dead", dead)
    return stats


def relay_once(
    app: Celery, *, batch_size: int | None = None, time_limit: float | None = None, max_batches: int | None = None
) -> RelayStats:
    """One relay pass: claim and send due rows batch by batch until none are left.

    Stops at the first broker failure, after ``time_limit`` seconds or ``max_batches`` batches.
    Each batch is claimed above the last id of the one before (rows below it are mostly sent
    ones, kept for ``reliable_pending_retention``, that a claim would otherwise walk over again);
    when none are left there, one more claim looks at all due rows, for any that became due
    below the mark during the pass.
    """
    settings = get_settings(app)
    batch_size = batch_size or settings.relay_batch_size
    limit = max_batches or 1_000_000
    deadline = time.monotonic() + (time_limit if time_limit is not None else settings.relay_time_limit)
    total = RelayStats()
    after: int | None = None
    for _ in range(2 * limit + 1):
        if total.batches >= limit or time.monotonic() >= deadline:
            break
        token, rows = claim_rows(app, limit=batch_size, lease=settings.relay_lease, after_id=after)
        if not rows:
            if after is None:
                break
            after = None
            continue
        # a short batch took all there was above the mark: the next claim looks at everything
        after = max(row.id for row in rows) if len(rows) >= batch_size else None
        stats = send_rows(app, token, rows)
        total.add(stats)
        total.batches += 1
        if stats.broker_down:
            break
    if total.claimed:
        logger.info(
            "Relay pass: %d claimed, %d sent, %d failed, %d dead, %d expired, %d invalid",
            total.claimed, total.sent, total.failed, total.dead, total.expired, total.invalid,
        )  # fmt: skip
    return total


@shared_task(name="celery_reliable.relay", bind=True, ignore_result=True)
def relay(self: Task) -> dict[str, int]:  # type: ignore[type-arg]
    """Send pending messages (scheduled by beat every ``reliable_relay_interval`` seconds)."""
    stats = relay_once(self.app)
    return {"claimed": stats.claimed, "sent": stats.sent, "failed": stats.failed}
