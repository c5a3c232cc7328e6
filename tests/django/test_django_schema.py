"""``manage.py migrate`` gives the reliability tables exactly the schema the Alembic migrations
give (columns, types, nullability, indexes with their partial conditions, unique constraints),
on SQLite, PostgreSQL and MariaDB; an Alembic install switches with ``migrate --fake-initial``."""

from __future__ import annotations

import re
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from celery_reliable import upgrade
from celery_reliable.store.migrate import VERSION_TABLE, current_revision, head_revision
from celery_reliable.store.models import Base
from tests.django.shop import manage, shop_celery

pytestmark = pytest.mark.integration

TABLES = {
    "celery_reliable_failed_task",
    "celery_reliable_processed_task",
    "celery_reliable_pending_message",
    "celery_reliable_verify_effect",
    VERSION_TABLE,
}


def _where(index: dict[str, Any], dialect: str) -> str | None:
    where = index.get("dialect_options", {}).get(f"{dialect}_where")
    return None if where is None else re.sub(r"[\s()\"`]", "", str(where)).lower()


def schema(url: str) -> dict[str, Any]:
    """Our tables as the database describes them."""
    engine = create_engine(url)
    try:
        insp, dialect = inspect(engine), engine.dialect
        found: dict[str, Any] = {}
        for table in sorted(t for t in insp.get_table_names() if t.startswith("celery_reliable_")):
            columns = {
                c["name"]: (str(c["type"].compile(dialect=dialect)).upper(), c["nullable"], c.get("default"))
                for c in insp.get_columns(table)
            }
            indexes = sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]), _where(i, dialect.name))
                for i in insp.get_indexes(table)
            )
            uniques = sorted((u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(table))
            primary = tuple(insp.get_pk_constraint(table)["constrained_columns"])
            found[table] = {"columns": columns, "indexes": indexes, "unique": uniques, "primary key": primary}
        return found
    finally:
        engine.dispose()


def _ours(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    return type_ != "table" or bool(name and name.startswith("celery_reliable_") and name != VERSION_TABLE)


def differences_from_models(url: str) -> list[str]:
    """What Alembic's autogenerate would change to make the database match the SQLAlchemy models."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            opts = {"compare_type": True, "compare_server_default": True, "include_object": _ours}
            context = MigrationContext.configure(conn, opts=opts)
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    # (kind, table, column) of each difference: a reflected default Alembic cannot compare shows up
    # for the database the Alembic migrations made too (MariaDB's tinyint '0' against false())
    return sorted(repr([step[:4] if isinstance(step, tuple) else step for step in d]) for d in map(_steps, diff))


def _steps(diff: Any) -> list[Any]:
    return diff if isinstance(diff, list) else [diff]


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def two_dbs(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, str]:
    """Two empty databases of one kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'alembic.sqlite3'}", f"sqlite:///{tmp_path / 'django.sqlite3'}"
    first = str(request.getfixturevalue(f"{request.param}_db"))
    from tests.conftest import _own_database

    server = first.rpartition("/")[0] + "/test"
    second = _own_database(server, request.param)
    url = next(second)
    request.addfinalizer(lambda: next(second, None))
    return first, url


def test_django_migrations_give_the_alembic_schema(two_dbs: tuple[str, str]) -> None:
    alembic_url, django_url = two_dbs
    upgrade(alembic_url)
    manage(django_url, "migrate", "--no-input")

    by_alembic, by_django = schema(alembic_url), schema(django_url)
    assert set(by_alembic) == TABLES
    assert by_django == by_alembic
    assert differences_from_models(django_url) == differences_from_models(alembic_url)
    if not django_url.startswith("mysql"):
        assert differences_from_models(django_url) == []
    assert current_revision(django_url) == head_revision()
    pending = by_django["celery_reliable_pending_message"]["indexes"]
    partial = {name: where for name, _, _, where in pending}
    if django_url.startswith(("sqlite", "postgresql")):  # partial where the database has them
        assert partial["ix_celery_reliable_pending_message_open"] is not None
    else:
        assert partial["ix_celery_reliable_pending_message_open"] is None


def test_the_django_migration_records_the_newest_alembic_revision() -> None:
    from importlib import import_module

    migration = import_module("celery_reliable.contrib.django.migrations.0001_initial")
    assert migration.ALEMBIC_REVISION == head_revision()


def test_an_alembic_install_switches_with_fake_initial(any_db_url: str) -> None:
    # Given tables the Alembic migrations made, with a row in them
    upgrade(any_db_url)
    engine = create_engine(any_db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO celery_reliable_processed_task (task_id, task_name, completed_at) "
                    "VALUES ('t-1', 'shop.charge', '2026-12-04 10:00:00')"
                )
            )
        before = schema(any_db_url)
        # When Django takes them over
        out = manage(any_db_url, "migrate", "--fake-initial", "--no-input").stdout
        # Then nothing changed but Django's record of its migrations
        assert "celery_reliable.0001_initial... FAKED" in out
        assert schema(any_db_url) == before
        assert current_revision(any_db_url) == head_revision()
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT count(*) FROM celery_reliable_processed_task")).scalar_one()
            applied = conn.execute(
                text("SELECT count(*) FROM django_migrations WHERE app = 'celery_reliable' AND name = '0001_initial'")
            ).scalar_one()
        assert (rows, applied) == (1, 1)
        # and a second migrate has nothing to do
        assert "No migrations to apply" in manage(any_db_url, "migrate", "--no-input").stdout
    finally:
        engine.dispose()


def test_migrating_back_to_zero_drops_the_tables(sqlite_db: str) -> None:
    manage(sqlite_db, "migrate", "--no-input")
    manage(sqlite_db, "migrate", "celery_reliable", "zero", "--no-input")
    assert not set(schema(sqlite_db))


def test_the_cli_sees_djangos_database(sqlite_db: str) -> None:
    before = shop_celery(sqlite_db, "reliable", "db", "current")
    assert (before.returncode, before.stdout.strip()) == (1, f"database: not migrated  shipped head: {head_revision()}")
    assert sqlite_db in before.stderr  # Django's database, not the default file
    manage(sqlite_db, "migrate", "--no-input")
    after = shop_celery(sqlite_db, "reliable", "db", "current")
    head = head_revision()
    assert (after.returncode, after.stdout.strip()) == (0, f"database: {head}  shipped head: {head}")


def test_the_models_match_their_migrations_and_pass_djangos_checks(sqlite_db: str) -> None:
    made = manage(sqlite_db, "makemigrations", "celery_reliable", "--check", "--dry-run")
    assert "No changes detected" in made.stdout
    assert "System check identified no issues" in manage(sqlite_db, "check").stdout
