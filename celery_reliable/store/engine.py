"""One SQLAlchemy engine per app and process.

A pooled connection must never cross a fork: the engine remembers the pid that made it, and a
child (prefork pool, ``worker_process_init``) drops the inherited pool without closing the
parent's sockets (``dispose(close=False)``).
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass

from celery import Celery
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from ..config import get_settings


@dataclass
class _Handle:
    pid: int
    url: str
    engine: Engine
    sessions: sessionmaker[Session]


_handles: weakref.WeakKeyDictionary[Celery, _Handle] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)


def get_engine(app: Celery) -> Engine:
    """The engine of ``app`` in this process, created on first use."""
    return _handle(app).engine


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
            handle.engine.dispose(close=False)
            handle = None
        if handle is None:
            url = get_settings(app).database_url
            engine = _make_engine(url)
            handle = _Handle(pid, url, engine, sessionmaker(engine, expire_on_commit=False))
            _handles[app] = handle
        return handle


def reset_after_fork(app: Celery) -> None:
    """Drop the pool inherited from the parent process (called from ``worker_process_init``)."""
    handle = _handles.get(app)
    if handle is not None and handle.pid != os.getpid():
        handle.engine.dispose(close=False)
        _handles.pop(app, None)


def dispose(app: Celery) -> None:
    """Close the engine of ``app`` (tests, shutdown)."""
    handle = _handles.pop(app, None)
    if handle is not None:
        handle.engine.dispose()


def safe_url(url: str) -> str:
    """The URL with its password masked, for logs and errors."""
    return str(maybe_sanitize_url(url))
