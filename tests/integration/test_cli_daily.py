"""The operator's daily work with ``celery -A proj reliable``: task modules loaded, lists that page,
search, hints naming the real app, dry runs that agree with real runs, ``--json`` everywhere.

Rows are written straight into a real SQLite database; commands run in-process with the context
Celery's CLI gives them, or through the real ``celery`` entry point where the way the app is
loaded matters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery

from celery_reliable import upgrade
from celery_reliable.store.engine import dispose
from celery_reliable.store.migrate import head_revision
from tests.harness import reliable_cli
from tests.integration.test_cli_ops import cli, failed, failed_rows, make_app, now, pending, pending_rows, seed

pytestmark = pytest.mark.integration


@pytest.fixture
def db(request: pytest.FixtureRequest) -> str:
    """A migrated database: SQLite, or the one named by indirect parametrization."""
    url = str(request.getfixturevalue(f"{getattr(request, 'param', 'sqlite')}_db"))
    upgrade(url)
    return url


#: Run a test on each supported database (the default is SQLite alone).
ON_EVERY_DATABASE = pytest.mark.parametrize(
    "db",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), pytest.param("mysql", marks=pytest.mark.mysql)],
    indirect=True,
)


@pytest.fixture
def app(db: str) -> Iterator[Celery]:
    """An operator app registering t.a and t.b; the broker is never used."""
    made = make_app(db)
    yield made
    dispose(made)


#: The project's task module, apart from the module that defines the app.
TASKS = """\
from celery import shared_task


@shared_task(name="shop.charge")
def charge(*args, **kwargs):
    pass
"""


def _project(tmp_path: Path, db_url: str, discover: str) -> None:
    """A project whose tasks live in a module of their own, found with ``include=`` or autodiscovery."""
    package = tmp_path / "shop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text(TASKS)
    include = "include=['shop.tasks'], " if discover == "include" else ""
    (tmp_path / "shopapp.py").write_text(
        "from celery import Celery\n"
        f"app = Celery('shop', {include}broker='memory://')\n"
        f"app.conf.update(reliable_database_url={db_url!r})\n"
        + ("app.autodiscover_tasks(['shop'])\n" if discover == "autodiscover" else "")
    )


@pytest.mark.parametrize("discover", ["include", "autodiscover"])
def test_the_command_line_knows_the_tasks_a_worker_imports(db: str, tmp_path: Path, discover: str) -> None:
    # Given a project whose task is in shop/tasks.py, and a stored failure of it
    _project(tmp_path, db, discover)
    [row] = seed(db, failed("shop.charge"))
    # When it is replayed (dry run) and filtered on from the real command line
    dry = reliable_cli(tmp_path, "shopapp", "failed", "replay", str(row), "--dry-run", "--json")
    listed = reliable_cli(tmp_path, "shopapp", "failed", "list", "--task", "shop.charge", "--json")
    # Then the task is known, as a worker of the app knows it
    assert dry.returncode == 0, dry.stderr
    assert [(r["id"], r["task_name"], r["error"]) for r in json.loads(dry.stdout)] == [(row, "shop.charge", None)]
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)] == [row]
    # And hints name the app the way it was given (-A shopapp), not "proj"
    unknown = reliable_cli(tmp_path, "shopapp", "failed", "show", "999999")
    assert unknown.returncode == 1
    assert "(see celery -A shopapp reliable failed list)" in unknown.stderr, unknown.stderr


def test_a_task_filter_naming_no_task_is_bad_usage(app: Celery, db: str) -> None:
    # Given a failure and a pending row of t.a, and rows of a task since removed from the code
    seed(db, failed("t.a"), pending("dead"), failed("t.removed"), pending("dead", task="t.removed"))
    before = (failed_rows(db), pending_rows(db))
    # When a command is given a task name the app does not register and no row carries
    for args in (
        ("failed", "list", "--task", "shop.nonexistent"),
        ("failed", "export", "--task", "shop.nonexistent"),
        ("failed", "purge", "--task", "shop.nonexistent", "--yes"),
        ("failed", "replay", "--task", "shop.nonexistent", "--yes"),
        ("pending", "list", "--task", "shop.nonexistent"),
        ("pending", "drop", "--task", "shop.nonexistent", "--yes"),
        ("pending", "resend", "--task", "shop.nonexistent", "--yes"),
    ):
        result = cli(app, *args)
        # Then it exits 2 naming the problem and the fix, and changes nothing
        assert result.exit_code == 2, (args, result.output)
        assert "task 'shop.nonexistent' is not registered in app" in result.stderr, (args, result.stderr)
        assert "check the name and the -A app" in result.stderr, (args, result.stderr)
    assert (failed_rows(db), pending_rows(db)) == before
    # And a name some row carries can still be listed (and dropped), but not sent
    gone = cli(app, "failed", "list", "--task", "t.removed", "--json")
    assert gone.exit_code == 0 and [r["task_name"] for r in json.loads(gone.stdout)] == ["t.removed"]
    assert cli(app, "pending", "list", "--task", "t.removed", "--status", "dead").exit_code == 0
    refused = cli(app, "failed", "replay", "--task", "t.removed", "--yes")
    assert refused.exit_code == 2 and "so its rows cannot be sent" in refused.stderr


@ON_EVERY_DATABASE
def test_pending_list_shows_unsent_rows_newest_first_and_pages(app: Celery, db: str) -> None:
    # Given 70 sent outbox rows, then one row waiting to be sent
    sent = seed(db, *[pending("sent", age=100 - i) for i in range(70)])
    [waiting] = seed(db, pending(age=1))
    # When the pending rows are listed without options
    plain = cli(app, "pending", "list")
    # Then the waiting row is shown, and how many of how many
    assert plain.exit_code == 0, plain.output
    lines = plain.stdout.splitlines()
    assert [line.split()[:2] for line in lines[1:-1]] == [[str(waiting), "pending"]]
    assert lines[-1] == "showing 1-1 of 1 pending messages, newest first"
    # When every state is asked for: 50 of 71, newest first, with the way to the next page
    every = cli(app, "pending", "list", "--status", "all", "--json")
    assert every.exit_code == 0, every.output
    assert [r["id"] for r in json.loads(every.stdout)] == [waiting, *reversed(sent[-49:])]
    assert "showing 1-50 of 71 pending messages" in every.stderr
    assert "more: celery -A " in every.stderr and "pending list --status all --page 2" in every.stderr
    page2 = cli(app, "pending", "list", "--status", "all", "--page", "2", "--json")
    assert [r["id"] for r in json.loads(page2.stdout)] == list(reversed(sent[:21]))
    assert "showing 51-71 of 71" in page2.stderr and "more:" not in page2.stderr
    offset = cli(app, "pending", "list", "--status", "sent", "--offset", "65", "--limit", "3")
    assert offset.stdout.splitlines()[-1].startswith("showing 66-68 of 70 pending messages, newest first; more: ")
    assert offset.stdout.splitlines()[-1].endswith("pending list --status sent --limit 3 --offset 68")
    both = cli(app, "pending", "list", "--offset", "1", "--page", "2")
    assert both.exit_code == 2 and "give --offset or --page, not both" in both.stderr
    # And failed list says the same about its rows
    seed(db, *[failed(age=i) for i in range(3)])
    listing = cli(app, "failed", "list", "--limit", "2").stdout.splitlines()
    assert listing[-1].startswith("showing 1-2 of 3 failed tasks, newest first; more: ")
    assert listing[-1].endswith("failed list --limit 2 --page 2")


@ON_EVERY_DATABASE
def test_search_short_exception_names_and_time_windows(app: Celery, db: str) -> None:
    # Given failures with different arguments, messages and exception types, one of them old
    order, timeout, old = seed(
        db,
        failed("t.a", "shop.tasks.InvalidOrder", args=[{"order": "A-1017"}], exc_message="order 100% gone"),
        failed("t.b", "requests.exceptions.Timeout", exc_message="Read timed out"),
        failed("t.a", "ValueError", age=3 * 86400, kwargs={"customer": "ACME"}),
    )  # fmt: skip
    [waiting, dead] = seed(db, pending(args=["A-1017"]), pending("dead", last_error="Connection refused", age=7200))

    def ids(*args: str) -> list[int]:
        result = cli(app, *args, "--json")
        assert result.exit_code == 0, (args, result.output)
        return [row["id"] for row in json.loads(result.stdout)]

    # Then free text finds rows by arguments, message and task id; case does not matter
    assert ids("failed", "list", "--search", "a-1017") == [order]
    assert ids("failed", "list", "--search", "timed OUT") == [timeout]
    assert ids("failed", "list", "--search", "acme") == [old]
    assert ids("failed", "list", "--search", "100%") == [order]  # % is a character, not a wildcard
    assert ids("failed", "list", "--search", "1_17") == []  # and so is _
    task_id = failed_rows(db)[1]["task_id"]
    assert ids("failed", "list", "--search", task_id[4:20]) == [timeout]
    assert ids("pending", "list", "--status", "all", "--search", "A-1017") == [waiting]
    assert ids("pending", "list", "--status", "all", "--search", "refused") == [dead]
    # And --exception takes the short name as well as the full one
    assert ids("failed", "list", "--exception", "InvalidOrder") == [order]
    assert ids("failed", "list", "--exception", "shop.tasks.InvalidOrder") == [order]
    assert ids("failed", "list", "--exception", "exceptions.Timeout") == [timeout]
    assert ids("failed", "list", "--exception", "Order") == []
    # And windows take ages and ISO dates, for failed and pending rows
    assert ids("failed", "list", "--since", "2d") == [timeout, order]
    assert ids("failed", "list", "--until", "2d") == [old]
    assert ids("failed", "list", "--until", (now() - timedelta(days=1)).date().isoformat()) == [old]
    assert ids("pending", "list", "--status", "all", "--since", "1h") == [waiting]
    assert ids("pending", "list", "--status", "all", "--until", "1h") == [dead]


def test_dry_runs_agree_with_real_runs(app: Celery, db: str) -> None:
    # Given a pending row of a task the app does not register, one that expired, and a good one
    unknown, expired, good = seed(
        db, pending(task="t.gone"), pending(expires_at=now() - timedelta(minutes=5)), pending("dead", attempts=20),
    )  # fmt: skip
    before = pending_rows(db)
    # When each is resent as a dry run
    dry = cli(app, "pending", "resend", str(unknown), "--dry-run", "--json")
    # Then it is refused with the reason the real run gives, and nothing changed
    assert dry.exit_code == 1, dry.output
    assert json.loads(dry.stdout)["would_send"] == 0
    [refusal] = json.loads(dry.stdout)["refused"]
    assert refusal == {"id": unknown, "reason": f"task 't.gone' is not registered in app {app.main!r}"}
    table = cli(app, "pending", "resend", str(unknown), str(expired), str(good), "--dry-run")
    assert table.exit_code == 1
    assert "would resend 1 pending message(s); 0 sent or expired row(s) skipped; 2 would not be sent" in table.stdout
    assert re.search(rf"^{expired}\s+expired: its expires passed", table.stdout, re.M), table.stdout
    assert pending_rows(db) == before
    # And status does not advise resending the expired row that resend skips
    seed(db, pending("expired"))
    status = cli(app, "status", "--json")
    [advice] = [line for line in json.loads(status.stdout)["attention"] if "expired" in line]
    assert "resend" not in advice and "pending drop --status expired" in advice
    assert f"celery -A {app.main} reliable" in advice


def test_json_on_every_command(app: Celery, db: str, tmp_path: Path) -> None:
    # Given two failures
    first, second = seed(db, failed("t.a"), failed("t.b"))
    # Then export --json is one JSON array of the rows, oldest first
    exported = cli(app, "failed", "export", "--json")
    assert exported.exit_code == 0, exported.output
    assert [r["id"] for r in json.loads(exported.stdout)] == [first, second]
    target = tmp_path / "out.json"
    assert cli(app, "failed", "export", "--json", "-o", str(target), "--task", "t.z").exit_code == 2
    assert cli(app, "failed", "export", "--json", "-o", str(target), "--task", "t.b").exit_code == 0
    assert [r["id"] for r in json.loads(target.read_text())] == [second]
    # And metrics --json gives the samples
    metrics = cli(app, "metrics", "--json")
    assert metrics.exit_code == 0, metrics.output
    samples = {(s["name"], tuple(sorted(s["labels"].items()))): s["value"] for s in json.loads(metrics.stdout)}
    assert samples[("celery_reliable_up", ())] == 1.0
    # And db current --json says where the schema is
    current = cli(app, "db", "current", "--json")
    assert current.exit_code == 0, current.output
    assert json.loads(current.stdout) == {
        "database": db, "revision": head_revision(), "head": head_revision(), "up_to_date": True,
    }  # fmt: skip
