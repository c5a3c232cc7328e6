"""Hostile and broken input on the operator's side, through the real ``celery -A proj reliable`` command.

* stored text full of terminal escapes (task names, exception text, tracebacks, hostnames, errors);
* settings that are NaN, infinite or absurd;
* database URLs that cannot work: an unknown dialect, a driver that is not installed, a closed
  port, an empty file never migrated.

Each command runs as a subprocess of its own, as an operator would run it.
"""

from __future__ import annotations

import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, select

from celery_reliable.store.migrate import upgrade
from celery_reliable.store.models import FailedTask, PendingMessage
from tests.harness import reliable_cli

pytestmark = pytest.mark.integration

EVIL = "\x1b]0;pwned\x07\x1b[2J"
#: What the operator sees instead of EVIL: every control character written out.
SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J"
#: Raw bytes that must never reach the terminal.
RAW = ("\x1b", "\x07", "\x9b", "\r", "\u202e")


@dataclass
class Run:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    @property
    def both(self) -> str:
        return self.out + self.err


def project(tmp_path: Path, db_url: str, broker: str = "memory://", **conf: str) -> Path:
    """A project module ``hostileproj`` in ``tmp_path``; ``conf`` values are Python source."""
    lines = [
        "from celery import Celery",
        f"app = Celery('hostileproj', broker={broker!r})",
        f"app.conf.reliable_database_url = {db_url!r}",
        "app.conf.broker_connection_retry_on_startup = True",
        *(f"app.conf.{key} = {source}" for key, source in conf.items()),
    ]
    (tmp_path / "hostileproj.py").write_text("\n".join(lines) + "\n")
    return tmp_path


def celery(where: Path, *args: str) -> Run:
    result = reliable_cli(where, "hostileproj", *args, timeout=90)
    return Run(args, result.returncode, result.stdout, result.stderr)


def run_all(where: Path, *commands: tuple[str, ...]) -> dict[tuple[str, ...], Run]:
    """Every command at once (each is a process of its own)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda args: celery(where, *args), commands))
    return {run.args: run for run in runs}


# --- terminal escapes -----------------------------------------------------------------------------


def test_stored_terminal_escapes_never_reach_the_terminal(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'escapes.sqlite3'}"
    upgrade(db_url)
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            insert(FailedTask),
            [{
                "task_id": f"evil-{EVIL}", "task_name": f"t.evil{EVIL}", "reason": "unknown_task",
                "args": [EVIL], "kwargs": {"k": EVIL}, "options": {}, "exc_type": f"Err{EVIL}",
                "exc_message": f"boom{EVIL}\r\nfaked line \u202eteg", "hostname": f"host{EVIL}",
                "traceback": f"Traceback (most recent call last):\n  File {EVIL}\r\nValueError: \x9b31mred",
            }],
        )  # fmt: skip
        conn.execute(
            insert(PendingMessage),
            [{
                "task_id": f"pend-{EVIL}", "task_name": f"t.pend{EVIL}", "args": [EVIL], "kwargs": {},
                "options": {}, "source": "publish_fallback", "status": "dead", "attempts": 20,
                "last_error": f"OperationalError{EVIL}",
            }],
        )  # fmt: skip
        failure = conn.execute(select(FailedTask.id)).scalar_one()
        pending = conn.execute(select(PendingMessage.id)).scalar_one()
    engine.dispose()
    where = project(tmp_path, db_url)

    human = [
        ("failed", "list"), ("failed", "show", str(failure)), ("pending", "list", "--status", "dead"),
        ("pending", "show", str(pending)), ("status",), ("failed", "replay", str(failure), "--yes"), ("metrics",),
    ]  # fmt: skip
    machine = [("failed", "list", "--json"), ("failed", "show", str(failure), "--json"),
               ("pending", "list", "--status", "dead", "--json")]  # fmt: skip
    runs = run_all(where, *human, *machine)

    for run in runs.values():
        assert 'Traceback (most recent call last):\n  File "' not in run.err, run.err  # no crash
        for raw in RAW:
            assert raw not in run.both, (run.args, raw, run.both[:500])
    for args in human[:5]:
        assert runs[args].code in (0, 1), runs[args].err
        assert SHOWN in runs[args].out, (args, runs[args].out[:500])
    shown = runs[("failed", "show", str(failure))].out
    assert "\n  File " + SHOWN + "\\x0d\nValueError: \\x9b31mred" in shown  # the traceback keeps its lines
    assert "\\u202eteg" in shown
    replayed = runs[("failed", "replay", str(failure), "--yes")]
    assert replayed.code == 1 and f"task 't.evil{SHOWN}'" in replayed.err and "is not registered" in replayed.err
    metrics = runs[("metrics",)]
    assert metrics.code == 0 and "celery_reliable_failed_tasks{task=" in metrics.out

    # --json keeps the stored text exactly (JSON escapes, no raw control character).
    listed = json.loads(runs[("failed", "list", "--json")].out)
    assert [(r["task_name"], r["hostname"]) for r in listed] == [(f"t.evil{EVIL}", f"host{EVIL}")]
    assert json.loads(runs[("failed", "show", str(failure), "--json")].out)["traceback"].endswith("\x9b31mred")
    dead = json.loads(runs[("pending", "list", "--status", "dead", "--json")].out)
    assert dead[0]["last_error"] == f"OperationalError{EVIL}"


# --- settings -------------------------------------------------------------------------------------


def test_non_finite_and_absurd_settings_are_refused_with_the_range(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'settings.sqlite3'}"
    upgrade(db_url)
    cases = {
        "reliable_relay_lease": ("float('nan')", "nan", "a number of seconds > 0 and <= 86400 (1 day)"),
        "reliable_relay_batch_size": ("10**12", "1000000000000", "an integer >= 1 and <= 100000"),
        "reliable_visibility_timeout": ("float('inf')", "inf", "a number of seconds > 0 and <= 2592000 (30 days)"),
    }
    for key, (source, shown, accepted) in cases.items():
        where = project(tmp_path, db_url, **{key: source})
        runs = run_all(where, ("relay",), ("doctor", "--json"), ("status",), ("metrics",))
        message = f"{key} = {shown} is not valid: expected {accepted}"
        for run in runs.values():
            assert run.code == 1, (key, run.args, run.both[-500:])
            assert "Traceback" not in run.both
        for args in (("relay",), ("status",), ("metrics",)):
            assert message in runs[args].err, (key, args, runs[args].err[-800:])
        doctor = json.loads(runs[("doctor", "--json")].out)["results"]
        assert [(r["check"], r["status"]) for r in doctor] == [("settings", "FAIL")]
        assert message in doctor[0]["detail"]
        assert runs[("metrics",)].out.endswith("celery_reliable_up 0.0\n")


def test_doctor_names_a_nan_broker_timeout_instead_of_comparing_with_it(tmp_path: Path, redis_url: str) -> None:
    db_url = f"sqlite:///{tmp_path / 'doctor.sqlite3'}"
    upgrade(db_url)
    options = "{'visibility_timeout': float('nan'), 'unacked_restore_throttle': float('nan')}"
    where = project(tmp_path, db_url, broker=redis_url, broker_transport_options=options)
    run = celery(where, "doctor", "--json")
    assert run.code == 1 and "Traceback" not in run.err, run.err[-2000:]
    report = {r["check"]: r for r in json.loads(run.out)["results"]}
    limit = report["tasks.time_limit"]
    assert limit["status"] == "FAIL"
    assert "broker_transport_options['visibility_timeout'] = nan is not a number of seconds > 0" in limit["detail"]
    sweep = report["redis.restore_sweep"]
    assert sweep["status"] == "FAIL" and "['unacked_restore_throttle'] = nan" in sweep["detail"]
    assert "tasks.retry_delay" not in report  # nothing is compared with NaN
    assert "nan s" not in run.out


# --- database URLs that cannot work ---------------------------------------------------------------

PASSWORD = "S3cret-pw-42"


def _missing_driver() -> tuple[str, str]:
    """(URL prefix, package extra) of a supported database whose non-default driver is not installed."""
    for prefix, module, extra in (
        ("mysql+mysqldb", "MySQLdb", "mysql"),
        ("postgresql+psycopg2", "psycopg2", "postgres"),
    ):
        if importlib.util.find_spec(module) is None:
            return prefix, extra
    pytest.fail("neither MySQLdb nor psycopg2 is missing here: pick another driver for this test")


def _bad_url(kind: str, tmp_path: Path) -> tuple[str, str, str]:
    """(URL, masked URL, what the advice must say)."""
    if kind == "unknown dialect":
        url = f"postgres://ops:{PASSWORD}@127.0.0.1:5432/reliable_absent"
        return (
            url,
            url.replace(PASSWORD, "**"),
            "Did you mean postgresql+psycopg://ops:**@127.0.0.1:5432/reliable_absent",
        )
    if kind == "missing driver":
        prefix, extra = _missing_driver()
        url = f"{prefix}://ops:{PASSWORD}@127.0.0.1:3306/reliable_absent"
        return url, url.replace(PASSWORD, "**"), f"pip install 'celery_reliable[{extra}]'"
    if kind == "closed port":
        url = f"postgresql+psycopg://ops:{PASSWORD}@127.0.0.1:1/reliable_absent"
        return url, url.replace(PASSWORD, "**"), "is not reachable"
    empty = tmp_path / "empty.sqlite3"
    empty.write_bytes(b"")
    url = f"sqlite:///{empty}"
    return url, url, "celery -A hostileproj reliable db upgrade"


@pytest.mark.parametrize("kind", ["unknown dialect", "missing driver", "closed port", "not migrated"])
def test_every_command_names_the_real_cause_of_a_bad_database_url(kind: str, tmp_path: Path) -> None:
    url, masked, advice = _bad_url(kind, tmp_path)
    where = project(tmp_path, url)
    commands: list[tuple[str, ...]] = [
        ("status",), ("failed", "list"), ("pending", "list"), ("db", "current"), ("metrics",), ("verify",),
        ("doctor", "--json"),
    ]  # fmt: skip
    if kind != "not migrated":  # upgrading an empty file works: it is the fix
        commands.append(("db", "upgrade"))
    runs = run_all(where, *commands)

    for args, run in runs.items():
        assert "Traceback" not in run.both, (args, run.both[-1500:])
        assert PASSWORD not in run.both, args
        expected = 3 if args == ("verify",) else 1
        assert run.code == expected, (args, run.code, run.both[-800:])
    for args in [a for a in commands if a not in (("doctor", "--json"), ("metrics",))]:
        text = " ".join(runs[args].err.split())
        if args == ("db", "current") and kind == "not migrated":
            assert "database: not migrated" in runs[args].out
        assert advice.replace("hostileproj", "proj") in text or advice in text, (args, text[-800:])
        assert masked in text, (args, text[-800:])

    metrics = runs[("metrics",)]
    assert [line for line in metrics.out.splitlines() if not line.startswith("#")] == ["celery_reliable_up 0.0"]
    assert advice.replace("hostileproj", "proj") in " ".join(metrics.err.split())

    schema = next(r for r in json.loads(runs[("doctor", "--json")].out)["results"] if r["check"] == "db.schema")
    assert schema["status"] == "FAIL"
    assert advice in " ".join((schema["detail"] + " " + schema["fix"]).split()), schema
