"""Send a stored failure again: same task, arguments and delivery options (or edited ones).

A row is claimed (``failed`` -> ``replaying``) in one conditional UPDATE before anything is sent,
so two replays of the same row can never both send. A row is input like any other: only task
names registered in the app (or in ``reliable_external_tasks``) are sent, in the row's own
``task_name`` and in every callback, errback, chain or chord its options name; stored headers
that name Celery's own message headers are refused (they would replace the task name or id);
the arguments must fit the task's signature. So an edited row cannot make a worker run another
task, and a row that could never run is refused before it is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery, uuid
from celery.canvas import Signature

from .. import events
from ..exceptions import BadMessageError, ReplayError
from ..message.prepare import check_delivery_options
from ..message.protocol import protocol_clash
from ..message.tasks import Refused, argument_error, check_signatures, is_replayable_task, short
from ..message.trace import resumed
from ..store.failures import FailureFilter, claim_for_replay, finish_replay, get_failure, list_failures
from ..store.models import FailedTask, FailureStatus
from ..store.payload import NotJSONError, from_stored, is_replayable, to_stored, unreadable

logger = logging.getLogger(__name__)

#: Header linking a replayed delivery to the failed row it came from.
REPLAY_HEADER = "x_reliable_replay_of"


@dataclass(frozen=True)
class ReplayResult:
    """One replayed (or, with ``dry_run``, replayable) failed task."""

    failure_id: int
    task_name: str
    task_id: str  #: id of the new delivery ("" for a dry run)
    sent: bool


def _check(app: Celery, row: FailedTask, resume: bool) -> None:
    if row.status == FailureStatus.REPLAYED:
        raise ReplayError(
            f"failed task {row.id} was already replayed as {row.replay_task_id}; "
            "a row is replayed once (replay the new delivery's failure if it failed again)."
        )
    if row.status == FailureStatus.REPLAYING and not resume:
        raise ReplayError(
            f"failed task {row.id} is being replayed as {row.replay_task_id}; if that replay "
            "died before it finished, replay again with resume=True (same new task id)."
        )
    if not is_replayable_task(app, row.task_name):
        raise ReplayError(
            f"task {short(row.task_name, 100)} of failed task {row.id} is not registered in app "
            f"{app.main!r}; only registered tasks and reliable_external_tasks can be replayed "
            "(deploy the task, add it to reliable_external_tasks, or purge the row)."
        )
    reason = unreadable(row.options)
    if reason:
        raise ReplayError(f"failed task {row.id}: options: {reason}; its delivery options are lost: purge it.")


def _stored(row: FailedTask, column: str, kind: type) -> Any:
    """The stored ``args`` (a list) or ``kwargs`` (a mapping) of ``row``, refused unless they are that."""
    value = getattr(row, column)
    if not is_replayable(value):
        reason = unreadable(value) or "were not stored as JSON"
        raise ReplayError(f"failed task {row.id}: {column} {reason}; replay it with edited {column}.")
    decoded = from_stored(value) if value is not None else kind()
    if not isinstance(decoded, kind):
        raise ReplayError(
            f"failed task {row.id}: stored {column} are not a {'list' if kind is list else 'mapping'} "
            f"({short(decoded)}); replay it with edited {column}."
        )
    return decoded


def _validate_edit(args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None) -> None:
    if args is not None and (isinstance(args, str | bytes) or not isinstance(args, Sequence)):
        raise ReplayError(f"args must be a list, got {args!r}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ReplayError(f"kwargs must be a mapping, got {kwargs!r}")
    try:
        to_stored([list(args or ()), dict(kwargs or {})])
    except NotJSONError as exc:
        raise ReplayError(f"edited arguments {exc}") from None


def _send_options(app: Celery, row: FailedTask, queue: str | None) -> dict[str, Any]:
    """The row's delivery options for ``send_task``, refused unless every part of them is safe to send."""
    stored = row.options if row.options is not None else {}
    try:
        check_delivery_options(row.task_name, stored)  # types; no header may be Celery's own
    except BadMessageError as exc:
        raise ReplayError(f"failed task {row.id}: stored options refused: {exc}") from None
    for key in ("parent_id", "root_id"):
        if stored.get(key) is not None and not isinstance(stored[key], str):
            raise ReplayError(f"failed task {row.id}: stored {key} is not text: {short(stored[key])}")
    headers = from_stored(stored.get("headers") or {})
    if not isinstance(headers, dict) or protocol_clash(headers):
        raise ReplayError(f"failed task {row.id}: stored headers name Celery's own message headers")
    headers[REPLAY_HEADER] = row.id
    options: dict[str, Any] = {"headers": headers}
    routing_key = stored.get("routing_key")
    if queue:
        options["queue"] = queue
    elif routing_key and routing_key in app.amqp.queues:
        options["queue"] = routing_key
    elif routing_key:
        options["exchange"] = stored.get("exchange") or ""
        options["routing_key"] = routing_key
    for key in ("priority", "parent_id", "root_id", "shadow"):
        if stored.get(key) is not None:
            options[key] = stored[key]
    for key in ("link", "link_error"):
        value = stored.get(key)
        if not value:
            continue
        if not isinstance(value, list):
            raise ReplayError(f"failed task {row.id}: stored {key} is not a list of signatures: {short(value)}")
        try:
            check_signatures(app, value, f"stored {key}", is_replayable_task)
        except Refused as exc:
            raise ReplayError(f"failed task {row.id}: {exc}; purge the row or replay the task without it.") from None
        options[key] = [Signature(s, app=app) for s in value]
    return options


def _prepared(
    app: Celery,
    row: FailedTask,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    queue: str | None,
    resume: bool,
) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """What replay sends for ``row``: arguments and ``send_task`` options, every part checked.

    Raises:
        ReplayError: the row cannot be replayed as it is (whatever is wrong with it).
    """
    try:
        _check(app, row, resume)
        _validate_edit(args, kwargs)
        send_args = list(args) if args is not None else _stored(row, "args", list)
        send_kwargs = dict(kwargs) if kwargs is not None else _stored(row, "kwargs", dict)
        options = _send_options(app, row, queue)
        mismatch = argument_error(app, row.task_name, send_args, send_kwargs)
    except ReplayError:
        raise
    except Exception as exc:  # a stored value nothing above expected: the row, not the replay, is at fault
        raise ReplayError(f"failed task {row.id} cannot be replayed as stored: {type(exc).__name__}: {exc}") from exc
    if mismatch:
        edited = "edited" if args is not None or kwargs is not None else "stored"
        raise ReplayError(f"failed task {row.id}: the {edited} {mismatch}; replay it with edited args/kwargs.")
    return send_args, send_kwargs, options


def replay(
    app: Celery,
    failure_id: int,
    *,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    queue: str | None = None,
    dry_run: bool = False,
    resume: bool = False,
) -> ReplayResult:
    """Send failed task ``failure_id`` again and mark it replayed.

    Args:
        args: replace the stored positional arguments (e.g. after fixing bad input).
        kwargs: replace the stored keyword arguments.
        queue: send to this queue instead of the original one.
        dry_run: check that the row can be replayed, send nothing.
        resume: finish a replay that died between claiming the row and sending.

    Raises:
        ReplayError: unknown id, already replayed, unregistered task, bad edited arguments,
            or the broker refused the message (the row is then ``failed`` again).
    """
    row = get_failure(app, failure_id)
    if row is None:
        raise ReplayError(f"no failed task with id {failure_id}")
    send_args, send_kwargs, options = _prepared(app, row, args, kwargs, queue, resume)
    if dry_run:
        return ReplayResult(row.id, row.task_name, "", sent=False)
    if row.status == FailureStatus.REPLAYING and row.replay_task_id:
        new_id = row.replay_task_id
    else:
        new_id = uuid()
        if not claim_for_replay(app, row.id, new_id):
            raise ReplayError(f"failed task {row.id} was claimed by another replay")
    try:
        with resumed(options["headers"]):  # the replay continues the failed run's trace
            app.send_task(row.task_name, send_args, send_kwargs, task_id=new_id, **options)
    except Exception as exc:
        finish_replay(app, row.id, sent=False)
        raise ReplayError(f"failed task {row.id} could not be sent: {exc}") from exc
    finish_replay(app, row.id, sent=True)
    logger.info("Failed task %d (%s[%s]) replayed as %s", row.id, row.task_name, row.task_id, new_id)
    events.send_from_app(app, events.REPLAYED, new_id, name=row.task_name, failure_id=row.id, original_id=row.task_id)
    return ReplayResult(row.id, row.task_name, new_id, sent=True)


def replay_many(
    app: Celery,
    filter: FailureFilter,
    *,
    queue: str | None = None,
    dry_run: bool = False,
    limit: int = 10_000,
) -> list[ReplayResult | ReplayError]:
    """Replay every ``failed`` row matching ``filter``; one bad row does not stop the others."""
    selected = FailureFilter(**{**filter.__dict__, "status": FailureStatus.FAILED})
    results: list[ReplayResult | ReplayError] = []
    for row in list_failures(app, selected, limit=limit):
        try:
            results.append(replay(app, row.id, queue=queue, dry_run=dry_run))
        except ReplayError as exc:
            results.append(exc)
    return results
