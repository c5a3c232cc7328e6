"""``reliable verify``: a bounded loss check against the application's own broker and database."""

from __future__ import annotations

import dataclasses
from typing import Any

import click
from celery.bin.base import CeleryCommand

from ...exceptions import ReliableError
from ..verify.plan import PROBES, Plan, VerifyOptions
from ..verify.report import EXIT_NOT_RUN, VerifyReport
from .base import app_of, echo, echo_json, json_option, reliable, table


def _app_path(ctx: click.Context, given: str | None) -> str | None:
    if given:
        return given
    value = ctx.find_root().params.get("app")
    return value if isinstance(value, str) and value else None


@reliable.command(cls=CeleryCommand)
@click.option("--messages", "-n", type=click.IntRange(min=1), default=200, show_default=True, help="Probes to publish.")
@click.option(
    "--poison", type=click.IntRange(min=0), default=4, show_default=True,
    help="Probes that fail for good and must end as stored failures.",
)  # fmt: skip
@click.option(
    "--kills", type=click.IntRange(min=0), default=3, show_default=True,
    help="SIGKILLs during the run: one pool process, then every probe worker, alternately.",
)  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Probe worker processes.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=2, show_default=True, help="Pool size each.")
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True,
    help="Seconds the run may take once the probe workers are up.",
)  # fmt: skip
@click.option(
    "--probe", type=click.Choice(sorted(PROBES)), default="idempotent", show_default=True,
    help="idempotent: exactly one effect expected; reliable: at least one; plain-early-ack: plain Celery "
    "defaults, to see a loss.",
)  # fmt: skip
@click.option(
    "--pause", type=click.FloatRange(min=0, max=60), default=0.05, show_default=True,
    help="Seconds each probe works, so kills find probes in flight.",
)  # fmt: skip
@click.option("--keep", is_flag=True, help="Leave the probe queue, probe rows and worker logs in place.")
@click.option("--plan", "show_plan", is_flag=True, help="Print what the run would do and touch; do nothing.")
@click.option("--app-path", help="Import path of the app for the probe workers (default: the -A value).")
@json_option
@click.pass_context
def verify(ctx: click.Context, /, show_plan: bool, app_path: str | None, as_json: bool, **values: Any) -> None:
    """Check that no task message is lost, on your own broker and database.

    Starts probe workers of this app on a queue of its own, publishes probe tasks (through
    publish(), the outbox and the relay), SIGKILLs the probe workers while they work, and
    counts what became of every probe. Exit code 0: nothing lost (and, with the idempotent
    probe, nothing run twice); 1: the check failed; 3: it could not run.
    """
    from ..verify.run import run_verify

    app = app_of(ctx, tasks=False)
    try:
        options = VerifyOptions(**values)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    path = _app_path(ctx, app_path)
    if show_plan:
        _echo_plan(Plan(options), path, as_json)
        return
    if path is None:
        raise click.UsageError("verify starts workers of your app: run it as  celery -A proj reliable verify")
    report_line = (lambda _: None) if as_json else (lambda line: echo(line, err=True))
    try:
        report = run_verify(app, options, app_path=path, echo=report_line)
    except ReliableError as exc:  # VerifySetupError, or a database error mid-run
        if as_json:
            echo_json({"passed": False, "exit_code": EXIT_NOT_RUN, "error": str(exc)})
        else:
            echo(f"Error: the check could not run: {exc}", err=True)
        ctx.exit(EXIT_NOT_RUN)
    if as_json:
        echo_json(report.as_dict())
    else:
        echo(render(report))
    ctx.exit(report.exit_code)


def _echo_plan(plan: Plan, app_path: str | None, as_json: bool) -> None:
    options = plan.options
    data = {
        "app": app_path,
        "queue": plan.queue,
        "task": plan.task_name,
        "options": dataclasses.asdict(options),
        "poison_probes": plan.poison(),
        "paths": {p: sum(plan.path(s) == p for s in range(options.messages)) for p in ("publish", "outbox", "relay")},
        "kills": [plan.kill_kind(i) for i in range(options.kills)],
        "touches": [
            f"broker: queue {plan.queue} and its exchange (deleted at the end)",
            f"database: celery_reliable_verify_effect rows of run {plan.run_id}, and failed, pending and "
            f"processed rows whose task id starts with {plan.prefix} (deleted at the end)",
            f"processes: {options.workers} probe worker(s) started and killed by PID",
        ],
    }
    if as_json:
        echo_json(data)
        return
    for key, value in data.items():
        if key == "touches":
            echo("touches:")
            for line in data["touches"]:  # type: ignore[union-attr]
                echo(f"  - {line}")
        else:
            echo(f"{key}: {value}")


def render(report: VerifyReport) -> str:
    """The human report: where it ran, the doctor's verdict, the counts, the verdict."""
    doctor = report.doctor
    counts = ", ".join(f"{n} {status}" for status, n in doctor.get("counts", {}).items() if n)
    kinds = ", ".join(f"{kill.kind} at {kill.done}" for kill in report.kills) or "none"
    reasons = ", ".join(f"{n} {reason}" for reason, n in report.failure_reasons.items())
    rows = [
        ("published", report.published),
        ("  through publish()", report.by_path.get("publish", 0)),
        ("  through an outbox (sent on commit)", report.by_path.get("outbox", 0)),
        ("  through an outbox (sent by the relay)", report.by_path.get("relay", 0)),
        ("poison probes", report.poison),
        ("worker kills", f"{len(report.kills)} ({kinds})"),
        ("probe worker starts", report.worker_starts),
        ("effects (distinct probes)", report.effects),
        ("effect rows", report.effect_rows),
        ("duplicate effects", report.duplicates),
        ("stored failures", f"{report.stored_failures} ({reasons})" if reasons else report.stored_failures),
        ("  of them poison", report.poison_stored),
        ("pending left", report.pending_left),
        ("left in the broker", report.in_broker),
        ("LOST", report.lost),
    ]
    lines = [
        f"run      {report.run_id}  ({report.seconds:.1f} s)",
        f"broker   {report.broker}  queue {report.queue}",
        f"database {report.database}",
        f"probe    {report.task_name} ({report.probe})",
        f"doctor   {counts}" + "".join(f"\n         FAIL {line}" for line in doctor.get("fail", [])),
        "",
        table(("probes", "count"), rows),
        "",
    ]
    lines += [f"note: {note}" for note in report.notes]
    if report.kept:
        lines.append(f"kept: probe queue, rows and worker logs in {report.kept}")
    lines.append(report.verdict())
    return "\n".join(lines)
