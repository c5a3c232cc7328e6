"""The worker's check that a message's arguments fit its task's signature.

A message whose arguments do not fit (a deploy changed the task's signature while messages were
queued, or a producer that skipped Celery's check) can never succeed. Run as is, the task raises
``TypeError`` and every retry fails the same way; worse, Celery's retry checks the arguments again
before it publishes, so the retry itself cannot be sent. It is checked here before the task runs,
the way Celery checks it in ``apply_async`` (``typing`` on: the task's ``__header__``, a function
with the task's signature and an empty body), and stored at once.
"""

from __future__ import annotations

import inspect
import reprlib
from typing import Any

from ..exceptions import PermanentError

#: The failure reason of such a message in the failed-task table.
REASON = "bad_arguments"

_repr = reprlib.Repr()
_repr.maxstring = 200
_repr.maxother = 200
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 10
_repr.maxlevel = 3


class BadArgumentsError(PermanentError, TypeError):
    """A message's arguments do not fit its task's signature; it is stored, never run or retried."""

    reliable_reason = REASON


def _signature(task: Any) -> inspect.Signature | None:
    """The signature the caller sees: the task function's, without ``self`` when it is bound."""
    fun = getattr(task, "_decorated_fun", None) or getattr(task, "run", None)
    try:
        signature = inspect.signature(fun)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    params = list(signature.parameters.values())
    header = getattr(task, "__header__", None)
    if getattr(header, "args", ()) and params and not inspect.ismethod(fun):
        # bind=True: Celery passes the task instance first (its header binds a placeholder)
        signature = signature.replace(parameters=params[1:])
    return signature


def signature_text(task: Any) -> str:
    """``name(params)`` of the task's function as the caller sees it."""
    fun = getattr(task, "_decorated_fun", None) or getattr(task, "run", None)
    signature = _signature(task)
    return f"{getattr(fun, '__name__', 'run')}{signature if signature is not None else '(...)'}"


def _explain(task: Any, args: Any, kwargs: Any, fallback: str) -> str:
    signature = _signature(task)
    if signature is None:
        return fallback
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        return str(exc)
    return fallback


def _shown(args: Any) -> Any:
    return list(args) if isinstance(args, tuple) else args  # as sent (JSON has no tuples)


def check(task: Any, args: Any, kwargs: Any) -> BadArgumentsError | None:
    """The error to store when ``args``/``kwargs`` do not fit ``task``; None when they do.

    Positional arguments that are not a list and keyword arguments that are not a mapping (with
    string keys) never fit. The signature itself is checked for tasks Celery checks (``typing``
    on and a ``__header__``); others run and fail (and are retried) like any task that raises.
    """
    problem = None
    if not isinstance(args, list | tuple):
        problem = f"the positional arguments are a {type(args).__name__}, not a list"
    elif not isinstance(kwargs, dict):
        problem = f"the keyword arguments are a {type(kwargs).__name__}, not a mapping"
    elif not all(isinstance(key, str) for key in kwargs):
        problem = "a keyword argument name is not a string"
    else:
        header = getattr(task, "__header__", None) if getattr(task, "typing", False) else None
        if header is None:
            return None
        try:
            header(*args, **kwargs)
        except TypeError as exc:
            problem = _explain(task, args, kwargs, str(exc))
    if problem is None:
        return None
    name = getattr(task, "name", None) or type(task).__name__
    return BadArgumentsError(
        f"Task {name} was sent arguments that do not fit its signature: args={_repr.repr(_shown(args))} "
        f"kwargs={_repr.repr(kwargs)} ({problem}). It expects {signature_text(task)}. It was not run "
        "and will not be retried: replay it with edited arguments "
        "(celery -A proj reliable failed replay ID --args '[...]' --kwargs '{...}'), or send it to a "
        "version of the task that takes these arguments."
    )
