"""``celery -A proj reliable db ...`` through the real ``celery`` entry point."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from celery_reliable.store.migrate import head_revision
from tests.harness import reliable_cli

pytestmark = pytest.mark.integration


def _celery(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return reliable_cli(tmp_path, "cliproj", *args)


def test_db_upgrade_and_current(tmp_path: Path) -> None:
    db = tmp_path / "cli.sqlite3"
    (tmp_path / "cliproj.py").write_text(
        "from celery import Celery\n"
        "app = Celery('cliproj', broker='memory://')\n"
        f"app.conf.reliable_database_url = 'sqlite:///{db}'\n"
    )
    before = _celery(tmp_path, "db", "current")
    assert before.returncode == 1
    assert "database: not migrated" in before.stdout
    upgraded = _celery(tmp_path, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"reliability tables at revision {head_revision()}" in upgraded.stdout
    after = _celery(tmp_path, "db", "current")
    assert (after.returncode, after.stdout.strip()) == (
        0,
        f"database: {head_revision()}  shipped head: {head_revision()}",
    )


def test_db_upgrade_reports_an_unreachable_database(tmp_path: Path) -> None:
    (tmp_path / "cliproj.py").write_text(
        "from celery import Celery\n"
        "app = Celery('cliproj', broker='memory://')\n"
        "app.conf.reliable_database_url = 'postgresql+psycopg://nobody:secret@127.0.0.1:1/none'\n"
    )
    result = _celery(tmp_path, "db", "upgrade")
    assert result.returncode != 0
    assert "migration failed" in result.stderr
    assert "secret" not in result.stderr + result.stdout
