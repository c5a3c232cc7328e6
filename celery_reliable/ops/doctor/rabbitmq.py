"""RabbitMQ: the app's queues (durable? quorum or classic?), persistent delivery, publisher confirms.

AMQP's passive declare says whether a queue exists but not how it was declared, and the
management plugin may be off. So a queue's properties are read by declaring it on a throwaway
channel with an ``x-queue-type`` no server supports: RabbitMQ compares an existing queue's
durability and arguments first and refuses with PRECONDITION_FAILED naming the first one that
differs and its current value; a queue that does not exist is refused for the unknown type, so
the probe can never create a queue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu import Queue

from .result import Result, Status

#: A queue type no RabbitMQ supports: a declare carrying it can only fail.
PROBE_TYPE = "celery-reliable-doctor-probe"
#: Declares per queue before giving up (one per differing argument).
MAX_PROBES = 16
QUORUM_FIX = (
    'app.conf.task_default_queue_type = "quorum" (Celery >= 5.5) or Queue(name, queue_arguments='
    '{"x-queue-type": "quorum"}); a queue cannot change type: drain and delete it, or use a new name'
)

_MISMATCH = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)'.*?but current is "
    r"(?:the value '(?P<value>[^']*)' of type '(?P<type>\w+)'|'(?P<plain>[^']*)'|(?P<none>none))"
)
_CONVERT: dict[str, Any] = {
    "longstr": str,
    "shortstr": str,
    "bool": lambda text: text == "true",
    "float": float,
    "double": float,
}


@dataclass(frozen=True)
class QueueFacts:
    """A queue as the broker holds it; ``kind`` is None when the probe could not tell."""

    exists: bool
    durable: bool = True
    auto_delete: bool = False
    kind: str | None = None
    note: str = ""


def _value(text: str, kind: str) -> Any:
    convert = _CONVERT.get(kind)
    if convert is not None:
        return convert(text)
    try:
        return int(text)
    except ValueError:
        return text


def _close(channel: Any) -> None:
    try:
        channel.close()
    except Exception:  # already closed by the broker's channel error
        pass


def probe_queue(connection: Any, name: str) -> QueueFacts:
    """Durability, auto-delete and type of queue ``name``, read without changing or creating it."""
    from amqp.exceptions import NotFound, PreconditionFailed

    channel = connection.channel()
    try:
        channel.queue_declare(queue=name, passive=True)
    except NotFound:
        return QueueFacts(exists=False)
    finally:
        _close(channel)
    durable, auto_delete = True, False
    arguments: dict[str, Any] = {}
    last = ""
    for _ in range(MAX_PROBES):
        channel = connection.channel()
        try:
            channel.queue_declare(
                queue=name,
                durable=durable,
                auto_delete=auto_delete,
                arguments={**arguments, "x-queue-type": PROBE_TYPE},
            )
        except PreconditionFailed as exc:
            last = str(exc)
            if "unsupported queue type" in last:  # deleted since the passive declare
                return QueueFacts(exists=False)
            match = _MISMATCH.search(last)
            if match is None:
                break
            arg, plain = match["arg"], match["plain"]
            current = match["value"] if match["value"] is not None else plain
            if arg == "durable":
                durable = plain == "true"
            elif arg == "auto_delete":
                auto_delete = plain == "true"
            elif arg == "x-queue-type":
                return QueueFacts(True, durable, auto_delete, "classic" if match["none"] else current)
            elif match["none"]:
                arguments.pop(arg, None)
            else:
                arguments[arg] = _value(current or "", match["type"] or "longstr")
        else:  # pragma: no cover - a server accepting an unknown queue type
            last = "the probe declare was accepted"
            break
        finally:
            _close(channel)
    return QueueFacts(True, durable, auto_delete, None, note=last)


def _declared_kind(queue: Queue) -> str:
    return str((queue.queue_arguments or {}).get("x-queue-type", "classic"))


def check_queue(queue: Queue, facts: QueueFacts) -> Result:
    """Durable quorum: PASS; classic: WARN; transient or auto-delete: FAIL."""
    check = f"rabbitmq.queue {queue.name}"
    declared = _declared_kind(queue)
    if not facts.exists:
        if not queue.durable:
            return Result(
                check,
                Status.FAIL,
                "not declared yet; the app declares it non-durable: a RabbitMQ restart deletes it with its messages",
                f"declare it durable: Queue({queue.name!r}, durable=True, ...)",
            )
        status = Status.NOTE if declared == "quorum" else Status.WARN
        return Result(
            check,
            status,
            f"not declared yet; a worker or the first publish declares it as a durable {declared} queue",
            "" if declared == "quorum" else QUORUM_FIX,
        )
    if not facts.durable:
        return Result(
            check,
            Status.FAIL,
            "non-durable queue: a RabbitMQ restart deletes it and every message in it",
            f"delete it and let Celery declare it durable (Queue({queue.name!r}, durable=True)), then restart workers",
        )
    if facts.auto_delete:
        return Result(
            check,
            Status.FAIL,
            "auto-delete queue: it is deleted when its last worker stops, and messages sent meanwhile are lost",
            f"delete it and declare it with auto_delete=False: Queue({queue.name!r}, auto_delete=False)",
        )
    if facts.kind is None:
        return Result(check, Status.NOTE, f"durable; queue type not determined ({facts.note})")
    if facts.kind != declared:
        return Result(
            check,
            Status.FAIL,
            f"the broker has a {facts.kind} queue but the app declares it {declared}: workers fail to start "
            "(PRECONDITION_FAILED inequivalent arg 'x-queue-type')",
            f"make the app's definition match ({facts.kind}), or drain and delete the queue so it is declared anew",
        )
    if facts.kind == "quorum":
        return Result(check, Status.PASS, "durable quorum queue: replicated, messages on disk before confirmed")
    return Result(
        check,
        Status.WARN,
        f"durable {facts.kind} queue: RabbitMQ recommends quorum queues for data safety (replicated, "
        "fsynced before confirm, poison-message handling)",
        QUORUM_FIX,
    )


def check_delivery_mode(app: Celery) -> Result:
    """Transient messages are dropped by a broker restart even from a durable queue."""
    mode = app.conf.task_default_delivery_mode
    if mode in (2, "persistent"):
        return Result("rabbitmq.delivery_mode", Status.PASS, "messages are sent persistent (delivery_mode 2)")
    return Result(
        "rabbitmq.delivery_mode",
        Status.FAIL,
        f"task_default_delivery_mode = {mode!r}: messages are transient, a RabbitMQ restart drops them",
        'app.conf.task_default_delivery_mode = "persistent"',
    )


def check_confirm_publish(app: Celery) -> Result:
    """Without confirms a message the broker refuses (full queue, alarm) is dropped without an error."""
    options = app.conf.broker_transport_options or {}
    if options.get("confirm_publish"):
        return Result("rabbitmq.confirm_publish", Status.PASS, "publisher confirms on (confirm_publish)")
    return Result(
        "rabbitmq.confirm_publish",
        Status.WARN,
        "confirm_publish is off: apply_async() and self.retry() return before RabbitMQ has the message, so "
        "one it refuses (queue full, resource alarm) is lost without an error; celery_reliable.publish() "
        "confirms on its own",
        'app.conf.broker_transport_options = {**app.conf.broker_transport_options, "confirm_publish": True}',
    )


def check_delayed_delivery(app: Celery) -> Result | None:
    """Quorum queues have a static prefetch: a countdown/eta message (a retry included) held by a
    worker blocks its slot until due, unless Celery's native delayed delivery keeps it in the
    broker, which needs a non-direct exchange. None when the app declares no quorum queue."""
    quorum = [q for q in app.amqp.queues.values() if _declared_kind(q) == "quorum"]
    if not quorum:
        return None
    direct = [q for q in quorum if q.exchange is None or q.exchange.type == "direct"]
    if direct:
        shown = ", ".join(q.name for q in direct[:5])
        return Result(
            "rabbitmq.delayed_delivery",
            Status.WARN,
            f"quorum queue(s) {shown} on a direct exchange: Celery's native delayed delivery is off, so a "
            "countdown/eta message or a retry waits in the worker and holds one of its (static) prefetch "
            "slots until due, and past consumer_timeout it is delivered again",
            'app.conf.task_default_exchange_type = "topic" (or Queue(..., exchange=Exchange(name, type="topic")));'
            " an existing exchange cannot change type: use a new exchange name",
        )
    return Result(
        "rabbitmq.delayed_delivery",
        Status.PASS,
        "quorum queues on non-direct exchanges: countdown/eta messages and retries wait in the broker "
        "(Celery's native delayed delivery)",
    )


def _queue_result(connection: Any, queue: Queue) -> Result:
    try:
        facts = probe_queue(connection, queue.name)
    except Exception as exc:  # no permission on the queue, an exclusive queue of another connection...
        return Result(f"rabbitmq.queue {queue.name}", Status.NOTE, f"could not read the queue: {exc}")
    return check_queue(queue, facts)


def run(app: Celery, connection: Any) -> list[Result]:
    """Every RabbitMQ check: one per app queue, then the publishing settings."""
    results = [_queue_result(connection, queue) for queue in app.amqp.queues.values()]
    delayed = check_delayed_delivery(app)
    return [*results, *([delayed] if delayed else []), check_delivery_mode(app), check_confirm_publish(app)]
