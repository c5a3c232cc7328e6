"""Publishing the probes the three ways an application does: ``publish()``, an outbox committed
in a Session (sent right after the commit), and an outbox on a Connection left to the relay."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from sqlalchemy.exc import SQLAlchemyError

from ...config import get_settings
from ...exceptions import ReliableError
from ...send.outbox import outbox
from ...send.publish import publish
from ...send.relay import send_rows
from ...store.claims import claim
from ...store.engine import get_engine, get_sessionmaker
from .plan import Plan
from .store import unsent_ids

logger = logging.getLogger(__name__)

#: Outbox probes staged per transaction.
BATCH = 50


@dataclass
class Published:
    """Probe numbers that are in the broker or in the pending table, by path."""

    seqs: list[int] = field(default_factory=list)
    by_path: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


def _kwargs(plan: Plan, seq: int, poison: dict[int, str]) -> dict[str, Any]:
    return {"run": plan.run_id, "seq": seq, "poison": poison.get(seq, ""), "pause": plan.options.pause}


def publish_probes(app: Celery, plan: Plan) -> Published:
    """Publish every probe of ``plan``; a probe whose publish raised is not counted as published."""
    poison = plan.poison()
    done = Published()
    staged: dict[str, list[int]] = {"outbox": [], "relay": []}
    for seq in range(plan.options.messages):
        path = plan.path(seq)
        if path != "publish":
            staged[path].append(seq)
            continue
        try:
            publish(app, plan.task_name, kwargs=_kwargs(plan, seq, poison), task_id=plan.task_id(seq), queue=plan.queue)
        except ReliableError as exc:
            done.errors.append(f"probe {seq}: {exc}")
            continue
        done.seqs.append(seq)
        done.by_path["publish"] += 1
    for path, seqs in staged.items():
        for start in range(0, len(seqs), BATCH):
            batch = seqs[start : start + BATCH]
            try:
                _stage(app, plan, batch, poison, in_session=path == "outbox")
            except (ReliableError, SQLAlchemyError) as exc:
                done.errors.append(f"probes {batch[0]}..{batch[-1]} ({path}): {exc}")
                continue
            done.seqs += batch
            done.by_path[path] += len(batch)
    return done


def _stage(app: Celery, plan: Plan, seqs: list[int], poison: dict[int, str], in_session: bool) -> None:
    if in_session:  # published by the outbox right after the commit
        with get_sessionmaker(app).begin() as session:
            box = outbox(session, app)
            for seq in seqs:
                box.send(plan.task_name, kwargs=_kwargs(plan, seq, poison), task_id=plan.task_id(seq), queue=plan.queue)
        return
    with get_engine(app).begin() as conn:  # a Connection's outbox is not sent on commit: the relay sends it
        box = outbox(conn, app)
        for seq in seqs:
            box.send(plan.task_name, kwargs=_kwargs(plan, seq, poison), task_id=plan.task_id(seq), queue=plan.queue)


def relay_probes(app: Celery, plan: Plan) -> int:
    """A relay pass over the run's own unsent pending rows only (other rows are left to the app's relay)."""
    ids = unsent_ids(app, plan.prefix)
    if not ids:
        return 0
    token, rows = claim(app, limit=len(ids), lease=get_settings(app).relay_lease, ids=ids)
    if not rows:
        return 0
    stats = send_rows(app, token, rows)
    if stats.errors:
        logger.warning("verify: relay pass sent %d of %d probe rows: %s", stats.sent, len(rows), stats.errors[0])
    return stats.sent
