"""The relay's hold on pending rows: claims under a lease and a fencing token, and what it marks.

A claim leases rows to one holder under a fresh fencing token: every later update names that
token, so a relay whose lease ran out (and whose rows another relay took) changes nothing.
PostgreSQL and MariaDB claim with ``FOR UPDATE SKIP LOCKED``, so relays never wait on each
other; SQLite claims with one ``UPDATE`` statement (a single writer at a time). With
:mod:`.batches` (the relay's batches, locked and written once on PostgreSQL), this module owns a
pending row's state changes while a relay holds it: claimed, sent, given back, failed (backed
off or dead), expired or invalid.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

from celery import Celery
from sqlalchemy import (
    BigInteger,
    Connection,
    Row,
    Select,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from ..config import get_settings
from .engine import get_autocommit_engine
from .failures import session_scope, store_error
from .models import PendingMessage, PendingStatus, utcnow

#: The pending table, for Core statements (no ORM objects on the relay's hot path).
_T: Table = PendingMessage.__table__  # type: ignore[assignment]


#: What the relay needs of a claimed row (attributes named as on :class:`PendingMessage`).
SEND_COLUMNS = (
    _T.c.id, _T.c.task_id, _T.c.task_name, _T.c.args, _T.c.kwargs, _T.c.options, _T.c.eta, _T.c.expires_at,
    _T.c.message,
)  # fmt: skip


#: The same, with arguments only for rows without a message built ahead: for a relay that sends
#: those messages as they are (decoding arguments is most of a claim's cost in the relay). The
#: options of a row with a message come as the JSON text PostgreSQL writes (``options_text``,
#: decoded by the relay: a third of the cost of the driver's JSONB decoding): the queue in them is
#: what the message must agree with.
SEND_COLUMNS_LIGHT = (
    _T.c.id, _T.c.task_id, _T.c.task_name,
    case((_T.c.message.is_(None), _T.c.args), else_=null()).label("args"),
    case((_T.c.message.is_(None), _T.c.kwargs), else_=null()).label("kwargs"),
    case((_T.c.message.is_(None), _T.c.options), else_=null()).label("options"),
    _T.c.eta, _T.c.expires_at, _T.c.message,
    case((_T.c.message.is_not(None), cast(_T.c.options, Text)), else_=null()).label("options_text"),
)  # fmt: skip


class ClaimedRow(NamedTuple):
    """A claimed row as the relay reads it: the columns above, in their order, as stored.

    A plain tuple, read once from the driver's row: the relay reads each column several times
    while it checks the row, and a SQLAlchemy ``Row`` attribute costs about 0.4 us.
    """

    id: int
    task_id: Any
    task_name: Any
    args: Any
    kwargs: Any
    options: Any
    eta: Any
    expires_at: Any
    message: Any
    options_text: str | None = None


class PendingRow(Protocol):
    """A claimed row as the relay reads it: a :class:`PendingMessage` or a lighter Core row."""

    @property
    def id(self) -> int: ...
    @property
    def task_id(self) -> str: ...
    @property
    def task_name(self) -> str: ...
    @property
    def args(self) -> Any: ...
    @property
    def kwargs(self) -> Any: ...
    @property
    def options(self) -> Any: ...
    @property
    def eta(self) -> datetime | None: ...
    @property
    def expires_at(self) -> datetime | None: ...
    @property
    def message(self) -> str | None: ...


def due(now: datetime) -> Any:
    # The IN list matches the predicate of the partial index on open rows, so the planner uses it.
    return and_(
        _T.c.status.in_((PendingStatus.PENDING, PendingStatus.CLAIMED)),
        or_(
            and_(_T.c.status == PendingStatus.PENDING, _T.c.next_attempt_at <= now),
            and_(_T.c.status == PendingStatus.CLAIMED, _T.c.lease_expires_at < now),
        ),
    )


def claim_query(
    now: datetime, limit: int, ids: Iterable[int] | None = None, after_id: int | None = None
) -> Select[tuple[int]]:
    """The ids a claim takes: ``limit`` due rows oldest first (with ids above ``after_id``, if
    given), or exactly ``ids`` if still unsent."""
    chosen = select(_T.c.id)
    if ids is None:
        if after_id is not None:
            chosen = chosen.where(_T.c.id > after_id)
        return chosen.where(due(now)).order_by(_T.c.id).limit(limit)
    return chosen.where(
        _T.c.id.in_(list(ids)),
        _T.c.status.in_((PendingStatus.PENDING, PendingStatus.CLAIMED)),
        or_(_T.c.status == PendingStatus.PENDING, _T.c.lease_expires_at < now),
    )


def lease_values(token: str, now: datetime, lease: float) -> dict[str, Any]:
    """The columns a claim sets."""
    return {"status": PendingStatus.CLAIMED, "claim_token": token, "lease_expires_at": now + timedelta(seconds=lease)}


def _chosen(dialect: str, chosen: Select[tuple[int]]) -> ColumnElement[bool]:
    """The claim's WHERE: the rows ``chosen`` selects (locked with SKIP LOCKED, except on SQLite).

    PostgreSQL: ``id = ANY(ARRAY(SELECT ... FOR UPDATE SKIP LOCKED))``: the chosen ids are locked
    and collected first, then updated through the primary key. (With ``id IN (SELECT ...)``
    PostgreSQL may hash-join the chosen ids against a scan of the whole table.)
    """
    if dialect == "postgresql":
        return _T.c.id == any_(func.array(chosen.with_for_update(skip_locked=True).scalar_subquery()))
    return _T.c.id.in_(chosen.scalar_subquery())


def _one_statement(dialect: Dialect) -> bool:
    """Whether a claim is one ``UPDATE ... RETURNING`` (PostgreSQL; SQLite >= 3.35, one writer at a time)."""
    return dialect.name == "postgresql" or (dialect.name == "sqlite" and bool(dialect.update_returning))


@contextmanager
def relay_connection(app: Celery) -> Iterator[Connection]:
    """A connection for the relay's claims and marks, each one statement.

    PostgreSQL: the autocommit engine: one round trip per statement (no BEGIN, COMMIT or
    pre-ping) and asynchronous commit. A claim or mark lost in a PostgreSQL crash only means
    that row is sent once more, with the same task id. Other databases: a transaction (MariaDB
    claims in two statements; SQLite has one writer anyway).
    """
    engine = get_autocommit_engine(app)
    if engine.dialect.name != "postgresql":
        with session_scope(app) as session:
            yield session.connection()
        return
    try:
        with engine.connect() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise store_error(get_settings(app).database_url, exc) from exc


def claim_rows(
    app: Celery,
    *,
    limit: int,
    lease: float,
    ids: Iterable[int] | None = None,
    after_id: int | None = None,
    light: bool = False,
) -> tuple[str, list[ClaimedRow]]:
    """Like :func:`claim`, returning light rows (the columns the relay sends), oldest first.

    ``after_id``: only rows with a higher id (a relay pass continuing where its last batch
    ended, instead of walking again over the rows below it, most of them sent).
    PostgreSQL and SQLite: one ``UPDATE ... RETURNING``. MariaDB (no ``UPDATE ... RETURNING``):
    ``SELECT ... FOR UPDATE SKIP LOCKED`` of the columns, then one ``UPDATE``.
    """
    token = str(uuid.uuid4())
    wanted = None if ids is None else list(ids)
    if wanted is not None and not wanted:
        return token, []
    now = utcnow()
    chosen = claim_query(now, limit, wanted, after_id)
    values = lease_values(token, now, lease)
    with relay_connection(app) as conn:
        # (SQLite resolves ``args`` inside ``... AS args`` of a RETURNING clause to the alias: NULL)
        columns = SEND_COLUMNS_LIGHT if light and conn.dialect.name == "postgresql" else SEND_COLUMNS
        statement = update(_T).where(_chosen(conn.dialect.name, chosen)).values(**values)
        if _one_statement(conn.dialect):
            rows = list(conn.execute(statement.returning(*columns)))
        elif conn.dialect.name == "sqlite":  # before 3.35: the same UPDATE, then read back by token
            conn.execute(statement)
            rows = list(conn.execute(select(*columns).where(_T.c.claim_token == token)))
        else:
            rows = list(conn.execute(chosen.with_only_columns(*columns).with_for_update(skip_locked=True)))
            if rows:
                conn.execute(update(_T).where(_T.c.id.in_([r.id for r in rows])).values(**values))
    return token, sorted((ClaimedRow(*row) for row in rows), key=_row_id)


def _row_id(row: Row[Any] | ClaimedRow | PendingMessage) -> int:
    return int(row.id)


def claim(
    app: Celery, *, limit: int, lease: float, ids: Iterable[int] | None = None
) -> tuple[str, list[PendingMessage]]:
    """Lease up to ``limit`` due rows (or exactly ``ids``, if still unsent) to a new token.

    The rows come as :class:`PendingMessage` objects, oldest first: from the ``UPDATE ...
    RETURNING`` itself on PostgreSQL and SQLite, read back by id on MariaDB.
    """
    token = str(uuid.uuid4())
    wanted = None if ids is None else list(ids)
    if wanted is not None and not wanted:
        return token, []
    now = utcnow()
    chosen = claim_query(now, limit, wanted)
    values = lease_values(token, now, lease)
    with session_scope(app) as session:
        dialect = session.get_bind().dialect
        if _one_statement(dialect):
            statement = (
                update(PendingMessage)
                .where(_chosen(dialect.name, chosen))
                .values(**values)
                .returning(PendingMessage)
                .execution_options(synchronize_session=False)
            )
            return token, sorted(session.scalars(statement), key=_row_id)
        conn = session.connection()
        if dialect.name == "sqlite":  # before 3.35: the same UPDATE, then read back by token
            conn.execute(update(_T).where(_chosen("sqlite", chosen)).values(**values))
            query = select(PendingMessage).where(PendingMessage.claim_token == token).order_by(PendingMessage.id)
            return token, list(session.scalars(query))
        ids_locked = list(conn.execute(chosen.with_for_update(skip_locked=True)).scalars())
        if not ids_locked:
            return token, []
        conn.execute(update(_T).where(_T.c.id.in_(ids_locked)).values(**values))
        query = select(PendingMessage).where(PendingMessage.id.in_(ids_locked)).order_by(PendingMessage.id)
        return token, list(session.scalars(query))


def id_among(dialect: str, ids: Sequence[int]) -> ColumnElement[bool]:
    """``id`` is one of ``ids``: on PostgreSQL one array parameter instead of one parameter per id."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        return _T.c.id == any_(bindparam("row_ids", list(ids), type_=ARRAY(BigInteger)))
    return _T.c.id.in_(list(ids))


def sent_values(check_after: float | None = None) -> dict[str, Any]:
    """The columns of a row just sent (``check_after``: see :func:`mark_sent`)."""
    now = utcnow()
    values: dict[str, Any] = {"status": PendingStatus.SENT, "sent_at": now, "claim_token": None}
    values["lease_expires_at"] = None
    if check_after is not None:
        values.update(tracked=True, next_attempt_at=now + timedelta(seconds=check_after))
    return values


def status_values(status: str, error: str) -> dict[str, Any]:
    """The columns of a row moved to a final state (expired, invalid, dead) for ``error``."""
    return {"status": status, "last_error": error[:10000], "claim_token": None, "lease_expires_at": None}


def _update_claimed(app: Celery, token: str, ids: Sequence[int], values: dict[str, Any]) -> int:
    """Update the rows among ``ids`` that ``token`` still holds; returns how many."""
    if not ids:
        return 0
    with relay_connection(app) as conn:
        matches = id_among(conn.dialect.name, ids)
        result = conn.execute(update(_T).where(matches, _T.c.claim_token == token).values(**values))
        return int(result.rowcount or 0)


def mark_sent(app: Celery, token: str, ids: Sequence[int], check_after: float | None = None) -> int:
    """Mark claimed rows sent; rows no longer held by ``token`` are left alone. Returns count.

    ``check_after``: the rows are tracked by the ledger (they wait for their task's outcome); the
    relay first looks for them in the broker that many seconds from now.
    """
    return _update_claimed(app, token, ids, sent_values(check_after))


def mark_status(app: Celery, token: str, ids: Sequence[int], status: str, error: str) -> int:
    """Move claimed rows to a final state (expired, invalid, dead) with the reason."""
    return _update_claimed(app, token, ids, status_values(status, error))


def release(app: Celery, token: str, ids: Sequence[int]) -> int:
    """Give claimed rows back untouched (not tried in this pass)."""
    values = {"status": PendingStatus.PENDING, "claim_token": None, "lease_expires_at": None}
    return _update_claimed(app, token, ids, values)


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter (never below a tenth of the base)."""
    return max(base / 10, random.random() * min(cap, base * 2.0 ** min(attempts, 40)))


def mark_failed(
    app: Celery,
    token: str,
    failures: Sequence[tuple[int, str]],
    *,
    max_attempts: int,
    base: float,
    cap: float,
) -> tuple[int, int]:
    """Count a failed send for each row: back off, or mark dead after ``max_attempts``.

    Returns (rows rescheduled, rows now dead).
    """
    if not failures:
        return 0, 0
    with session_scope(app) as session:
        return fail_rows(session.connection(), failures, token, max_attempts=max_attempts, base=base, cap=cap)


def fail_rows(
    conn: Connection,
    failures: Sequence[tuple[int, str]],
    token: str | None,
    *,
    max_attempts: int,
    base: float,
    cap: float,
) -> tuple[int, int]:
    """:func:`mark_failed` on ``conn``; ``token`` None: rows this connection holds locked."""
    now = utcnow()
    errors = dict(failures)
    rescheduled = dead = 0
    held = [] if token is None else [_T.c.claim_token == token]
    rows = conn.execute(select(_T.c.id, _T.c.attempts).where(_T.c.id.in_(list(errors)), *held)).all()
    for row_id, stored_attempts in rows:
        # a count that is not a number (written by hand on SQLite) counts as none
        attempts = (stored_attempts if type(stored_attempts) is int else 0) + 1
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_error": errors[row_id][:10000],
            "claim_token": None,
            "lease_expires_at": None,
        }
        if attempts >= max_attempts:
            values["status"] = PendingStatus.DEAD
            dead += 1
        else:
            values["status"] = PendingStatus.PENDING
            values["next_attempt_at"] = now + timedelta(seconds=backoff_seconds(attempts, base, cap))
            rescheduled += 1
        conn.execute(update(_T).where(_T.c.id == row_id, *held).values(**values))
    return rescheduled, dead
