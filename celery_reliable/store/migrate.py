"""Schema migrations shipped in the package (Alembic, own version table).

Tables are created and changed only here, on request (``celery -A proj reliable db upgrade`` or
:func:`upgrade`): never at import or task-bind time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from celery import Celery
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from ..exceptions import StoreError
from .errors import diagnose

#: Alembic's version table for our migrations, apart from the application's own.
VERSION_TABLE = "celery_reliable_alembic_version"
#: The newest revision in ``migrations/versions`` (a test keeps it equal to :func:`head_revision`),
#: for the worker's start-up check, which should not build Alembic's script directory for it.
HEAD_REVISION = "0005"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic ``Config`` for the migrations in this package (no ini file needed)."""
    config = Config()
    config.set_main_option("script_location", "celery_reliable.store:migrations")
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _engine(target: Celery | str | Engine) -> tuple[Engine, bool]:
    """The engine of ``target`` and whether it is ours to dispose of.

    Raises:
        StoreError: a URL that cannot work (unknown dialect, missing driver), with the fix.
    """
    from .engine import get_engine

    if isinstance(target, Engine):
        return target, False
    if isinstance(target, str):
        try:
            return create_engine(target), True
        except (SQLAlchemyError, ImportError) as exc:
            raise StoreError(str(diagnose(target, exc))) from exc
    return get_engine(target), False


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


@contextmanager
def quiet_alembic() -> Iterator[None]:
    """Alembic's ``alembic`` logger at WARNING for the call, unless the user configured it.

    Alembic logs "Context impl PostgresqlImpl." and "Will assume transactional DDL." at INFO each
    time a migration context opens; when the library checks or migrates its tables from a worker
    they would land in the worker's log. A level or a handler set on ``alembic`` is left alone.
    """
    log = logging.getLogger("alembic")
    configured = [h for h in log.handlers if not isinstance(h, logging.NullHandler)]  # Alembic adds a NullHandler
    if log.level != logging.NOTSET or configured:
        yield
        return
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(logging.NOTSET)


def upgrade(target: Celery | str | Engine, revision: str = "head") -> None:
    """Bring the reliability tables of ``target`` (an app, a URL or an engine) to ``revision``."""
    _run(target, lambda cfg: command.upgrade(cfg, revision))


def downgrade(target: Celery | str | Engine, revision: str) -> None:
    """Take the reliability tables back to ``revision`` (``"base"`` drops them)."""
    _run(target, lambda cfg: command.downgrade(cfg, revision))


def _run(target: Celery | str | Engine, action) -> None:  # type: ignore[no-untyped-def]
    try:
        engine, owned = _engine(target)
    except StoreError as exc:
        raise StoreError(f"migration failed: {exc}") from exc.__cause__
    try:
        with quiet_alembic(), engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            action(config)
    except SQLAlchemyError as exc:
        raise StoreError(f"migration failed: {diagnose(_url(engine), exc)}") from exc
    except CommandError as exc:  # e.g. an unknown --revision
        heads = ", ".join(str(s.revision) for s in ScriptDirectory.from_config(alembic_config()).walk_revisions())
        raise StoreError(f"migration failed: {exc} (revisions shipped: {heads}, or head / base)") from None
    finally:
        if owned:
            engine.dispose()


def head_revision() -> str:
    """The newest revision shipped in this version of the package."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(target: Celery | str | Engine) -> str | None:
    """The revision the database is at, or ``None`` if it was never migrated."""
    engine, owned = _engine(target)
    try:
        with quiet_alembic(), engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the schema version: {diagnose(_url(engine), exc)}") from exc
    finally:
        if owned:
            engine.dispose()


def stored_revision(target: Celery | str | Engine) -> str | None:
    """:func:`current_revision` read straight from the version table, without Alembic.

    The worker's start-up check: Alembic's migration context (and the objects it builds) would
    stay in the worker's main process for its whole life. Revisions in more than one row (a
    branched history, which this package does not ship) come back joined with ", ".
    """
    engine, owned = _engine(target)
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(VERSION_TABLE):
                return None
            rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the schema version: {diagnose(_url(engine), exc)}") from exc
    finally:
        if owned:
            engine.dispose()
    return ", ".join(sorted(rows)) if rows else None
