"""One verify run: probe workers up, probes published, workers killed while they work, the
run's own pending rows relayed, a bounded drain, exact counts, and the run's traces removed."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery

from ...config import get_settings
from ...exceptions import StoreError
from ...store.engine import safe_url
from ...store.migrate import current_revision, head_revision
from . import broker
from .plan import Plan, VerifyOptions, VerifySetupError
from .publishing import publish_probes, relay_probes
from .report import LOST_LISTED, Kill, VerifyReport
from .store import count_rows, delete_rows
from .workers import ProbeWorker, WorkerStartError

logger = logging.getLogger(__name__)

#: Seconds between two looks at the counts while draining.
POLL = 0.1
#: Seconds between two relay passes over the run's own unsent rows.
RELAY_EVERY = 1.0
#: Seconds without progress (all kills done) after which the workers are stopped to look at the
#: queue: a warm shutdown gives back every message a worker holds (a retry waiting for its
#: countdown included), so an empty queue then means no probe is left anywhere.
QUIET = 3.0
#: Quiet looks per run (each one stops and restarts the probe workers).
QUIET_LOOKS = 5
#: Starts of one probe worker beyond those the kills and looks need: a worker that keeps
#: exiting on its own ends the run.
MORE_STARTS = 5
#: Seconds to connect to the broker before the run starts.
CONNECT_TIMEOUT = 10.0

Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def _broker_url(app: Celery) -> str:
    with app.connection_for_write() as conn:
        return safe_url(str(conn.as_uri(include_password=True)))


def check_ready(app: Celery) -> None:
    """Refuse to start unless the broker answers and the reliability tables are at the head revision."""
    url = safe_url(get_settings(app).database_url)
    try:
        revision = current_revision(app)
    except StoreError as exc:
        raise VerifySetupError(f"cannot read the reliability database: {exc}") from None
    if revision != head_revision():
        raise VerifySetupError(
            f"the reliability tables in {url} are at revision {revision or 'none'}, verify needs {head_revision()} "
            f"(its probe table): run  celery -A {app.main or 'proj'} reliable db upgrade"
        )
    conn: Any = app.connection_for_write(connect_timeout=CONNECT_TIMEOUT)
    try:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=CONNECT_TIMEOUT)
    except Exception as exc:
        raise VerifySetupError(
            f"cannot connect to the broker {conn.as_uri()}: {type(exc).__name__}; check broker_url"
        ) from None
    finally:
        conn.release()


def doctor_verdict(app: Celery) -> dict[str, Any]:
    """The doctor's findings, condensed: counts, and the checks that FAIL or WARN."""
    from ..doctor import Status, run_checks

    report = run_checks(app)
    return {
        "exit_code": report.exit_code(),
        "counts": {status.value: n for status, n in report.counts().items()},
        "fail": [f"{r.check}: {r.detail}" for r in report.results if r.status is Status.FAIL],
        "warn": [f"{r.check}: {r.detail}" for r in report.results if r.status is Status.WARN],
    }


class Run:
    """The state of one verify run; :func:`run_verify` drives it."""

    def __init__(self, app: Celery, plan: Plan, app_path: str, echo: Echo) -> None:
        self.app = app
        self.plan = plan
        self.echo = echo
        self.directory = Path(tempfile.mkdtemp(prefix="celery_reliable-verify-"))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH", "")) if p)
        options = plan.options
        self.workers = [
            ProbeWorker(app_path, plan.queue, f"verify-{plan.run_id[:8]}-{i + 1}", self.directory,
                        options.concurrency, env)
            for i in range(options.workers)
        ]  # fmt: skip
        self.report = VerifyReport(
            run_id=plan.run_id,
            queue=plan.queue,
            broker=_broker_url(app),
            database=safe_url(get_settings(app).database_url),
            probe=options.probe,
            task_name=plan.task_name,
            idempotent=plan.idempotent,
            messages=options.messages,
            poison=len(plan.poison()),
        )
        self.started = time.monotonic()

    # -- workers ---------------------------------------------------------------------------

    def start_workers(self) -> None:
        for worker in self.workers:
            worker.start()
        for worker in self.workers:
            worker.wait_ready()

    def revive(self) -> None:
        """Start again any probe worker that is not running (killed, or died on its own)."""
        limit = self.plan.options.kills + QUIET_LOOKS + MORE_STARTS
        for worker in self.workers:
            if worker.alive():
                continue
            if worker.starts >= limit:
                raise VerifySetupError(f"probe worker {worker.name} exited {worker.starts} times:\n{worker.tail()}")
            worker.start()

    def kill(self, index: int, done: int) -> None:
        kind = self.plan.kill_kind(index)
        kill = Kill(kind, [], done, round(time.monotonic() - self.started, 2))
        if kind == "pool-process":
            worker = self.workers[(index // 2) % len(self.workers)]
            pid = worker.kill_child() if worker.alive() else None
            if pid is None:  # no pool process to kill (still starting): kill the worker instead
                kill.kind = "workers"
            else:
                kill.pids.append(pid)
        if kill.kind == "workers":
            kill.pids = [pid for worker in self.workers if (pid := worker.kill()) is not None]
            # nobody consumes the probe queue now: what the dead workers held goes back at once
            kill.given_back = broker.give_back_unacked(self.app, self.plan.queue)
            self.revive()
        self.report.kills.append(kill)
        self.echo(f"kill {index + 1}: {kill.kind} {kill.pids} at {done} probes done")

    def nothing_left(self) -> bool:
        """Stop the workers and look: True if the probe queue is empty (the rest is lost), else restart."""
        self.stop_workers()
        ready, unacked = broker.depth(self.app, self.plan.queue)
        self.echo(f"no progress for {QUIET:.0f} s: {ready + unacked} probe message(s) left in the broker")
        if ready + unacked == 0:
            return True
        self.revive()
        return False

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.request_stop()
        for worker in self.workers:
            worker.wait_stopped()
        broker.give_back_unacked(self.app, self.plan.queue)

    # -- the run ---------------------------------------------------------------------------

    def publish(self) -> list[int]:
        published = publish_probes(self.app, self.plan)
        self.report.by_path = dict(published.by_path)
        self.report.publish_errors = published.errors[:LOST_LISTED]
        self.report.published = len(published.seqs)
        self.report.relayed += relay_probes(self.app, self.plan)
        self.echo(f"published {self.report.published} probes {self.report.by_path}")
        return published.seqs

    def drain(self, seqs: list[int]) -> None:
        """Kill workers as the probes get done; relay the run's rows; stop when all are done or time is up."""
        options = self.plan.options
        total = len(seqs)
        deadline = self.started + options.timeout
        next_kill, last_relay = 0, time.monotonic()
        last_done, last_progress, looks = -1, time.monotonic(), 0
        for _ in range(int(options.timeout / POLL) + 1):
            if time.monotonic() >= deadline:
                self.report.timed_out = True
                self.report.notes.append(f"reached --timeout ({options.timeout:.0f} s) before every probe ended")
                break
            rows = count_rows(self.app, self.plan.run_id, self.plan.prefix)
            done = rows.done
            if done >= total:
                break
            if done != last_done or not all(worker.ready() for worker in self.workers):
                last_done, last_progress = done, time.monotonic()  # a starting worker is no quiet
            quiet = time.monotonic() - last_progress >= QUIET and not rows.unsent
            if quiet and looks < QUIET_LOOKS:
                looks += 1
                if self.nothing_left():
                    break
                last_progress = time.monotonic()
            if next_kill < options.kills and done >= self.plan.kill_at(next_kill, total):
                self.kill(next_kill, done)
                next_kill += 1
            self.revive()
            if time.monotonic() - last_relay >= RELAY_EVERY:
                self.report.relayed += relay_probes(self.app, self.plan)
                last_relay = time.monotonic()
            time.sleep(POLL)
        if next_kill < options.kills:
            self.report.notes.append(
                f"only {next_kill} of {options.kills} kills fired: the probes were done first "
                "(raise --messages or --pause for more work in flight)"
            )
        self.report.worker_starts = sum(worker.starts for worker in self.workers)

    def count(self, seqs: list[int]) -> None:
        rows = count_rows(self.app, self.plan.run_id, self.plan.prefix)
        report, poison = self.report, self.plan.poison()
        published = set(seqs)
        ran = set(rows.effects) & published
        stored = set(rows.failures) & published
        report.effects = len(ran)
        report.effect_rows = sum(rows.effects.values())
        report.duplicates = report.effect_rows - len(rows.effects)
        report.stored_failures = len(stored)
        report.poison_stored = len(stored & set(poison))
        report.unexpected_failures = len(stored - set(poison))
        report.failure_reasons = dict(Counter(rows.failures[seq] for seq in stored))
        report.pending_left = sum(rows.pending.values())
        lost = sorted(published - ran - stored)
        report.lost, report.lost_probes = len(lost), lost[:LOST_LISTED]
        ready, unacked = broker.depth(self.app, self.plan.queue)
        report.in_broker = ready + unacked
        if ran & set(poison):
            report.notes.append(f"{len(ran & set(poison))} poison probe(s) wrote an effect: they must not")
        if report.unexpected_failures:
            report.notes.append(
                f"{report.unexpected_failures} probe(s) that should succeed were stored as failed "
                f"({report.failure_reasons}): killed more often than the task's max_retries allows"
            )
        report.seconds = round(time.monotonic() - self.started, 2)

    def clean_up(self) -> None:
        for worker in self.workers:
            worker.kill()
        if self.plan.options.keep:
            self.report.kept = str(self.directory)
            return
        errors = []
        try:
            broker.delete_queue(self.app, self.plan.queue)
        except Exception as exc:  # report it; the rest is still removed
            errors.append(f"probe queue {self.plan.queue} not deleted: {type(exc).__name__}: {exc}")
        try:
            delete_rows(self.app, self.plan.run_id, self.plan.prefix)
        except Exception as exc:
            errors.append(f"probe rows of run {self.plan.run_id} not deleted: {type(exc).__name__}: {exc}")
        shutil.rmtree(self.directory, ignore_errors=True)
        self.report.notes += errors
        self.report.cleaned_up = not errors


def run_verify(
    app: Celery, options: VerifyOptions | None = None, *, app_path: str, echo: Echo = _quiet
) -> VerifyReport:
    """Run a bounded loss check against ``app``'s own broker and reliability database.

    Starts probe workers of ``app_path`` (the ``celery -A`` value) on a queue of the run's own,
    publishes ``options.messages`` probes, SIGKILLs the probe workers ``options.kills`` times while
    they work, and counts what became of every probe. Touches nothing but the run's queue, its
    processes and its rows, and removes them at the end (unless ``options.keep``).

    Args:
        app: the configured app (``celery -A proj``).
        options: size and roughness of the run (defaults: :class:`VerifyOptions`).
        app_path: what ``celery -A`` is given for this app; the probe workers load it.
        echo: called with a line per step (the command prints them to stderr).

    Returns:
        The counts; ``report.passed`` and ``report.exit_code`` give the verdict.

    Raises:
        VerifySetupError: the check could not run (unreachable, not migrated, a worker that did
            not start); the run's traces are removed all the same.
    """
    options = options or VerifyOptions()
    plan = Plan(options)
    check_ready(app)
    from . import probe as _probe  # noqa: F401  (registers the probe tasks on the app, here only)

    doctor = doctor_verdict(app)
    if not app.conf.task_create_missing_queues:  # the probe queue is in no task_queues setting
        app.amqp.queues.add(broker.probe_queue(plan.queue))
    run = Run(app, plan, app_path, echo)
    run.report.doctor = doctor
    previous = _exit_on_sigterm()
    try:
        echo(f"starting {options.workers} probe worker(s) on queue {plan.queue}")
        try:
            run.start_workers()
        except WorkerStartError as exc:
            raise VerifySetupError(str(exc)) from None
        run.started = time.monotonic()
        seqs = run.publish()
        run.drain(seqs)
        run.stop_workers()
        run.count(seqs)
    finally:
        run.clean_up()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return run.report


def _exit_on_sigterm() -> Any:
    """Turn SIGTERM into SystemExit while a run is on, so its clean-up runs; the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)
