"""The message Celery's ``send_task`` builds, built here with only the per-message work.

A relay sends thousands of messages a second; ``send_task`` reads the same settings, routes and
registry entries for each. :class:`SendContext` reads them once per batch and :func:`build` does
the rest, producing the very message ``send_task`` would (protocol 2; the tests compare the two on
every supported Celery). Where it cannot (eager mode, a relative ``expires``, a custom
``send_task`` or ``as_task_v2``), it returns None and the caller uses ``send_task`` itself.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from celery.utils.functional import maybe_list
from celery.utils.saferepr import saferepr

from ..broker.facts import SEND_TASK_IGNORE_RESULT
from ..message.prepare import aware


def _plain_repr(value: Any, level: int, maxlevels: int, out: list[str]) -> bool:
    """Append saferepr's tokens for plain JSON data; False for anything else."""
    kind = type(value)
    if kind is str:
        out.append("'" + value.replace("'", "\\'") + "'")
    elif kind is int or kind is float or kind is bool:
        out.append(str(value))
    elif value is None:
        out.append("None")
    elif kind is list or kind is dict:
        start, end = ("[", "]") if kind is list else ("{", "}")
        if maxlevels and level >= maxlevels:
            out.append(start + "..." + end)
            return True
        out.append(start)
        if kind is list:
            for index, item in enumerate(value):
                if index:
                    out.append(", ")
                if not _plain_repr(item, level + 1, maxlevels, out):
                    return False
        else:
            for index, (key, item) in enumerate(value.items()):
                if type(key) is not str:
                    return False
                if index:
                    out.append(", ")
                out.append("'" + key.replace("'", "\\'") + "': ")
                if not _plain_repr(item, level + 1, maxlevels, out):
                    return False
        out.append(end)
    else:
        return False
    return True


def fast_saferepr(value: Any, maxlen: int | None, maxlevels: int) -> str:
    """``celery.utils.saferepr.saferepr(value, maxlen, maxlevels)``, the way Celery fills ``argsrepr``.

    For plain JSON data (dicts with str keys, lists, str, int, float, bool, None) whose text is
    shorter than ``maxlen``, saferepr truncates nothing and its output is known exactly: it is
    built directly (saferepr's token stream costs ~10 us per message). Anything else, or longer,
    goes to saferepr itself.
    """
    out: list[str] = []
    try:
        plain = _plain_repr(value, 0, maxlevels, out)
    except (RecursionError, ValueError):
        plain = False
    if plain:
        text = "".join(out)
        if maxlen is None or len(text) < maxlen:
            return text
    return str(saferepr(value, maxlen, maxlevels=maxlevels))


def fast_path(app: Celery) -> bool:
    """Whether :meth:`Publisher.send` may build messages itself: the app uses Celery's own
    ``send_task``, message protocol 2 and the stock ``as_task_v2`` (what it mirrors; the same
    message on every supported Celery)."""
    return (
        type(app).send_task is Celery.send_task
        and type(app.amqp).as_task_v2 is AMQP.as_task_v2
        and int(app.conf.task_protocol) == 2
    )


#: saferepr's default depth: what Celery before 5.7 (no ``task_repr_maxlevels``) used for argsrepr.
_SAFEREPR_LEVELS = 3


class SendContext:
    """The settings and app state ``send_task`` reads for every message, read once per batch."""

    def __init__(self, app: Celery) -> None:
        conf = app.conf
        amqp = app.amqp
        self.app = app
        self.always_eager = bool(conf.task_always_eager)
        # Celery 5.7 reads task_repr_maxlevels; before it, saferepr's own default (3) was used
        self.maxlevels = conf.get("task_repr_maxlevels", _SAFEREPR_LEVELS)
        self.argsrepr_maxsize = amqp.argsrepr_maxsize
        self.kwargsrepr_maxsize = amqp.kwargsrepr_maxsize
        self.sent_event = conf.task_send_sent_event
        self.inherit_priority = conf.task_inherit_parent_priority
        self.parent: Any = app.current_worker_task
        self.reply_to = app.thread_oid
        self._on_task_call: Any = None
        self.route = amqp.router.route
        self.create_task_message = amqp.create_task_message
        self.send_task_message = amqp.send_task_message
        self.registry: Any = app._tasks  # type: ignore[attr-defined]  # what send_task() reads (no finalize)
        self.tasks: dict[str, tuple[Any, dict[str, Any]]] = {}

    def on_task_call(self, producer: Any, task_id: str) -> None:
        if self._on_task_call is None:
            self._on_task_call = self.app.backend.on_task_call
        self._on_task_call(producer, task_id)

    def task(self, name: str) -> tuple[Any, dict[str, Any]]:
        """The registered task of ``name`` (or None) and its execution options that are set."""
        entry = self.tasks.get(name)
        if entry is None:
            task_type = self.registry.get(name)
            defaults: dict[str, Any] = {}
            if task_type is not None and hasattr(task_type, "_get_exec_options"):
                get_exec_options = task_type._get_exec_options
                exec_options = get_exec_options() if inspect.ismethod(get_exec_options) else None
                if exec_options:
                    defaults = {k: v for k, v in exec_options.items() if v is not None}
            entry = self.tasks[name] = (task_type, defaults)
        return entry


@dataclass
class Built:
    """A task message as ``send_task`` builds it, and the options it passes on to ``send_task_message``."""

    message: Any  # celery.app.amqp.task_message: headers, properties, body, sent_event
    opts: dict[str, Any]
    ignore_result: bool
    expiration: float | None  # seconds left before ``expires`` (RabbitMQ's per-message TTL)
    eta: bool


def build(
    ctx: SendContext,
    name: str,
    args: Any,
    kwargs: Any,
    task_id: str,
    options: dict[str, Any],
    extra: dict[str, Any],
    origin: str,
) -> Built | None:
    """The message Celery's ``send_task`` would build (protocol 2), or None: use send_task itself.

    Built with the per-message work only (``ctx``: what is the same for a batch, read once);
    ``extra``: the publisher's own options (confirm timeout, mandatory), ``origin``: its node name.
    """
    if ctx.always_eager:
        return None
    # What Celery 5.7's send_task() does, for the options publish() accepts.
    task_type, defaults = ctx.task(name)
    opts: dict[str, Any] = {**options, "retry": False, **extra}
    if defaults:
        opts = dict(defaults, **opts)
    eta, expires = opts.pop("eta", None), opts.pop("expires", None)
    link, link_error = opts.pop("link", None), opts.pop("link_error", None)
    root_id, parent_id = opts.pop("root_id", None), opts.pop("parent_id", None)
    shadow, retries = opts.pop("shadow", None), opts.pop("retries", 0)
    time_limit, soft_time_limit = opts.pop("time_limit", None), opts.pop("soft_time_limit", None)
    ignore_result = opts.pop("ignore_result", SEND_TASK_IGNORE_RESULT)
    reply_to = opts.pop("reply_to", None) or ctx.reply_to
    opts = ctx.route(opts, name, args, kwargs, task_type)
    expiration: float | None = None
    if expires is not None:
        if not isinstance(expires, datetime):
            return None  # relative or text: send_task's own conversions
        expiration = max(0.0, (aware(expires) - aware(ctx.app.now())).total_seconds())
        opts["expiration"] = expiration
    if eta is not None and not isinstance(eta, datetime):
        return None
    parent = ctx.parent
    if (not root_id or not parent_id) and parent:
        if not root_id:
            root_id = parent.request.root_id or parent.request.id
        if not parent_id:
            parent_id = parent.request.id
        if ctx.inherit_priority:
            delivery_info: Any = parent.request.delivery_info
            opts.setdefault("priority", delivery_info.get("priority"))
    given = {  # as_task_v2 represents `args or ()` and `kwargs or {}`
        "argsrepr": fast_saferepr(args or (), ctx.argsrepr_maxsize, ctx.maxlevels),
        "kwargsrepr": fast_saferepr(kwargs or {}, ctx.kwargsrepr_maxsize, ctx.maxlevels),
        "origin": origin,
    }
    if "argsrepr" in opts or "kwargsrepr" in opts or "origin" in opts:
        given = {key: value for key, value in given.items() if key not in opts}
    message = ctx.create_task_message(
        task_id, name, args, kwargs, None, eta, None, None, expires, retries, None,
        maybe_list(link), maybe_list(link_error), reply_to, time_limit, soft_time_limit,
        ctx.sent_event, root_id, parent_id, shadow, None,
        ignore_result=ignore_result, replaced_task_nesting=0, **given, **opts,
    )  # fmt: skip
    if "stamped_headers" in opts:
        for stamp in opts.pop("stamped_headers") or ():
            opts.pop(stamp)
    return Built(message, opts, bool(ignore_result), expiration, eta is not None)
