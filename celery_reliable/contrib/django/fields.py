"""Django fields and indexes that give the tables exactly the columns the Alembic migrations give.

Django's defaults differ from the SQLAlchemy models in a few places: JSON is ``text`` with a
``JSON_VALID`` check on SQLite (``JSON`` there), text is ``longtext`` on MySQL/MariaDB (``TEXT``),
on PostgreSQL a key is an identity column (``bigserial``) and a ``varchar`` primary key gets a
second, ``varchar_pattern_ops`` index, and index names are limited to 30 characters (ours are
the naming convention's, up to 46). A partial index
(``where``) is partial where the database has them and plain elsewhere (MariaDB), as in the Alembic
migrations.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import models

from ...store.payload import unreadable_marker

#: Column types where Django's default is not the Alembic migrations' type, by database vendor.
_TEXT = {"mysql": "text"}
_JSON = {"sqlite": "JSON"}


class SerialKey(models.BigAutoField):
    """A ``BIGSERIAL`` primary key on PostgreSQL, as SQLAlchemy makes it (Django makes an identity column)."""

    def db_type(self, connection: Any) -> str | None:
        return "bigserial" if connection.vendor == "postgresql" else super().db_type(connection)

    def db_type_suffix(self, connection: Any) -> str | None:
        return None if connection.vendor == "postgresql" else super().db_type_suffix(connection)


class TextColumn(models.TextField):
    """``TEXT`` on every database (Django makes ``longtext`` on MySQL/MariaDB)."""

    def db_type(self, connection: Any) -> str | None:
        return _TEXT.get(connection.vendor) or super().db_type(connection)


class KeyColumn(models.CharField):
    """A ``VARCHAR`` primary key without the second (pattern) index Django adds on PostgreSQL."""

    def db_type(self, connection: Any) -> str | None:
        # Django adds the pattern index to columns whose type starts with "varchar": the upper
        # case spelling is the same type to every database.
        return f"VARCHAR({self.max_length})"


class JSONColumn(models.JSONField):
    """JSON (JSONB on PostgreSQL, ``JSON`` without a check on SQLite) whose cells always read.

    SQLite lets anyone write anything into a column: a cell that does not decode reads as the
    unreadable marker the rest of the library uses instead of breaking a page.
    """

    def db_type(self, connection: Any) -> str | None:
        return _JSON.get(connection.vendor) or super().db_type(connection)

    def db_check(self, connection: Any) -> str | None:
        return None if connection.vendor in _JSON else super().db_check(connection)

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if value is None or not isinstance(value, str | bytes | bytearray):
            return value  # decoded by the driver (psycopg), or a number SQLite kept as one
        try:
            return json.loads(value)
        except ValueError as exc:
            return unreadable_marker(value, exc)


class TableIndex(models.Index):
    """An index named as the Alembic migrations name it; ``where`` makes it partial where supported."""

    max_name_length = 63  # PostgreSQL's limit; MySQL's is 64

    def __init__(self, *args: Any, where: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.where = where

    def _get_condition_sql(self, model: Any, schema_editor: Any) -> str | None:
        if self.where and schema_editor.connection.features.supports_partial_indexes:
            return self.where
        return None

    def deconstruct(self) -> Any:
        path, args, kwargs = super().deconstruct()
        if self.where:
            kwargs["where"] = self.where
        return path, args, kwargs
