"""What an operator is told about a database URL that cannot work (real SQLAlchemy errors, no server)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from celery_reliable.exceptions import StoreError
from celery_reliable.store.engine import make_engine
from celery_reliable.store.errors import diagnose


def _error(url: str, sql: str = "SELECT 1") -> BaseException:
    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text(sql))
    except Exception as exc:
        return exc
    raise AssertionError(f"{url} worked")


@pytest.mark.parametrize(
    ("url", "meant"),
    [
        ("postgres://app:pw@db:5432/prod", "postgresql+psycopg://app:**@db:5432/prod"),
        ("pg://app@db/prod", "postgresql+psycopg://app@db/prod"),
        ("postgresq://app@db/prod", "postgresql+psycopg://app@db/prod"),
        ("sqlite3:////var/lib/r.db", "sqlite:////var/lib/r.db"),
        ("mysq://root@db/app", "mysql+pymysql://root@db/app"),
    ],
)
def test_an_unknown_dialect_gets_the_url_it_probably_means(url: str, meant: str) -> None:
    problem = diagnose(url, _error(url))
    assert "which SQLAlchemy does not know" in problem.detail
    assert problem.fix == f"Did you mean {meant} ?"
    assert ":pw@" not in str(problem)


def test_a_dialect_far_from_any_supported_one_lists_them() -> None:
    problem = diagnose("cockroach://x@h/d", _error("cockroach://x@h/d"))
    assert "postgresql+psycopg://, mysql+pymysql://, mariadb+pymysql://, sqlite://" in problem.fix


def test_a_missing_driver_names_the_extra_and_the_tested_url() -> None:
    problem = diagnose("mysql+mysqldb://root:pw@db/app", _error("mysql+mysqldb://root:pw@db/app"))
    assert "the database driver 'MySQLdb'" in problem.detail and "root:**@db/app" in problem.detail
    assert "pip install 'celery_reliable[mysql]'" in problem.fix and "mysql+pymysql://root:**@db/app" in problem.fix


def test_make_engine_raises_a_store_error_not_an_import_error() -> None:
    with pytest.raises(StoreError, match=r"pip install 'celery_reliable\[postgres\]'") as info:
        make_engine("postgresql+psycopg2://app:S3cret@db/prod")
    assert "S3cret" not in str(info.value)


def test_not_a_url() -> None:
    problem = diagnose("db.internal:5432", _error("db.internal:5432"))
    assert "is not a database URL" in problem.detail and "dialect+driver://" in problem.fix


def test_tables_never_created_and_an_unopenable_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite3"
    sqlite3.connect(empty).close()
    url = f"sqlite:///{empty}"
    missing = diagnose(url, _error(url, "SELECT * FROM celery_reliable_failed_task"))
    assert "has no reliability tables" in missing.detail and "reliable db upgrade" in missing.fix
    nowhere = f"sqlite:///{tmp_path / 'no-dir' / 'x.sqlite3'}"
    unopened = diagnose(nowhere, _error(nowhere))
    assert "is not reachable" in unopened.detail and "directory exists" in unopened.fix
