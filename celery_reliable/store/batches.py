"""The relay's batches: what holds their rows, and how each row's outcome is written.

On MariaDB and SQLite a batch is leased to a token (:mod:`.claims`), which writes every row
twice: once to claim it, once to mark it sent. On PostgreSQL a relay instead selects its batch
``FOR UPDATE SKIP LOCKED`` in a transaction it keeps open while it sends, and writes each row
once, with what became of it, in the commit that releases it. Another relay skips locked rows,
as it skips leased ones.

The crash points:

- the relay dies before its commit (before, during or after sending): its connection closes,
  PostgreSQL rolls the transaction back and the rows are due at once, unchanged. Rows it had
  sent go out again with the same task id (as with a lease: the task's idempotency decides);
- the relay stalls: the transaction's ``idle_in_transaction_session_timeout`` is the lease
  (``reliable_relay_lease``). PostgreSQL ends the session, the rows are free for another relay,
  and the stalled relay's late update fails: it never marks a row another relay took;
- PostgreSQL crashes after the commit (asynchronous commit): the rows may be due again, and go
  out once more with the same task id.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from celery import Celery
from sqlalchemy import Connection, Select, Table, select, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..config import get_settings
from .claims import (
    SEND_COLUMNS,
    SEND_COLUMNS_LIGHT,
    ClaimedRow,
    claim_rows,
    due,
    fail_rows,
    id_among,
    mark_failed,
    mark_sent,
    mark_status,
    release,
    sent_values,
    status_values,
)
from .engine import get_autocommit_engine
from .failures import store_error
from .models import PendingMessage, utcnow

logger = logging.getLogger(__name__)

_T: Table = PendingMessage.__table__  # type: ignore[assignment]

#: SQLSTATE of a session PostgreSQL ended for idling in a transaction longer than allowed.
LEASE_RAN_OUT = "25P03"


class Claim(Protocol):
    """What a relay holds of a batch, and how it records what became of each row.

    :class:`LeasedClaim`: rows claimed under a lease and a token (every database);
    :class:`LockedClaim`: rows locked in an open transaction
    (PostgreSQL), written once, when their outcome is known.
    """

    def sent(self, ids: Sequence[int], check_after: float | None = None) -> int: ...
    def status(self, ids: Sequence[int], status: str, error: str) -> int: ...
    def release(self, ids: Sequence[int]) -> int: ...
    def failed(
        self, failures: Sequence[tuple[int, str]], *, max_attempts: int, base: float, cap: float
    ) -> tuple[int, int]: ...
    def finish(self) -> None: ...
    def abandon(self, ids: Sequence[int]) -> int: ...


class LeasedClaim:
    """Rows leased to ``token``: each outcome is one statement of its own (see the functions above)."""

    def __init__(self, app: Celery, token: str) -> None:
        self.app = app
        self.token = token

    def sent(self, ids: Sequence[int], check_after: float | None = None) -> int:
        return mark_sent(self.app, self.token, ids, check_after)

    def status(self, ids: Sequence[int], status: str, error: str) -> int:
        return mark_status(self.app, self.token, ids, status, error)

    def release(self, ids: Sequence[int]) -> int:
        return release(self.app, self.token, ids)

    def failed(
        self, failures: Sequence[tuple[int, str]], *, max_attempts: int, base: float, cap: float
    ) -> tuple[int, int]:
        return mark_failed(self.app, self.token, failures, max_attempts=max_attempts, base=base, cap=cap)

    def finish(self) -> None:
        """Nothing to end: every outcome was written when it was known."""

    def abandon(self, ids: Sequence[int]) -> int:
        """Give the rows back untouched (a batch claimed but never sent)."""
        return release(self.app, self.token, ids)


def claim_batch(
    app: Celery, *, limit: int, lease: float, after_id: int | None = None, light: bool = False
) -> tuple[Claim, list[ClaimedRow]]:
    """A relay batch: ``limit`` due rows (above ``after_id``, if given), oldest first.

    PostgreSQL: held by row locks (:class:`LockedClaim`); other databases: leased to a token.
    """
    if get_autocommit_engine(app).dialect.name == "postgresql":
        return lock_rows(app, limit=limit, lease=lease, after_id=after_id, light=light)
    token, rows = claim_rows(app, limit=limit, lease=lease, after_id=after_id, light=light)
    return LeasedClaim(app, token), rows


def lock_rows(
    app: Celery, *, limit: int, lease: float, after_id: int | None = None, light: bool = False
) -> tuple[LockedClaim, list[ClaimedRow]]:
    """Lock up to ``limit`` due rows in a new transaction and read them; nothing is written."""
    url = get_settings(app).database_url
    try:
        conn = get_autocommit_engine(app).connect()
    except SQLAlchemyError as exc:
        raise store_error(url, exc) from exc
    claim = LockedClaim(conn, url)
    try:
        # The engine commits each statement on its own: this transaction is begun and ended by hand.
        conn.exec_driver_sql("BEGIN")
        conn.exec_driver_sql(f"SET LOCAL idle_in_transaction_session_timeout = {max(1, round(lease * 1000))}")
        rows = [ClaimedRow(*row) for row in conn.execute(lock_query(utcnow(), limit, after_id, light))]
    except BaseException as exc:
        claim.close(commit=False)
        if isinstance(exc, SQLAlchemyError):
            raise store_error(url, exc) from exc
        raise
    if not rows:
        claim.close(commit=False)
    return claim, rows


def lock_query(now: datetime, limit: int, after_id: int | None = None, light: bool = False) -> Select[Any]:
    """The batch a relay locks: ``limit`` due rows oldest first (above ``after_id``), skipping locked ones.

    Found through the partial index on open rows, as a leased claim's rows are.
    """
    chosen = select(*(SEND_COLUMNS_LIGHT if light else SEND_COLUMNS)).where(due(now))
    if after_id is not None:
        chosen = chosen.where(_T.c.id > after_id)
    return chosen.order_by(_T.c.id).limit(limit).with_for_update(skip_locked=True)


class LockedClaim:
    """Rows this relay holds locked in its open transaction (see the module's docstring).

    Every outcome is written in the transaction and takes effect with :meth:`finish`. Used by one
    thread at a time (the relay hands a batch from its claiming thread to its sending one).
    """

    def __init__(self, conn: Connection, url: str) -> None:
        self._conn: Connection | None = conn
        self._url = url
        #: PostgreSQL ended the session (the lease ran out): the rows may be another relay's now
        self.lost = False

    def sent(self, ids: Sequence[int], check_after: float | None = None) -> int:
        return self._update(ids, sent_values(check_after))

    def status(self, ids: Sequence[int], status: str, error: str) -> int:
        return self._update(ids, status_values(status, error))

    def release(self, ids: Sequence[int]) -> int:
        """Rows not tried: nothing to write, the commit unlocks them as they were."""
        return 0 if self.lost else len(ids)

    def failed(
        self, failures: Sequence[tuple[int, str]], *, max_attempts: int, base: float, cap: float
    ) -> tuple[int, int]:
        if not failures:
            return 0, 0
        result = self._run(lambda conn: fail_rows(conn, failures, None, max_attempts=max_attempts, base=base, cap=cap))
        return (0, 0) if result is None else result

    def finish(self) -> None:
        """Commit what was written: the rows take their new states and are unlocked."""
        self.close(commit=True)

    def abandon(self, ids: Sequence[int]) -> int:
        """Roll back: the rows are due again, unchanged."""
        held = not self.lost
        self.close(commit=False)
        return len(ids) if held else 0

    def close(self, *, commit: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if commit and not self.lost:
                try:
                    conn.exec_driver_sql("COMMIT")
                except DBAPIError as exc:
                    if not self._lease_ran_out(exc):
                        raise store_error(self._url, exc) from exc
                    conn.invalidate()
                return
            if not self.lost:
                try:
                    conn.exec_driver_sql("ROLLBACK")
                except DBAPIError:  # the session is gone: so is its transaction
                    conn.invalidate()
        finally:
            conn.close()

    def _update(self, ids: Sequence[int], values: dict[str, Any]) -> int:
        if not ids:
            return 0
        matches = id_among("postgresql", ids)
        count = self._run(lambda conn: conn.execute(update(_T).where(matches).values(**values)).rowcount)
        return int(count or 0)

    def _run(self, work: Any) -> Any:
        """``work(conn)`` in the transaction; None once the session is gone with the lease."""
        if self.lost or self._conn is None:
            return None
        try:
            return work(self._conn)
        except DBAPIError as exc:
            if not self._lease_ran_out(exc):
                self.close(commit=False)
                raise store_error(self._url, exc) from exc
            return None

    def _lease_ran_out(self, exc: DBAPIError) -> bool:
        """Whether PostgreSQL ended this session for idling past the lease; if so, let it go."""
        if getattr(exc.orig, "sqlstate", None) != LEASE_RAN_OUT:
            return False
        self.lost = True
        logger.warning(
            "Relay: a batch was held longer than reliable_relay_lease; PostgreSQL ended its session "
            "and another relay may send its rows. Nothing was marked."
        )
        if self._conn is not None:
            self._conn.invalidate()
        return True
