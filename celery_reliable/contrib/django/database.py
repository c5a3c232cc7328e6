"""The store in Django's own database: an SQLAlchemy URL derived from ``DATABASES``.

With ``celery_reliable.contrib.django`` in ``INSTALLED_APPS`` and no ``reliable_database_url``,
the tables are in the database of the ``reliable_database_alias`` alias (``"default"``;
``CELERY_RELIABLE_DATABASE_ALIAS`` under Celery's ``CELERY`` namespace). The rest of the library
reaches it through SQLAlchemy as it would any other URL: SQLite by its file, PostgreSQL with
psycopg, MySQL/MariaDB with PyMySQL.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy.engine import URL

from ...config import add_database_source
from ...exceptions import ImproperlyConfigured

#: Connection options passed on to the SQLAlchemy driver, by vendor (the rest are Django's own).
_PASSED = {
    "postgresql": ("sslmode", "sslrootcert", "sslcert", "sslkey", "application_name", "connect_timeout", "options"),
    "mysql": ("charset", "connect_timeout", "init_command"),
}


def settings_dict(alias: str) -> dict[str, Any]:
    """The connection settings of ``alias`` as Django uses them (a test run's test database too)."""
    from django.db import connections

    try:
        return dict(connections[alias].settings_dict)
    except Exception as exc:  # ConnectionDoesNotExist, or the backend cannot be loaded
        from django.conf import settings

        raise ImproperlyConfigured(
            f"reliable_database_alias {alias!r}: {exc}. Set CELERY_RELIABLE_DATABASE_ALIAS to one of "
            f"{sorted(settings.DATABASES)} or give reliable_database_url."
        ) from exc


def vendor(alias: str) -> str:
    from django.db import connections

    return str(connections[alias].vendor)


def database_url(alias: str = "default") -> str:
    """The SQLAlchemy URL of Django's database ``alias``.

    Raises:
        ImproperlyConfigured: a database the other processes cannot reach (SQLite in memory), a
            vendor celery_reliable does not support, or a time zone other than UTC for the
            stored times of SQLite and MySQL (they are read back as UTC).
    """
    params = settings_dict(alias)
    kind = vendor(alias)
    if kind != "postgresql" and params.get("TIME_ZONE") not in (None, "UTC"):
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]['TIME_ZONE'] = {params['TIME_ZONE']!r}: celery_reliable stores times in UTC on "
            f"{kind}; remove TIME_ZONE from the database settings, or give reliable_database_url"
        )
    name = str(params.get("NAME") or "")
    if kind == "sqlite":
        if not name or name == ":memory:" or "mode=memory" in name:
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}] is an in-memory SQLite database: workers and the relay cannot see it. "
                "Use a file, or give reliable_database_url."
            )
        return f"sqlite:///{Path(name).resolve()}"
    options = params.get("OPTIONS") or {}
    query = {key: str(options[key]) for key in _PASSED.get(kind, ()) if key in options}
    host = str(params.get("HOST") or "") or None
    if host and host.startswith("/"):  # a Unix socket directory (PostgreSQL) or file (MySQL)
        query["host" if kind == "postgresql" else "unix_socket"] = host
        host = None
    if kind == "postgresql":
        driver = "postgresql+psycopg" if importlib.util.find_spec("psycopg") else "postgresql+psycopg2"
    elif kind == "mysql":
        driver = "mysql+pymysql"
    else:
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}] is a {kind} database; celery_reliable supports SQLite, PostgreSQL and "
            "MySQL/MariaDB. Give reliable_database_url for a database of its own."
        )
    port = params.get("PORT")
    url = URL.create(
        driver,
        username=str(params.get("USER") or "") or None,
        password=str(params.get("PASSWORD") or "") or None,
        host=host,
        port=int(port) if port else None,
        database=name or None,
        query=query,
    )
    return url.render_as_string(hide_password=False)


def _django_source(app: Celery, alias: str) -> str | None:
    """The database source for apps configured in a Django project (settings configured)."""
    from django.conf import settings

    if not (settings.configured or os.environ.get("DJANGO_SETTINGS_MODULE")):
        return None
    if not any(str(entry).startswith("celery_reliable.contrib.django") for entry in settings.INSTALLED_APPS):
        return None  # (the package, or its AppConfig's dotted path)
    return database_url(alias)


def register() -> None:
    """Name Django's database for apps that set no ``reliable_database_url``."""
    add_database_source(_django_source)
