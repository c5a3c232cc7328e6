"""One SQLAlchemy engine per app and process.

A pooled connection must never cross a fork: the engine remembers the pid that made it, and a
child (prefork pool, ``worker_process_init``) drops the inherited pool without closing the
parent's sockets (``dispose(close=False)``).

SQLite needs more: its library keeps, per process, which locks the process's connections hold
on a file. A child forked while a parent's thread holds a connection inherits that bookkeeping,
and its own connections then wait for a write lock nobody releases ("database is locked" after
the busy timeout). So before this process forks (a prefork worker replacing a pool process), the
fork waits for SQLite connections in use to come back and closes the idle ones (:class:`_ForkGuard`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool, PoolProxiedConnection

from ..config import get_settings
from ..exceptions import StoreError
from .errors import diagnose, mask


@dataclass
class _Handle:
    pid: int
    url: str
    engine: Engine
    sessions: sessionmaker[Session]
    autocommit: Engine | None = None
    held: Engine | None = None
    #: each thread's held connection (see :func:`held_connection`), and all of them, to close
    local: threading.local = field(default_factory=threading.local)
    holding: list[PoolProxiedConnection] = field(default_factory=list)

    def dispose(self, close: bool = True) -> None:
        self.engine.dispose(close=close)
        if self.autocommit is not None:
            self.autocommit.dispose(close=close)
        if close:
            for conn in self.holding:
                conn.close()
        self.holding.clear()


_handles: weakref.WeakKeyDictionary[Celery, _Handle] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class _ForkGuard:
    """No SQLite connection of this process is open while it forks (see the module's docstring).

    Connections are counted from their connect or checkout to their checkin; a fork waits (at most
    ``WAIT`` s) until none is out, keeps new ones from starting until it is done, and closes the
    idle ones of every SQLite engine first.
    """

    WAIT = 10.0

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.out = 0
        self.forking = False
        self.engines: weakref.WeakSet[Engine] = weakref.WeakSet()

    def watch(self, engine: Engine) -> None:
        self.engines.add(engine)
        event.listen(engine, "connect", self._on_connect)
        event.listen(engine, "checkout", self._on_checkout)
        event.listen(engine, "checkin", self._on_checkin)

    def _start(self) -> None:
        with self.cond:
            self.cond.wait_for(lambda: not self.forking, timeout=self.WAIT)
            self.out += 1

    def _on_connect(self, _dbapi_conn: Any, record: Any) -> None:
        self._start()
        record.info["reliable_counted"] = True  # the checkout that follows is this same use

    def _on_checkout(self, _dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if not record.info.pop("reliable_counted", False):
            self._start()

    def _on_checkin(self, _dbapi_conn: Any, record: Any) -> None:
        with self.cond:
            self.out = max(0, self.out - 1)
            self.cond.notify_all()

    def before_fork(self) -> None:
        with self.cond:
            self.forking = True
            self.cond.wait_for(lambda: self.out == 0, timeout=self.WAIT)
        for engine in list(self.engines):
            engine.pool.dispose()  # the idle connections: closed here, never inherited

    def after_fork_in_parent(self) -> None:
        with self.cond:
            self.forking = False
            self.cond.notify_all()

    def after_fork_in_child(self) -> None:
        self.cond = threading.Condition()
        self.out = 0
        self.forking = False


_fork_guard = _ForkGuard()
os.register_at_fork(
    before=_fork_guard.before_fork,
    after_in_parent=_fork_guard.after_fork_in_parent,
    after_in_child=_fork_guard.after_fork_in_child,
)


def _make_engine(url: str, **options: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **options)
        _fork_guard.watch(engine)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute("PRAGMA busy_timeout=30000")
                try:
                    cursor.execute("PRAGMA journal_mode=WAL")
                except sqlite3.OperationalError:
                    # Another process holds the write lock; WAL is a property of the file and
                    # that process (or the next connection) sets it.
                    pass
            finally:
                cursor.close()

        return engine
    pooled = {} if options.get("poolclass") is NullPool else {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 4}
    return create_engine(url, **{**pooled, **options})


def make_engine(url: str, **options: Any) -> Engine:
    """An engine for ``url``; a URL that cannot work (unknown dialect, driver not installed, not a
    URL) raises :class:`StoreError` saying why and what to write instead, never an ImportError.
    """
    try:
        return _make_engine(url, **options)
    except (SQLAlchemyError, ImportError) as exc:
        raise StoreError(str(diagnose(url, exc))) from exc


def get_engine(app: Celery) -> Engine:
    """The engine of ``app`` in this process, created on first use."""
    return _handle(app).engine


def get_autocommit_engine(app: Celery) -> Engine:
    """An engine whose statements commit on their own: one round trip for a lookup or an insert.

    Used on the hot path of idempotent tasks. No pre-ping and no reset on return (there is no
    transaction to roll back); a connection found dead is retried once by the caller.
    """
    handle = _handle(app)
    if handle.autocommit is None:
        with _lock:
            if handle.autocommit is None:
                engine = _make_engine(
                    handle.url,
                    isolation_level="AUTOCOMMIT",
                    pool_pre_ping=False,
                    pool_reset_on_return=None,
                )
                if engine.dialect.name == "postgresql":
                    event.listen(engine, "connect", _asynchronous_commit)
                handle.autocommit = engine
    return handle.autocommit


#: Most connections held by one process (:func:`held_connection`); more threads (a thread or
#: greenlet pool) share the autocommit pool instead.
MAX_HELD = 8


def held_connection(app: Celery) -> PoolProxiedConnection | None:
    """This thread's own autocommit connection, held for the life of the process.

    For the one statement every idempotent task runs before it starts: no pool checkout and
    return around it, and a statement prepared once per connection stays prepared. It comes
    from an engine without a pool, so a held connection never takes a slot of the shared pools.
    None once :data:`MAX_HELD` threads of the process hold one, and always for SQLite (a local
    file, no round trip to save; and a connection open for good would be open across a fork).
    :func:`drop_held_connection` replaces a dead one.
    """
    handle = _handle(app)
    if handle.url.startswith("sqlite"):
        return None
    conn: PoolProxiedConnection | None = getattr(handle.local, "conn", None)
    if conn is not None:
        return conn
    with _lock:
        if len(handle.holding) >= MAX_HELD:
            return None
        if handle.held is None:
            handle.held = _make_engine(handle.url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        held = handle.held
    conn = held.raw_connection()
    with _lock:
        if len(handle.holding) >= MAX_HELD:  # other threads took the last places meanwhile
            conn.close()
            return None
        handle.holding.append(conn)
    handle.local.conn = conn
    return conn


def drop_held_connection(app: Celery, conn: PoolProxiedConnection) -> None:
    """Close a held connection found dead; the thread's next :func:`held_connection` opens another."""
    handle = _handle(app)
    if getattr(handle.local, "conn", None) is conn:
        handle.local.conn = None
    with _lock:
        if conn in handle.holding:
            handle.holding.remove(conn)
    try:
        conn.invalidate()
    except Exception:  # already broken: nothing left to close
        pass


def _asynchronous_commit(dbapi_conn: Any, _record: Any) -> None:
    """Completion records written outside the task's transaction don't wait for the WAL fsync.

    Such a record only narrows a window that is already open (a worker dying between the
    task's effect and the record): losing it in a PostgreSQL crash means, at worst, one more
    run of a task that is at-least-once anyway. Records made with ``record_completion`` commit
    with the task's own transaction and keep its durability.
    """
    cursor = dbapi_conn.cursor()
    cursor.execute("SET synchronous_commit TO OFF")
    cursor.close()


def get_sessionmaker(app: Celery) -> sessionmaker[Session]:
    """A ``sessionmaker`` bound to :func:`get_engine`."""
    return _handle(app).sessions


def _handle(app: Celery) -> _Handle:
    handle = _handles.get(app)
    pid = os.getpid()
    if handle is not None and handle.pid == pid:
        return handle
    with _lock:
        handle = _handles.get(app)
        if handle is not None and handle.pid != pid:
            handle.dispose(close=False)
            handle = None
        if handle is None:
            url = get_settings(app).database_url
            engine = make_engine(url)
            handle = _Handle(pid, url, engine, sessionmaker(engine, expire_on_commit=False))
            _handles[app] = handle
        return handle


def reset_after_fork(app: Celery) -> None:
    """Drop the pool inherited from the parent process (called from ``worker_process_init``)."""
    handle = _handles.get(app)
    if handle is not None and handle.pid != os.getpid():
        handle.dispose(close=False)
        _handles.pop(app, None)


def dispose(app: Celery) -> None:
    """Close the engine of ``app`` (tests, shutdown)."""
    handle = _handles.pop(app, None)
    if handle is not None:
        handle.dispose()


def safe_url(url: str) -> str:
    """The URL with its password masked, for logs and errors."""
    return mask(url)
