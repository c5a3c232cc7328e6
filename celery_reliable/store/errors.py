"""What went wrong with the reliability database, in words an operator can act on.

A database URL can fail in ways a generic "check that it is reachable" does not explain: a
dialect SQLAlchemy does not know (``postgres://``), a driver that is not installed
(``mysql+mysqldb://`` without MySQLdb), a server that does not answer, tables never created.
:func:`diagnose` tells them apart from the exception and names the fix; every message shows the
URL with its password masked.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from kombu.utils.url import maybe_sanitize_url
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)

#: The URL prefix and the package extra of each database the package is tested on.
SUPPORTED = {
    "postgresql": ("postgresql+psycopg", "celery_reliable[postgres]"),
    "mysql": ("mysql+pymysql", "celery_reliable[mysql]"),
    "mariadb": ("mariadb+pymysql", "celery_reliable[mysql]"),
    "sqlite": ("sqlite", ""),
}
#: Dialect names people write that SQLAlchemy does not know, and the one they mean.
ALIASES = {
    "postgres": "postgresql",
    "pg": "postgresql",
    "psql": "postgresql",
    "pgsql": "postgresql",
    "sqlite3": "sqlite",
    "maria": "mariadb",
}
UPGRADE = "celery -A proj reliable db upgrade"
#: SQLSTATE / MySQL error numbers meaning "no such table" or "no such column".
_UNDEFINED_TABLE = {"42P01", "42703"}
_MYSQL_UNDEFINED = {1146, 1054}


@dataclass(frozen=True)
class StoreProblem:
    """One database failure: what is wrong (naming the masked URL) and what to do about it."""

    detail: str
    fix: str

    def __str__(self) -> str:
        return f"{self.detail}. {self.fix}"


def mask(url: str) -> str:
    """``url`` with its password replaced by ``**``."""
    return str(maybe_sanitize_url(url))


def _parse(url: str) -> URL | None:
    try:
        return make_url(url)
    except Exception:  # not a URL at all: the caller says so
        return None


def _hide_password(text: str, url: str) -> str:
    parsed = _parse(url)
    password = parsed.password if parsed is not None else None
    return text.replace(str(password), "**") if password and len(str(password)) >= 3 else text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _with_driver(parsed: URL, drivername: str) -> str:
    return mask(parsed.set(drivername=drivername).render_as_string(hide_password=False))


def _unknown_dialect(url: str, parsed: URL) -> StoreProblem:
    name = parsed.get_backend_name()
    meant = ALIASES.get(name) or next(iter(difflib.get_close_matches(name, SUPPORTED, n=1, cutoff=0.5)), None)
    detail = f"reliable_database_url {mask(url)} names the database dialect {name!r}, which SQLAlchemy does not know"
    if meant is not None:
        return StoreProblem(detail, f"Did you mean {_with_driver(parsed, SUPPORTED[meant][0])} ?")
    known = ", ".join(f"{prefix}://" for prefix, _ in SUPPORTED.values())
    return StoreProblem(detail, f"Use one of {known} (or a dialect SQLAlchemy supports)")


def _missing_driver(url: str, parsed: URL, exc: ImportError) -> StoreProblem:
    module = exc.name or _first_line(exc)
    backend = parsed.get_backend_name()
    detail = f"the database driver {module!r} that reliable_database_url {mask(url)} needs is not installed"
    if backend in SUPPORTED and SUPPORTED[backend][1]:
        prefix, extra = SUPPORTED[backend]
        if parsed.drivername == prefix:
            return StoreProblem(detail, f"Install it: pip install '{extra}'")
        return StoreProblem(
            detail,
            f"Install the tested driver with pip install '{extra}' and write the URL as "
            f"{_with_driver(parsed, prefix)} (or install {module} yourself)",
        )
    return StoreProblem(detail, f"Install the Python package that provides {module!r}")


def _not_migrated(exc: DBAPIError) -> bool:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _UNDEFINED_TABLE or getattr(orig, "pgcode", None) in _UNDEFINED_TABLE:
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_UNDEFINED:
        return True
    text = str(orig).lower()
    return "no such table" in text or "no such column" in text


def diagnose(url: str, exc: BaseException) -> StoreProblem:
    """The problem behind ``exc``, raised while using the database at ``url``."""
    parsed = _parse(url)
    cause = _hide_password(f"{type(exc).__name__}: {_first_line(exc)}", url)
    if parsed is None or (isinstance(exc, ArgumentError) and not isinstance(exc, NoSuchModuleError)):
        return StoreProblem(
            f"reliable_database_url {mask(url)} is not a database URL SQLAlchemy accepts ({cause})",
            "Write it as dialect+driver://user:password@host:port/dbname, e.g. postgresql+psycopg://app:secret@db/app "
            "or sqlite:////var/lib/app/reliable.sqlite3",
        )
    if isinstance(exc, NoSuchModuleError):
        return _unknown_dialect(url, parsed)
    if isinstance(exc, ImportError):
        return _missing_driver(url, parsed, exc)
    if isinstance(exc, DBAPIError) and _not_migrated(exc):
        return StoreProblem(
            f"celery_reliable database {mask(url)} has no reliability tables, or older ones ({cause})",
            f"Create or update them: {UPGRADE}",
        )
    lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
    if isinstance(exc, OperationalError | InterfaceError) or lost:
        if parsed.get_backend_name() == "sqlite":
            fix = "Check that the file's directory exists and that this user may read and write it"
        else:
            fix = (
                "Check that the server runs and accepts connections, and the host, port, user, password and "
                "database name in reliable_database_url"
            )
        return StoreProblem(f"celery_reliable database {mask(url)} is not reachable ({cause})", fix)
    if isinstance(exc, SQLAlchemyError | ImportError):
        return StoreProblem(
            f"celery_reliable database {mask(url)} failed: {cause}",
            f"Check that it is reachable and migrated ({UPGRADE})",
        )
    return StoreProblem(f"celery_reliable database {mask(url)} failed: {cause}", "See the log for the traceback")
