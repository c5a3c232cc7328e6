"""The relay's look for tracked messages the broker lost: a sent row is not done until its task is.

A message sent from the pending table (the outbox, a failed send) carries the ledger header, and
on Redis it goes out under a delivery tag of its own, ``reliable-<row id>`` (:func:`ledger_tag`).
The worker that runs its task records the outcome (the row becomes ``done``). Until then, every
``reliable_reconcile_after`` seconds, the relay pass looks for the message in Redis by that tag:
unacknowledged, staged by a fetch, or still in its list (also after kombu gave it back, which
rewrites the rest of the entry). Found: looked at again later. Not found, and still no outcome:
Redis lost it (a crash without persistence, a failover to a replica that missed it, a flush, an
eviction), so the row is sent again with the same task id; an idempotent task runs it once.

RabbitMQ cannot be searched by id: there, only with ``reliable_reconcile_rabbitmq_after`` set, a
row with no outcome that long after its send is sent again without a look (:func:`_past_deadline`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from celery import Celery

from ..broker import redis_wire
from ..broker.redis_wire import Entry, stage_list
from ..config import get_settings
from ..message.prepare import LEDGER_HEADER
from ..message.tasks import Refused
from ..store.claims import PendingRow
from ..store.ledger import check_later, due_for_check, reopen
from .publisher import get_publisher
from .relay_check import RowChecks

logger = logging.getLogger(__name__)

#: Tracked rows looked at per relay pass (each look is one script on Redis).
PER_PASS = 200
#: How the ledger header reads inside a message's JSON, as kombu writes it.
_MARK = f'"{LEDGER_HEADER}": 1'


def ledger_tag(row: PendingRow) -> str:
    """The delivery tag of a tracked row's message: the relay finds it in Redis by it."""
    return f"reliable-{row.id}"


def ledgered(entry: Entry) -> bool:
    """Whether a message built ahead carries the ledger header (its worker records the outcome)."""
    return _MARK in entry.text


@dataclass
class ReconcileStats:
    """What one look did."""

    checked: int = 0
    held: int = 0
    resent: int = 0
    dead: int = 0
    unsure: int = 0


def reconcile(app: Celery, limit: int = PER_PASS) -> ReconcileStats:
    """Look in Redis for tracked sent rows without an outcome; send again what it lost."""
    stats = ReconcileStats()
    settings = get_settings(app)
    publisher = get_publisher(app)
    if not publisher.direct_redis():
        return _past_deadline(app, limit)
    if settings.reconcile_after is None:
        return stats
    rows = due_for_check(app, limit)
    if not rows:
        return stats
    checks = RowChecks(app, publisher.facts)
    options = app.conf.broker_transport_options or {}
    channel = publisher.producer.channel
    prefix = getattr(channel, "global_keyprefix", "") or ""
    unacked = prefix + str(options.get("unacked_key", "unacked"))
    keep: list[int] = []
    lost: list[tuple[int, int]] = []
    with publisher.lock, channel.conn_or_acquire() as client:
        for row, attempts in rows:
            stats.checked += 1
            try:
                entry = checks.stored_entry(row)
            except Refused as exc:  # changed since it was sent: the next relay pass will see it
                logger.warning("Pending message %d: cannot look for it in Redis (%s)", row.id, exc)
                keep.append(row.id)
                continue
            stage = prefix + stage_list(entry.queue or entry.key, publisher.facts.sep)
            found = redis_wire.present(client, unacked, stage, prefix + entry.key, ledger_tag(row))
            if found is False:
                lost.append((row.id, attempts))
            else:
                stats.held += found is True
                stats.unsure += found is None
                keep.append(row.id)
    check_later(app, keep, settings.reconcile_after)
    if lost:
        error = (
            f"not in Redis {settings.reconcile_after:g} s or more after it was sent, and its task had no "
            "outcome: Redis lost it (restart without persistence, failover, flush, eviction); sent again"
        )
        stats.resent, stats.dead = reopen(app, lost, error, settings.relay_max_attempts)
        logger.warning(
            "Relay: %d sent message(s) no longer in Redis and without an outcome; sent again with the same "
            "task id (%d dead after too many sends)", stats.resent, stats.dead,
        )  # fmt: skip
    return stats


def _past_deadline(app: Celery, limit: int) -> ReconcileStats:
    """RabbitMQ: a queue cannot be searched by id, so a tracked row with no outcome
    ``reliable_reconcile_rabbitmq_after`` seconds after its send is sent again, unlooked for."""
    stats = ReconcileStats()
    settings = get_settings(app)
    after = settings.reconcile_rabbitmq_after
    if after is None:
        return stats
    rows = due_for_check(app, limit)
    if not rows:
        return stats
    stats.checked = len(rows)
    error = (
        f"no outcome {after:g} s after it was sent (reliable_reconcile_rabbitmq_after; the broker cannot be "
        "searched for it): sent again"
    )
    lost = [(row.id, attempts) for row, attempts in rows]
    stats.resent, stats.dead = reopen(app, lost, error, settings.relay_max_attempts)
    if stats.resent or stats.dead:
        logger.warning(
            "Relay: %d sent message(s) without an outcome after %g s; sent again with the same task id "
            "(%d dead after too many sends)", stats.resent, after, stats.dead,
        )  # fmt: skip
    return stats
