"""Alembic environment of celery_reliable: its own version table, our metadata only."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine

from celery_reliable.store.migrate import VERSION_TABLE
from celery_reliable.store.models import Base

config = context.config


def _include_object(obj, name, type_, reflected, compare_to):
    # Only our tables: the database is usually shared with the application's own.
    if type_ == "table":
        return bool(name and name.startswith("celery_reliable_"))
    return True


def run() -> None:
    options: dict[str, Any] = {
        "target_metadata": Base.metadata,
        "version_table": VERSION_TABLE,
        "include_object": _include_object,
        "compare_type": True,
    }
    if context.is_offline_mode():
        context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite", **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as conn:
            context.configure(connection=conn, render_as_batch=conn.dialect.name == "sqlite", **options)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


run()
