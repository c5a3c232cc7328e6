"""The relay: sends pending messages (outbox rows and failed sends) in batches.

Runs as the beat task ``celery_reliable.relay`` every ``reliable_relay_interval`` seconds (and
by hand). Rows are held by one pass (on PostgreSQL locked in its open transaction and written
once, :mod:`..store.batches`; elsewhere leased under a fencing token), so several relays at
once never send a row twice within a lease. A pass stops at the first broker failure (the rows it did not
try go back untouched), so a broker outage costs one failed send per pass, not one per row.
On Redis a batch is sent in one pipeline whose replies are read one by one (a row is sent
exactly when Redis took its LPUSH); on RabbitMQ a batch is published on a confirm-mode channel
and its confirms awaited together (a row is marked sent only once the broker acked it).
Every row is checked before it is sent (:mod:`.relay_check`, :mod:`..broker.redis_stored`): a row
that is not what ``publish()`` stores becomes ``invalid`` with the reason, and the rest go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from celery import Celery, Task, shared_task

from .. import events
from ..broker.redis_wire import Entry
from ..config import get_settings
from ..message.prepare import is_ledgered
from ..message.tasks import Refused
from ..store.batches import Claim, LeasedClaim, claim_batch
from ..store.claims import PendingRow
from ..store.models import PendingStatus, utcnow
from .batch import send_batch
from .publisher import get_publisher, reset_publisher
from .reconcile import ledger_tag, ledgered, reconcile
from .relay_check import RowChecks

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
    #: sent rows the broker lost before their task had an outcome, made due again (the ledger)
    lost: int = 0
    broker_down: bool = False
    errors: list[str] = field(default_factory=list)

    def add(self, other: RelayStats) -> None:
        for key in ("claimed", "sent", "failed", "dead", "expired", "invalid", "released", "batches", "lost"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        self.broker_down = self.broker_down or other.broker_down
        self.errors.extend(other.errors)


def send_rows(app: Celery, claim: Claim | str, rows: Sequence[PendingRow]) -> RelayStats:
    """Send claimed rows; mark each sent, expired, invalid, or failed (backed off / dead).

    ``claim``: what holds the rows (or the token they were leased to).
    """
    held = LeasedClaim(app, claim) if isinstance(claim, str) else claim
    stats, record = _send(app, held, rows)
    record()
    return stats


def _send(app: Celery, claim: Claim, rows: Sequence[PendingRow]) -> tuple[RelayStats, Callable[[], None]]:
    """Send claimed rows; return the stats and what records the outcome in the table.

    ``broker_down`` is known when this returns; the sent/failed counts once ``record`` ran (the
    relay runs it in its second thread while it sends the next batch). ``record`` ends the claim;
    if this raises, the claim is abandoned (its rows due again).
    """
    try:
        return _send_held(app, claim, rows)
    except BaseException:
        try:
            claim.abandon([row.id for row in rows])
        except Exception as exc:  # the rows' lease (or the closed session) frees them instead
            logger.warning("Relay: could not give back a batch that failed: %r", exc)
        raise


def _send_held(app: Celery, claim: Claim, rows: Sequence[PendingRow]) -> tuple[RelayStats, Callable[[], None]]:
    stats = RelayStats(claimed=len(rows))
    now = utcnow()
    publisher = get_publisher(app)
    direct = publisher.direct_redis()
    ready: list[tuple[PendingRow, list[Any], dict[str, Any], dict[str, Any]]] = []
    built: list[tuple[PendingRow, Entry]] = []  # Redis: entries written directly
    expired: list[int] = []
    invalid: list[tuple[int, str]] = []
    checks = RowChecks(app, publisher.facts)
    for row in rows:
        # Every column is input: whatever is wrong with one row makes that row invalid, never the pass fail.
        try:
            checks.columns(row)
            if row.expires_at is not None and row.expires_at <= now:
                expired.append(row.id)
                continue
            if direct and row.message is not None:
                built.append((row, checks.stored_entry(row)))
                continue
            ready.append((row, *checks.decoded(row)))
        except Refused as exc:
            invalid.append((row.id, str(exc)))
        except Exception as exc:
            invalid.append((row.id, f"{type(exc).__name__}: {exc}"))
    stats.expired = claim.status(expired, PendingStatus.EXPIRED, "expires passed before it was sent")
    if direct and ready:
        ready = _build_entries(publisher, ready, built, invalid)
    for row_id, error in invalid:
        _mark_invalid(claim, row_id, error, stats)
    if not ready and not built:
        return stats, claim.finish
    outcome = _Outcome()
    sending = [row for row, _ in built] + [row for row, *_ in ready]
    # a message that carries the ledger header goes out under a delivery tag of its own: the relay can
    # look for it in Redis later (send/reconcile.py)
    tags = [ledger_tag(row) if ledgered(entry) else None for row, entry in built]
    outcome.tracked = {row.id for (row, _), tag in zip(built, tags, strict=True) if tag}
    if not direct and get_settings(app).reconcile_rabbitmq_after is not None:
        # a queue that cannot be searched: the row waits for its outcome up to a deadline (reconcile.py)
        outcome.blind = {row.id for row, _args, _kwargs, options in ready if is_ledgered(options)}
    result = send_batch(
        publisher,
        [entry for _, entry in built],
        [(row.task_name, args, kwargs, row.task_id, options) for row, args, kwargs, options in ready],
        tags,
    )
    outcome.sent += [sending[i].id for i in result.sent]
    outcome.failures += [(sending[i].id, error) for i, error in result.failed]
    outcome.untried += [sending[i].id for i in result.untried]
    outcome.broker_down = result.broker_down
    for i, error in result.invalid:
        _mark_invalid(claim, sending[i].id, error, stats)
    if result.reset:
        reset_publisher(app)
    stats.broker_down = outcome.broker_down
    return stats, partial(_record, app, claim, rows, outcome, stats)


def _record(app: Celery, claim: Claim, rows: Sequence[PendingRow], outcome: _Outcome, stats: RelayStats) -> None:
    """Mark the rows of a sent batch: sent, given back, or failed (backed off / dead); end the claim."""
    try:
        _write_outcome(app, claim, rows, outcome, stats)
    except BaseException:
        claim.abandon([])
        raise
    claim.finish()


def _write_outcome(app: Celery, claim: Claim, rows: Sequence[PendingRow], outcome: _Outcome, stats: RelayStats) -> None:
    settings = get_settings(app)
    tracked = [row_id for row_id in outcome.sent if row_id in outcome.tracked]
    blind = [row_id for row_id in outcome.sent if row_id in outcome.blind]
    untracked = [row_id for row_id in outcome.sent if row_id not in outcome.tracked and row_id not in outcome.blind]
    stats.sent = claim.sent(untracked)
    stats.sent += claim.sent(tracked, settings.reconcile_after)
    stats.sent += claim.sent(blind, settings.reconcile_rabbitmq_after)
    if outcome.sent:
        sent = set(outcome.sent)
        events.send_resent(app, [row for row in rows if row.id in sent])
    stats.released = claim.release(outcome.untried)
    failures = outcome.failures
    rescheduled, dead = claim.failed(
        failures, max_attempts=settings.relay_max_attempts,
        base=settings.relay_backoff, cap=settings.relay_backoff_max,
    )  # fmt: skip
    stats.failed, stats.dead = rescheduled + dead, dead
    if failures:
        stats.errors.append(failures[0][1])
        logger.warning("Relay: %d message(s) not sent (%s)", len(failures), failures[0][1])
    if dead:
        logger.error("Relay: %d pending message(s) failed too often and are marked dead", dead)


@dataclass
class _Outcome:
    """Row ids of a batch by what became of them."""

    sent: list[int] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    untried: list[int] = field(default_factory=list)
    broker_down: bool = False
    #: rows sent under a delivery tag of their own (the ledger tracks them)
    tracked: set[int] = field(default_factory=set)
    #: rows sent where the broker cannot be searched (tracked up to reliable_reconcile_rabbitmq_after)
    blind: set[int] = field(default_factory=set)


def _mark_invalid(claim: Claim, row_id: int, error: str, stats: RelayStats) -> None:
    """A row that cannot be sent as it is: marked invalid, for a person to fix and resend."""
    stats.invalid += claim.status([row_id], PendingStatus.INVALID, error)
    logger.error("Pending message %d cannot be sent: %s", row_id, error)


def _build_entries(
    publisher: Any,
    ready: list[tuple[PendingRow, list[Any], dict[str, Any], dict[str, Any]]],
    built: list[tuple[PendingRow, Entry]],
    invalid: list[tuple[int, str]],
) -> list[tuple[PendingRow, list[Any], dict[str, Any], dict[str, Any]]]:
    """Redis: build the entries of rows stored without one; return the rows kombu must send."""
    ctx = publisher.context(detached=True)
    rest = []
    for item in ready:
        row, args, kwargs, options = item
        try:
            entry = publisher.entry(row.task_name, args, kwargs, row.task_id, options, ctx)
        except Exception as exc:  # building touches no connection: whatever fails is this row's data
            invalid.append((row.id, f"{type(exc).__name__}: {exc}"))
            continue
        if entry is None:
            rest.append(item)
        else:
            built.append((row, entry))
    return rest


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
    total = RelayStats()
    try:  # first: messages the broker lost are due again, and go out in this pass
        total.lost = reconcile(app).resent
    except Exception as exc:  # the ledger's look must never stop the relay
        logger.warning("Relay: looking for lost messages failed (%r); the next pass tries again", exc)
    deadline = time.monotonic() + (time_limit if time_limit is not None else settings.relay_time_limit)
    after: int | None = None
    light = get_publisher(app).direct_redis()  # messages built ahead are sent as they are

    def claim(after_id: int | None) -> tuple[Claim, list[Any]]:
        return claim_batch(app, limit=batch_size, lease=settings.relay_lease, after_id=after_id, light=light)

    # While a full batch is sent, the next one is claimed in a second thread: the database works
    # on the claim while this process builds and sends (the two overlap on separate CPUs).
    recorded: list[tuple[RelayStats, Future[None]]] = []
    with ThreadPoolExecutor(1, thread_name_prefix="celery_reliable-claim") as pool:
        ahead: Future[tuple[Claim, list[Any]]] | None = None
        try:
            for _ in range(2 * limit + 1):
                if total.batches >= limit or time.monotonic() >= deadline:
                    break
                if ahead is not None:
                    held, rows = ahead.result()
                    ahead = None
                else:
                    held, rows = claim(after)
                if not rows:
                    if after is None:
                        break
                    after = None
                    continue
                # a short batch took all there was above the mark: the next claim looks at everything
                after = max(row.id for row in rows) if len(rows) >= batch_size else None
                if after is not None and total.batches + 1 < limit:
                    ahead = pool.submit(claim, after)
                stats, record = _send(app, held, rows)
                # recorded in the second thread (in order, before the claim after next)
                recorded.append((stats, pool.submit(record)))
                total.batches += 1
                if stats.broker_down:
                    break
        finally:
            if ahead is not None:  # claimed but not sent: give the rows back for the next pass
                try:
                    held, rows = ahead.result()
                    total.released += held.abandon([row.id for row in rows])
                except Exception as exc:  # their lease runs out instead
                    logger.warning("Relay: could not give back a batch claimed ahead: %r", exc)
        for stats, done in recorded:
            done.result()  # a database error marking rows raises here, as it did inline
            total.add(stats)
    if total.claimed or total.lost:
        logger.info(
            "Relay pass: %d claimed, %d sent, %d failed, %d dead, %d expired, %d invalid, %d lost by the broker",
            total.claimed, total.sent, total.failed, total.dead, total.expired, total.invalid, total.lost,
        )  # fmt: skip
    else:
        logger.debug("Relay pass: nothing due")
    return total


@shared_task(name="celery_reliable.relay", bind=True, ignore_result=True, send_events=False)
def relay(self: Task) -> dict[str, int] | None:  # type: ignore[type-arg]
    """Send pending messages (scheduled by beat every ``reliable_relay_interval`` seconds).

    Returns None when the pass found nothing to do: the worker then logs the run at DEBUG
    (:mod:`celery_reliable.worker.quiet`). No task events unless ``reliable_beat_task_events``:
    a run every few seconds would fill Flower's task list.
    """
    stats = relay_once(self.app)
    if not (stats.claimed or stats.lost):
        return None
    return {"claimed": stats.claimed, "sent": stats.sent, "failed": stats.failed}
