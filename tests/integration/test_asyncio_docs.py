"""docs/asyncio.md, run as a user copies it: from an empty project to a replayed failure.

The page's ```python blocks whose first line is ``# proj/<file>.py`` are written, unchanged but
for their URLs (:data:`URLS`), into a package ``proj`` under the test's directory, next to the
empty ``proj/__init__.py`` the page asks for. Then, as the page says: ``celery -A proj reliable db
upgrade``, ``celery -A proj worker -l info``, ``uvicorn proj.web:api`` (whose start-up creates the
app's tables), requests over HTTP, the broker stopped and started again, ``reliable pending list``,
``reliable relay``, ``reliable failed list``, the fix, ``reliable failed replay ID --yes``.

The broker is a private redis-server (the outage stops it); the database is a PostgreSQL
database of the test's own. Counts are exact: rows of the page's ``payments`` table (one per
charge), failure rows, pending rows by status, and the worker's log lines for the receipts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from celery_reliable import PendingStatus
from tests.harness import ROOT, RedisServer, free_port, reliable_cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

DOC = ROOT / "docs" / "asyncio.md"

#: The page's files, in the order a user writes them.
FILES = ("proj/models.py", "proj/celery.py", "proj/web.py")

#: The only change made to the page's code: each of its URLs, written as a Python string literal,
#: becomes this test's (``{db}``: a PostgreSQL database of its own, ``{broker}``: a private
#: redis-server). Each must occur exactly once in the page's files.
URLS = {
    '"postgresql+psycopg://app@localhost/app"': "{db}",
    '"redis://localhost:6379/0"': "{broker}",
}

#: The fix the page makes before replaying (in SQL, as the page writes it for psql).
FIX = "UPDATE orders SET amount = 40 WHERE id = 2"


def doc_files(page: str) -> dict[str, str]:
    """The page's ```python blocks whose first line is ``# proj/<file>.py``: path -> code."""
    files: dict[str, str] = {}
    for block in re.findall(r"^```python\n(.*?)^```$", page, flags=re.M | re.S):
        match = re.fullmatch(r"# (proj/[\w/]+\.py)", block.splitlines()[0].strip())
        if match:
            assert match[1] not in files, f"{DOC.name} shows {match[1]} twice"
            files[match[1]] = block
    return files


def write_project(directory: Path, db_url: str, broker_url: str) -> None:
    """``proj`` from the page, under ``directory``, with this test's URLs."""
    files = doc_files(DOC.read_text())
    assert sorted(files) == sorted(FILES), f"{DOC.name} shows {sorted(files)}, this test expects {sorted(FILES)}"
    values = {"db": db_url, "broker": broker_url}
    for literal, name in URLS.items():
        found = [path for path, code in files.items() for _ in range(code.count(literal))]
        assert len(found) == 1, f"{literal} must occur once in {DOC.name}'s files, found in {found}"
        path = found[0]
        files[path] = files[path].replace(literal, repr(name.format(**values)))
    package = directory / "proj"
    package.mkdir()
    (package / "__init__.py").write_text("")  # "an empty proj/__init__.py"
    for path, code in files.items():
        (directory / path).write_text(code)


@dataclass
class Process:
    """A process of the user's (worker, web server) in its own process group, its output in a file."""

    name: str
    cmd: list[str]
    cwd: Path
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_log(self, needle: str, timeout: float, count: int = 1) -> None:
        def seen() -> bool:
            if self.output().count(needle) >= count:
                return True
            if not self.alive():
                raise AssertionError(f"{self.name} exited:\n{self.output()[-3000:]}")
            return False

        try:
            wait_for(seen, timeout, interval=0.1, what=f"{needle!r} x{count} in the {self.name}'s log")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- {self.name} log ---\n{self.output()[-4000:]}") from None

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@dataclass
class Project:
    """The user's project: its directory, database, broker, and the processes it runs."""

    dir: Path
    db_url: str
    broker: RedisServer
    engine: Engine
    processes: list[Process]

    def env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": f"{self.dir}:{ROOT}"}

    def run(self, name: str, *args: str) -> Process:
        process = Process(name, [sys.executable, "-m", *args], self.dir, self.env(), self.dir / f"{name}.log")
        self.processes.append(process)
        return process.start()

    def cli(self, *args: str, code: int = 0) -> str:
        """``celery -A proj reliable <args>``; its stdout, after checking its exit code."""
        done = reliable_cli(self.dir, "proj", *args)
        assert done.returncode == code, (
            f"reliable {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
        return done.stdout

    def query(self, sql: str) -> list[Any]:
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql)).all()]


@pytest.fixture
def project(tmp_path: Path, postgres_db: str) -> Iterator[Project]:
    broker = RedisServer(tmp_path / "redis", persistent=True).start()
    engine = create_engine(postgres_db)
    project = Project(tmp_path / "app", postgres_db, broker, engine, [])
    project.dir.mkdir()
    try:
        yield project
    finally:
        for process in reversed(project.processes):
            process.stop()
        engine.dispose()
        broker.stop()


def post(port: int, path: str, timeout: float = 30) -> dict[str, Any]:
    """``curl -X POST localhost:<port><path>``: the JSON answer."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.status == 200
        return dict(json.load(response))


def test_the_asyncio_page_from_an_empty_project_to_a_replayed_failure(project: Project) -> None:
    page = DOC.read_text()
    assert f"-c '{FIX}'" in page, f"{DOC.name} no longer fixes the order with {FIX!r}: update FIX"
    # 2. The models, the Celery app and its tables
    write_project(project.dir, project.db_url, project.broker.url)
    project.cli("db", "upgrade")
    worker = project.run("worker", "celery", "-A", "proj", "worker", "-l", "info")
    # 3. The asyncio application; its start-up creates orders and payments
    port = free_port()
    web = project.run("uvicorn", "uvicorn", "proj.web:api", "--port", str(port))
    web.wait_log("Application startup complete", 30)
    worker.wait_log(" ready.", 60)
    order = post(port, "/orders?amount=42")
    assert order == {"order": 1, "task_id": order["task_id"]}
    worker.wait_log(f"Task shop.charge_payment[{order['task_id']}] succeeded", 30)
    assert project.query("SELECT order_id, amount, task_id FROM payments") == [(1, 42, order["task_id"])]
    receipt = post(port, "/orders/1/receipt")
    assert receipt == {"task_id": receipt["task_id"], "sent": True, "pending_id": None}
    worker.wait_log(f"Task shop.send_receipt[{receipt['task_id']}] succeeded", 30)

    # 4. A broker outage: kept, then relayed
    project.broker.stop()
    kept = post(port, "/orders/1/receipt")
    assert kept == {"task_id": kept["task_id"], "sent": False, "pending_id": kept["pending_id"]}
    assert project.query(
        f"SELECT id, task_name, status FROM celery_reliable_pending_message WHERE task_id = '{kept['task_id']}'"
    ) == [(kept["pending_id"], "shop.send_receipt", "pending")]
    assert re.search(
        rf"^{kept['pending_id']}\s+pending\s+shop\.send_receipt\s+{kept['task_id']}\s",
        project.cli("pending", "list"),
        flags=re.M,
    )
    project.broker.start()  # same port, same data
    assert re.search(r"^sent\s+1$", project.cli("relay"), flags=re.M)

    def receipt_ran() -> bool:
        nonlocal worker
        if not worker.alive():  # a worker that exits on a broker restart: its supervisor starts it again
            assert len(project.processes) < 6, "the worker keeps exiting"
            worker = project.run(f"worker-{len(project.processes)}", "celery", "-A", "proj", "worker", "-l", "info")
        return f"Task shop.send_receipt[{kept['task_id']}] succeeded" in worker.output()

    wait_for(receipt_ran, 60, what="the kept receipt run")

    # 5. To a replayed failure
    bad = post(port, "/orders?amount=0")
    assert bad == {"order": 2, "task_id": bad["task_id"]}
    failures = (
        "SELECT id, task_id, task_name, args, status, reason, exc_type, attempts FROM celery_reliable_failed_task"
    )
    stored = wait_for(lambda: project.query(failures), 30, what="the failure stored")
    permanent = ("failed", "permanent", "celery_reliable.exceptions.PermanentError", 1)  # not retried
    assert stored == [(1, bad["task_id"], "shop.charge_payment", [2], *permanent)]
    listed = project.cli("failed", "list")
    assert re.search(
        r"^1\s+failed\s+shop\.charge_payment\s+celery_reliable\.exceptions\.PermanentError\s", listed, flags=re.M
    ), listed
    with project.engine.begin() as conn:
        assert conn.execute(text(FIX)).rowcount == 1
    replayed = project.cli("failed", "replay", "1", "--yes")
    assert "replayed 1 of 1 failed task(s)" in replayed, replayed
    ((status, new_id, replays),) = project.query(
        "SELECT status, replay_task_id, replay_count FROM celery_reliable_failed_task"
    )
    assert (status, replays) == ("replayed", 1) and new_id and new_id != bad["task_id"]
    assert new_id in replayed
    worker.wait_log(f"Task shop.charge_payment[{new_id}] succeeded", 30)

    # Then: one charge per order (the failed one after its replay), each receipt run once,
    # one failure stored and replayed once, every message delivered
    assert sorted(project.query("SELECT order_id, amount, task_id FROM payments")) == [
        (1, 42, order["task_id"]),
        (2, 40, new_id),
    ]
    assert project.query("SELECT id, amount, status FROM orders ORDER BY id") == [(1, 42, "paid"), (2, 40, "paid")]
    assert project.query("SELECT count(*) FROM celery_reliable_failed_task") == [(1,)]
    log = "\n".join(p.output() for p in project.processes if p.name.startswith("worker"))
    for task, task_id in [
        ("charge_payment", order["task_id"]), ("send_receipt", receipt["task_id"]),
        ("send_receipt", kept["task_id"]), ("charge_payment", new_id),
    ]:  # fmt: skip
        assert log.count(f"Task shop.{task}[{task_id}] succeeded") == 1, task_id
    assert log.count(f"Task shop.charge_payment[{bad['task_id']}] succeeded") == 0
    # the outbox rows of the two orders and the receipt kept through the outage: all delivered
    rows = project.query("SELECT task_id, status FROM celery_reliable_pending_message")
    assert sorted(task_id for task_id, _ in rows) == sorted([order["task_id"], kept["task_id"], bad["task_id"]])
    assert all(status in PendingStatus.DELIVERED for _, status in rows), rows
