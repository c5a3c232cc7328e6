"""``reliable doctor``: check a live deployment for settings that lose or duplicate tasks."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator

import click
from celery.bin.base import CeleryCommand

from ..doctor import Result, Status, run_checks
from .base import app_of, echo, echo_json, json_option, reliable, reliable_errors, table


@reliable.command(cls=CeleryCommand)
@json_option
@click.option("--strict", is_flag=True, help="Exit 1 on a WARN too, not only on a FAIL.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, strict: bool) -> None:
    """Check the broker, database and settings; exit 1 if any check FAILs."""
    with reliable_errors():
        report = run_checks(app_of(ctx, tasks=False))
    code = report.exit_code(strict)
    if as_json:
        counts = {status.value: n for status, n in report.counts().items()}
        echo_json({"results": [r.as_dict() for r in report.results], "counts": counts, "exit_code": code})
    else:
        rows = [row for result in report.results for row in _rows(result)]
        echo(table(("STATUS", "CHECK", "DETAIL", "FIX"), rows))
        summary = ", ".join(f"{n} {status.value}" for status, n in report.counts().items() if n)
        echo(f"\n{summary}" + ("" if code == 0 else f" -> exit {code}"))
        if any(r.status is Status.FAIL for r in report.results):
            echo("FAIL: tasks are lost or duplicated in ordinary operation until this is fixed.")
    ctx.exit(code)


#: Width the DETAIL and FIX columns are wrapped to, so the table fits a terminal.
DETAIL_WIDTH = 60
FIX_WIDTH = 50


def _rows(result: Result) -> Iterator[tuple[str, str, str, str]]:
    """One table row per wrapped line; the status and check only on the first."""
    detail = textwrap.wrap(result.detail, DETAIL_WIDTH) or [""]
    fix = textwrap.wrap(result.fix, FIX_WIDTH) or ["-"]
    for i in range(max(len(detail), len(fix))):
        first = i == 0
        yield (
            result.status.value if first else "",
            result.check if first else "",
            detail[i] if i < len(detail) else "",
            fix[i] if i < len(fix) else "",
        )
