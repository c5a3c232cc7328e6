"""Typed SQLAlchemy models of the reliability tables.

Constraint names come from a naming convention so they are the same on every database and in
every migration. Payloads are JSON (JSONB on PostgreSQL), never pickle; times are UTC.

Every column type here reads whatever a cell holds without raising: SQLite lets anyone write any
value into any column (text into a time or JSON column, a number into a name), and one such row
must not stop a relay pass or break a page. A JSON cell that does not decode reads as an
unreadable marker (see :mod:`.payload`), a time that does not parse as an :class:`UnreadableTime`,
text that is not text as :class:`NotText`; the relay and replay refuse rows holding any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Index, Integer, MetaData, String, Text, false, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

from .payload import unreadable_marker

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class SafeJSON(TypeDecorator[Any]):
    """JSON everywhere, JSONB on PostgreSQL; a cell that does not decode reads as an unreadable marker."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":  # (the dialect's own module: loaded only where it is used)
            from sqlalchemy.dialects import postgresql

            return dialect.type_descriptor(postgresql.JSONB())
        return dialect.type_descriptor(JSON())

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        inner = super().result_processor(dialect, coltype)
        if inner is None:  # the driver decodes (psycopg's JSONB): a cell it returned is valid JSON
            return None

        def process(value: Any) -> Any:
            try:
                return inner(value)
            except Exception as exc:
                if type(value) is int or type(value) is float:  # a JSON number (SQLite's numeric affinity)
                    return value
                return unreadable_marker(value, exc)

        return process


#: The JSON columns' type.
JSONType = SafeJSON()


class NotText(str):
    """A text column's cell that held something else (SQLite: a number or bytes): its ``str``.

    Readers show it as text; the relay and replay, which check ``type(value) is str``, refuse it.
    """

    raw: Any

    def __new__(cls, raw: Any) -> NotText:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else str(raw)
        value = super().__new__(cls, text)
        value.raw = raw
        return value


class SafeString(TypeDecorator[str]):
    """A VARCHAR whose cells always read as ``str`` (:class:`NotText` when they were not text)."""

    impl = String
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None or type(value) is str:
            return value
        return NotText(value)


class SafeText(SafeString):
    """:class:`SafeString` of a TEXT column."""

    impl = Text
    cache_ok = True


class UnreadableTime(datetime):
    """A time column's cell that does not parse (text written by hand on SQLite).

    A datetime, so readers that format or compare times keep working; it shows as
    ``unreadable: <the raw text>``. The relay and replay refuse a row holding one.
    """

    raw: str
    error: str

    def __new__(cls, raw: Any, error: BaseException) -> UnreadableTime:
        value = super().__new__(cls, 1, 1, 1, tzinfo=timezone.utc)
        value.raw = str(raw)[:200]
        value.error = f"{type(error).__name__}: {error}"[:300]
        return value

    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        return f"unreadable: {self.raw!r}"

    def strftime(self, format: str) -> str:
        return self.isoformat()

    def astimezone(self, tz: Any = None) -> UnreadableTime:
        return self

    def __str__(self) -> str:
        return self.isoformat()

    def __format__(self, format_spec: str) -> str:
        return self.isoformat()


#: Integer primary keys that autoincrement on SQLite too (BIGINT elsewhere).
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database (SQLite and MariaDB store naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        # MySQL/MariaDB DATETIME keeps whole seconds unless asked for microseconds: an eta or a
        # lease would be cut short by up to a second.
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql

            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use datetime.now(timezone.utc)")
        value = value.astimezone(timezone.utc)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], datetime | None] | None:
        inner = super().result_processor(dialect, coltype)
        if inner is None:
            return None

        def process(value: Any) -> datetime | None:
            try:
                return inner(value)
            except Exception as exc:
                return UnreadableTime(value, exc)

        return process


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of the celery_reliable tables."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class FailureStatus:
    """Values of :attr:`FailedTask.status`."""

    FAILED = "failed"  #: waiting for a person
    REPLAYING = "replaying"  #: claimed by a replay that has not confirmed the send yet
    REPLAYED = "replayed"  #: sent again; ``replay_task_id`` is the new delivery
    ALL = (FAILED, REPLAYING, REPLAYED)


class FailedTask(Base):
    """A task that will not be retried again: everything needed to inspect and replay it."""

    __tablename__ = "celery_reliable_failed_task"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(SafeString(255), unique=True)
    task_name: Mapped[str] = mapped_column(SafeString(255), index=True)
    #: why it is here: exception, permanent, worker_lost, time_limit, retry_publish_failed,
    #: unknown_task, invalid_message
    reason: Mapped[str] = mapped_column(SafeString(32))
    status: Mapped[str] = mapped_column(SafeString(16), default=FailureStatus.FAILED, index=True)
    args: Mapped[Any] = mapped_column(JSONType, nullable=True)
    kwargs: Mapped[Any] = mapped_column(JSONType, nullable=True)
    #: delivery options needed to replay: queue, exchange, routing_key, priority, headers
    options: Mapped[Any] = mapped_column(JSONType, nullable=True)
    #: the raw message (body, headers, properties) when it never reached a task
    raw_message: Mapped[Any] = mapped_column(JSONType, nullable=True)
    exc_type: Mapped[str] = mapped_column(SafeString(255), default="")
    exc_message: Mapped[str] = mapped_column(SafeText(), default="")
    traceback: Mapped[str] = mapped_column(SafeText(), default="")
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    hostname: Mapped[str] = mapped_column(SafeString(255), default="")
    first_failed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_failed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    replay_of_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    replay_task_id: Mapped[str | None] = mapped_column(SafeString(255), nullable=True)
    replayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    replay_count: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_celery_reliable_failed_task_exc_type", "exc_type"),)


class ProcessedTask(Base):
    """A task id that completed; an idempotent task with this id is not run again."""

    __tablename__ = "celery_reliable_processed_task"

    task_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(255))
    completed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class PendingStatus:
    """Values of :attr:`PendingMessage.status`."""

    PENDING = "pending"  #: waiting to be sent (staged in an outbox, or a send that failed)
    CLAIMED = "claimed"  #: leased by a relay pass or the post-commit fast path
    SENT = "sent"  #: the broker has it; a tracked row waits here for its task's outcome
    DONE = "done"  #: its task completed, or its failure was stored (kept for ``reliable_pending_retention``)
    DEAD = "dead"  #: failed ``reliable_relay_max_attempts`` times: a person must act
    EXPIRED = "expired"  #: its ``expires`` passed before it could be sent
    INVALID = "invalid"  #: cannot be sent as stored (corrupt payload, unregistered task)
    NEEDS_ACTION = (DEAD, INVALID)
    #: the broker took it (and, for ``done``, its task reached an outcome)
    DELIVERED = (SENT, DONE)


_OPEN = text("status IN ('pending', 'claimed')")
_DELIVERED = text("status IN ('sent', 'done')")


class PendingMessage(Base):
    """A task message that is not known to be in the broker yet, stored exactly as it would be sent."""

    __tablename__ = "celery_reliable_pending_message"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(SafeString(255), index=True)
    task_name: Mapped[str] = mapped_column(SafeString(255))
    args: Mapped[Any] = mapped_column(JSONType, nullable=True)
    kwargs: Mapped[Any] = mapped_column(JSONType, nullable=True)
    #: queue, exchange, routing_key, priority, headers, link, link_error, ...
    options: Mapped[Any] = mapped_column(JSONType, nullable=True)
    eta: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: publish_fallback (a send that failed) or outbox (staged in the caller's transaction)
    source: Mapped[str] = mapped_column(SafeString(16))
    status: Mapped[str] = mapped_column(SafeString(16), default=PendingStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str] = mapped_column(SafeText(), default="")
    #: fencing token of the claim holding the row; a relay whose lease expired no longer matches
    claim_token: Mapped[str | None] = mapped_column(SafeString(36), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: the message as built for the broker (kombu's JSON envelope without the per-send
    #: properties), so the relay sends it without building it again; NULL: built when sent
    message: Mapped[str | None] = mapped_column(SafeText(), nullable=True)
    #: sent with a delivery tag of its own (a message built ahead, Redis): the relay can look for it in the
    #: broker, and resends it if the broker lost it before its task reached an outcome (the ledger)
    tracked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: when the worker recorded the task's outcome (completed, or its failure stored)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        # partial where the database has them: claims walk unsent rows only
        Index("ix_celery_reliable_pending_message_open", "id", postgresql_where=_OPEN, sqlite_where=_OPEN),
        Index(
            "ix_celery_reliable_pending_message_sent_at",
            "sent_at",
            postgresql_where=_DELIVERED,
            sqlite_where=_DELIVERED,
        ),
    )


class VerifyEffect(Base):
    """One run of a ``reliable verify`` probe task. No unique key: a probe that ran twice shows twice."""

    __tablename__ = "celery_reliable_verify_effect"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
