"""docs/django.md followed as a user follows it: a new project made by ``django-admin
startproject``, the page's files written from its code blocks, the page's commands run, a real
worker, an expired card stored as a failure and replayed with the page's command. Exact counts.

Only the database and the broker differ from the page: the test's own PostgreSQL database, Redis
from the test settings, and the broker's keys under a prefix of the test's own (the queues keep
the page's names). Code that no longer runs, a missing import or file, a command that does not do
what the page says, or a session whose output changed fails here."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text

from tests.conftest import key_prefix
from tests.harness import PYTHON, ROOT, Worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.postgres]

PAGE = ROOT / "docs" / "django.md"
#: the virtualenv's ``bin``: ``python``, ``django-admin`` and ``celery`` are found there first
BIN = Path(PYTHON).parent
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
FILE_COMMENT = re.compile(r"# ([\w/]+\.py)")

#: runs a ``>>>`` session of the page in ``manage.py shell``; its output must be the page's
SESSION = """
import doctest
test = doctest.DocTestParser().get_doctest({session!r}, {{}}, "session", "docs/django.md", 0)
runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
runner.run(test)
if runner.failures:
    raise SystemExit(1)
"""
FAILED = "SELECT id, task_name, reason, status, args::text AS args, replay_task_id FROM celery_reliable_failed_task"
PAYMENTS = (
    "SELECT o.customer, count(p.id) AS n FROM shop_order o LEFT JOIN shop_payment p ON p.order_id = o.id "
    "GROUP BY o.customer"
)

#: prints the queue Celery sends ``celery_reliable.relay`` to, the task beat runs
RELAY_QUEUE = """
from proj.celery import app
print(app.amqp.router.route({}, "celery_reliable.relay")["queue"].name)
"""


def blocks(language: str) -> list[str]:
    return [body for kind, body in FENCE.findall(PAGE.read_text()) if kind == language]


def page_files() -> dict[str, str]:
    """The page's ```python blocks whose first line is a ``# path/to/file.py`` comment, by path."""
    files = {}
    for body in blocks("python"):
        match = FILE_COMMENT.fullmatch(body.partition("\n")[0])
        if match:
            files[match.group(1)] = body
    return files


def page_sessions() -> list[str]:
    """The page's ``>>>`` sessions, in order."""
    return [body for body in blocks("python") if body.startswith(">>> ")]


def page_command(prefix: str) -> list[str]:
    """The first command of the page's ```bash blocks that starts with ``prefix``, without its comment."""
    words = shlex.split(prefix)
    for body in blocks("bash"):
        for line in body.splitlines():
            argv = shlex.split(line, comments=True)
            if argv[: len(words)] == words:
                return argv
    raise AssertionError(f"docs/django.md shows no `{prefix}` command")


class ProjectWorker(Worker):
    app_module = "proj"
    queue_env = "PAGE_QUEUES"


def own_settings(database_url: str, broker_url: str, prefix: str) -> str:
    """What the test adds after the page's settings: its own database and broker, the broker's keys
    under a prefix of its own (the queues keep the page's names)."""
    url = make_url(database_url)
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": url.database,
        "USER": url.username or "",
        "PASSWORD": url.password or "",
        "HOST": url.host or "",
        "PORT": str(url.port or ""),
    }
    return (
        "\n\n# the test's database and broker\n"
        f"DATABASES = {{'default': {database!r}}}\n"
        f"CELERY_BROKER_URL = {broker_url!r}\n"
        f"CELERY_BROKER_TRANSPORT_OPTIONS = {{'global_keyprefix': {prefix!r}}}\n"
    )


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A kombu global_keyprefix of this test; its keys are deleted afterwards."""
    yield from key_prefix(redis_url, "rt-docs")


def test_the_page_goes_from_an_empty_project_to_a_replayed_failure(
    postgres_db: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "CELERY_", "RELIABLE_", "SHOP_")) and k != "PYTHONPATH"
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    engine = create_engine(postgres_db)

    def run(argv: list[str], timeout: float = 120) -> str:
        done = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"`{shlex.join(argv)}` exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def shell(code: str) -> str:
        return run(["python", "manage.py", "shell", "-c", code])

    def rows(sql: str) -> list[dict[str, Any]]:
        with engine.connect() as conn:
            return [dict(row) for row in conn.execute(text(sql)).mappings()]

    def payments() -> dict[str, int]:
        return {row["customer"]: row["n"] for row in rows(PAYMENTS)}

    # Given a new project and app, made by the page's commands
    run(page_command("django-admin startproject proj ."))
    run(page_command("python manage.py startapp shop"))
    # and the page's files: its settings added to the generated ones, the others written as shown
    files = page_files()
    assert set(files) == {
        "proj/settings.py", "proj/celery.py", "proj/__init__.py", "shop/models.py", "shop/tasks.py", "shop/views.py"
    }  # fmt: skip
    for path, code in files.items():
        if path != "proj/settings.py":
            (project / path).write_text(code)
    settings = project / "proj" / "settings.py"
    settings.write_text(
        settings.read_text() + "\n\n" + files["proj/settings.py"] + own_settings(postgres_db, redis_url, prefix)
    )
    # and the page's migrations
    run(page_command("python manage.py makemigrations shop"))
    run(page_command("python manage.py migrate"))
    # and the page's worker, on the queue orders go to and the one beat sends the relay to
    command = page_command("celery -A proj worker")
    queues = command[command.index("-Q") + 1] if "-Q" in command else "celery"
    assert "payments" in queues.split(","), f"`{shlex.join(command)}` does not consume payments, where orders go"
    relay_queue = shell(RELAY_QUEUE).split()[-1]
    assert relay_queue in queues.split(","), f"`{shlex.join(command)}` does not run the relay beat sends"
    worker = ProjectWorker({**env, "PAGE_QUEUES": queues}, tmp_path / "worker.log", prefix[:-1], cwd=project)
    try:
        worker.start()
        assert "shop.charge" in worker.output()  # found by autodiscover_tasks()
        sessions = page_sessions()
        assert len(sessions) == 2, "the page shows two sessions: placing the orders, fixing the card"
        # When the page's first session places a good order and one with an expired card
        shell(SESSION.format(session=sessions[0]))
        # Then, after the countdown, the good one is charged once and the other's failure is stored
        wait_for(lambda: rows(FAILED), 30, what="the stored failure")
        wait_for(lambda: payments() == {"ann": 1, "bob": 0}, 10, what="ann's charge")
        [failure] = rows(FAILED)
        assert (failure["task_name"], failure["reason"], failure["status"]) == ("shop.charge", "permanent", "failed")
        [bob] = [row["id"] for row in rows("SELECT id FROM shop_order WHERE customer = 'bob'")]
        assert json.loads(failure["args"]) == [bob]
        assert f"its arguments `[{bob}]`" in PAGE.read_text()
        listed = run(page_command("celery -A proj reliable failed list"))
        assert "shop.charge" in listed and "permanent" in listed, listed
        # When the card is fixed (the page's second session) and the failure replayed (the page's command)
        shell(SESSION.format(session=sessions[1]))
        replay = page_command("celery -A proj reliable failed replay")
        assert replay[-1] == str(failure["id"]), f"the page replays {replay[-1]}, the failure is {failure['id']}"
        run([*replay, "--yes"])
        # Then bob's order is charged once, by the replay, and ann's is still charged once
        wait_for(lambda: payments() == {"ann": 1, "bob": 1}, 30, what="bob's charge")
        [failure] = rows(FAILED)
        assert failure["status"] == "replayed"
        [paid] = rows(f"SELECT task_id FROM shop_payment WHERE order_id = {bob}")
        assert paid["task_id"] == failure["replay_task_id"]
        assert rows("SELECT customer, status FROM shop_order ORDER BY id") == [
            {"customer": "ann", "status": "paid"},
            {"customer": "bob", "status": "paid"},
        ]
        assert payments() == {"ann": 1, "bob": 1}
    finally:
        worker.stop()
        engine.dispose()
