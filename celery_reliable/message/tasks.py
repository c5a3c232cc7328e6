"""Which tasks a message may name, and whether its arguments fit the task.

A message names a task in its ``task`` header and, through signatures, more tasks in its
callbacks (``link``), errbacks (``link_error``), chain and chord: a worker runs every one of them.
Each is checked against the app the way the message's own task is, so a stored row (edited by
hand, or by anyone who can write to the table) cannot make a worker run a task this app does not
send. The arguments are checked against the task's signature the way Celery's ``apply_async``
checks them (``Task.typing``), when this app registers the task.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery
from celery.utils.saferepr import saferepr

from ..config import get_settings
from ..exceptions import BadMessageError
from .protocol import protocol_clash


class Refused(ValueError):
    """A message, given or stored, that must not be sent; the text says why."""


class ArgumentsMismatchError(BadMessageError, TypeError):
    """Arguments that do not fit the task's signature, refused by ``publish()`` or the outbox.

    A :class:`~celery_reliable.exceptions.BadMessageError`, and a ``TypeError`` like the one
    Celery's ``apply_async`` raises for them (so ``delay()`` raises what it always raised, with
    ``reliable_publish_all`` on or off).
    """


def short(value: Any, limit: int = 200) -> str:
    """A repr of ``value`` for an error message, cut to about ``limit`` characters."""
    try:
        return str(saferepr(value, maxlen=limit, maxlevels=4))
    except Exception:
        return f"<{type(value).__name__}>"


def user_tasks(app: Celery) -> list[str]:
    """Task names the app registers itself (not Celery's or celery_reliable's own).

    An app with none is a pure producer that sends by name; an app with some is expected to
    know every task it sends.
    """
    return [n for n in app.tasks if not n.startswith(("celery.", "celery_reliable."))]


def is_external(app: Celery, name: str) -> bool:
    """Whether ``name`` matches ``reliable_external_tasks`` (a task another code base runs)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in get_settings(app).external_tasks)


def is_known_task(app: Celery, name: str) -> bool:
    """Whether ``app`` may send ``name``: it registers it, it registers no task of its own (a pure
    producer), or ``name`` matches ``reliable_external_tasks``. Catches typos before a message
    nobody consumes is sent."""
    return type(name) is str and (name in app.tasks or is_external(app, name) or not user_tasks(app))


def is_replayable_task(app: Celery, name: str) -> bool:
    """Whether replay may send ``name``: registered in ``app`` or in ``reliable_external_tasks``
    (stricter than :func:`is_known_task`: a pure producer replays nothing by name alone)."""
    return type(name) is str and (name in app.tasks or is_external(app, name))


#: Signature types Celery knows (``Signature.TYPES``) and the kwargs that hold their parts.
_PARTS: dict[Any, tuple[str, ...]] = {
    None: (), "chain": ("tasks",), "group": ("tasks",), "chord": ("header", "body"),
    "xmap": ("task",), "xstarmap": ("task",), "chunks": ("task",),
}  # fmt: skip
#: Signature options that hold more signatures a worker sends on.
_OPTION_PARTS = ("link", "link_error", "chord", "chain")
#: Bounds of a signature tree (a hostile row can nest or repeat without end).
_MAX_DEPTH = 32
_MAX_SIGNATURES = 1000


def signature_names(value: Any, where: str) -> list[str]:
    """Every task a signature (or a list of them) names, its parts and callbacks included.

    Raises:
        Refused: something in it is not a signature Celery could run as it is, or a signature's
            headers name Celery's own message headers.
    """
    names: list[str] = []
    _walk(value, where, names, 0)
    return names


def _walk(value: Any, where: str, names: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise Refused(f"{where}: signatures nested more than {_MAX_DEPTH} deep")
    if isinstance(value, list | tuple):
        for item in value:
            _walk(item, where, names, depth + 1)
        return
    if not isinstance(value, dict):
        raise Refused(f"{where}: {short(value, 100)} is not a signature (a mapping with a task name)")
    if len(names) >= _MAX_SIGNATURES:
        raise Refused(f"{where}: more than {_MAX_SIGNATURES} signatures")
    task = value.get("task")
    if type(task) is not str or not task:
        raise Refused(f"{where}: a signature without a task name: {short(value, 100)}")
    names.append(task)
    kind = value.get("subtask_type")
    if kind not in _PARTS:
        raise Refused(f"{where}: signature of {task!r} has an unknown type {short(kind, 50)}")
    if _PARTS[kind]:
        kwargs = value.get("kwargs")
        if not isinstance(kwargs, dict):
            raise Refused(f"{where}: {kind} signature without its parts: {short(value, 100)}")
        for key in _PARTS[kind]:
            if kwargs.get(key) is not None:
                _walk(kwargs[key], where, names, depth + 1)
    options = value.get("options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise Refused(f"{where}: options of the signature of {task!r} are not a mapping: {short(options, 100)}")
    headers = options.get("headers")
    if headers is not None:
        if not isinstance(headers, dict):
            raise Refused(f"{where}: headers of the signature of {task!r} are not a mapping")
        clash = protocol_clash(headers)
        if clash:
            raise Refused(f"{where}: the signature of {task!r} sets Celery's own message headers {clash}")
    for key in _OPTION_PARTS:
        if options.get(key):
            _walk(options[key], where, names, depth + 1)


def check_names(
    app: Celery, names: Iterable[str], where: str, known: Callable[[Celery, str], bool] = is_known_task
) -> None:
    """Refuse the first of ``names`` that ``known`` does not allow."""
    for name in names:
        if not known(app, name):
            raise Refused(
                f"{where} names task {name!r}, which is not registered in app {app.main!r} "
                "(nor listed in reliable_external_tasks)"
            )


def check_signatures(app: Celery, value: Any, where: str, known: Callable[[Celery, str], bool] = is_known_task) -> None:
    """Refuse signatures that are malformed or name a task ``known`` does not allow."""
    if value is not None:
        check_names(app, signature_names(value, where), where, known)


#: Parts of a protocol 2 message body's "embed" that hold signatures.
EMBED_PARTS = ("callbacks", "errbacks", "chain", "chord")


def check_embed(app: Celery, embed: Any, known: Callable[[Celery, str], bool] = is_known_task) -> None:
    """Refuse a message body's embed (callbacks, errbacks, chain, chord) that names a task not allowed."""
    if not isinstance(embed, dict):
        raise Refused(f"the message's embed is not a mapping: {short(embed, 100)}")
    for key in EMBED_PARTS:
        if embed.get(key):
            check_signatures(app, embed[key], f"the message's {key}", known)


def checked_task(app: Celery, name: str) -> Any:
    """The task whose signature ``name``'s arguments are checked against, or None (not checked).

    Checked where Celery's ``apply_async`` checks: the task is registered in ``app`` with
    ``typing`` on (the default). A task this app does not register cannot be checked.
    """
    task = app.tasks.get(name)
    if task is None or not getattr(task, "typing", False) or getattr(task, "__header__", None) is None:
        return None
    return task


def arguments_misfit(task: Any, name: str, args: Any, kwargs: Any) -> str | None:
    """Why ``args``/``kwargs`` do not fit ``task`` (from :func:`checked_task`; None: not checked), or None."""
    if task is None:
        return None
    try:
        task.__header__(*args, **kwargs)
    except TypeError as exc:
        return (
            f"arguments args={short(args)} kwargs={short(kwargs)} do not fit the signature of task "
            f"{name!r}, {_describe(task)}: {exc}"
        )
    return None


def argument_error(app: Celery, name: str, args: Any, kwargs: Any) -> str | None:
    """Why ``args``/``kwargs`` do not fit task ``name``'s signature, or None (see :func:`checked_task`)."""
    return arguments_misfit(checked_task(app, name), name, args, kwargs)


def _describe(task: Any) -> str:
    """``name(parameters)`` of the task's function (a bound task's ``self`` left out)."""
    run = getattr(task, "run", None)
    try:
        signature = inspect.signature(run)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(signature unknown)"
    bare = [parameter.replace(annotation=parameter.empty) for parameter in signature.parameters.values()]
    return f"{getattr(run, '__name__', 'run')}{signature.replace(parameters=bare, return_annotation=signature.empty)}"
