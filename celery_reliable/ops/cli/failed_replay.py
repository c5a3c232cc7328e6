"""``reliable failed replay``: send stored failures again, one, a filtered set or all of them."""

from __future__ import annotations

from typing import Any

import click
from celery.bin.base import CeleryCommand

from ...exceptions import ReliableError
from ...message.tasks import is_replayable_task
from ...send.replay import replay
from ...store.failures import failure_ids
from ...store.models import FailureStatus
from .base import CleanError, app_of, echo, echo_json, json_option, reliable_errors, table
from .failed import failed, make_filter, missing_ids, task_filter_options
from .options import confirm, dry_run_option, json_value, paced, progress, rate_option, yes_option

#: Rows listed one by one in the human output of a bulk replay (errors are always listed).
SHOWN_ROWS = 100


@failed.command(name="replay", cls=CeleryCommand)
@click.argument("ids", nargs=-1, type=int)
@task_filter_options
@click.option("--all", "everything", is_flag=True, help="Every failed row waiting for action.")
@click.option("--args", "args_json", help="Replace the positional arguments (one ID only), e.g. '[42, \"x\"]'.")
@click.option("--kwargs", "kwargs_json", help="Replace the keyword arguments (one ID only), e.g. '{\"a\": 1}'.")
@click.option("--queue", help="Send to this queue instead of the original one.")
@click.option("--resume", is_flag=True, help="Finish a replay that died after claiming its row (one ID only).")
@rate_option
@dry_run_option
@yes_option
@json_option
@click.pass_context
def replay_cmd(
    ctx: click.Context, /, ids: tuple[int, ...], everything: bool, args_json: str | None, kwargs_json: str | None,
    queue: str | None, resume: bool, rate: float | None, dry_run: bool, yes: bool, as_json: bool, **filters: Any,
) -> None:  # fmt: skip
    """Send stored failures again: the given IDS, the failed rows matching the filters, or --all.

    Each row is sent once, with a new task id, its stored arguments (or --args/--kwargs) and its
    original queue (or --queue). Exit code 1 if any row could not be replayed.
    """
    app = app_of(ctx)
    filtered = any(v is not None for v in filters.values())
    if not (ids or everything or filtered):
        raise click.UsageError("say which rows: failure IDS, a filter (--task, --exception, ...) or --all")
    args = json_value(args_json, "--args", list)
    kwargs = json_value(kwargs_json, "--kwargs", dict)
    if (args is not None or kwargs is not None or resume) and (len(ids) != 1 or everything or filtered):
        raise click.UsageError("--args, --kwargs and --resume apply to exactly one failure ID")
    status = None if ids else FailureStatus.FAILED
    selected = make_filter(app, ids, status=status, sends=is_replayable_task, **filters)
    with reliable_errors():
        missing_ids(app, ids)
        chosen = failure_ids(app, selected)
    if not chosen:
        echo("[]" if as_json else "no failed tasks match; nothing to replay")
        return
    if not dry_run:
        target = f" to queue {queue!r}" if queue else ""
        confirm(f"Replay {len(chosen)} failed task(s){target}?", yes)
    results: list[dict[str, Any]] = []
    rows = paced(chosen, None if dry_run else rate)
    for failure_id in progress(rows, len(chosen), "replaying") if len(chosen) > 1 else rows:
        try:
            done = replay(app, failure_id, args=args, kwargs=kwargs, queue=queue, dry_run=dry_run, resume=resume)
            results.append({"id": failure_id, "task_name": done.task_name, "task_id": done.task_id, "error": None})
        except ReliableError as exc:
            results.append({"id": failure_id, "task_name": None, "task_id": None, "error": str(exc)})
    errors = [r for r in results if r["error"]]
    if as_json:
        echo_json(results)
    elif len(chosen) == 1 and errors:
        raise CleanError(errors[0]["error"])
    else:
        shown = results if len(results) <= SHOWN_ROWS else errors
        cells = [(r["id"], r["task_name"], r["task_id"] or ("(dry run)" if not r["error"] else None), r["error"])
                 for r in shown]  # fmt: skip
        if cells:
            echo(table(["id", "task", "new task id", "error"], cells))
        verb = "would replay" if dry_run else "replayed"
        echo(f"{verb} {len(results) - len(errors)} of {len(results)} failed task(s)")
    if errors:
        ctx.exit(1)
