"""Celery settings of the tasks and workers: late ack, worker-lost handling, prefetch, events."""

from __future__ import annotations

from celery import Celery

from ...broker.facts import REDIS_SCHEMES, broker_scheme
from .result import Result, Status
from .tasks import TaskFacts, names

RELIABLE_BASE = 'base="celery_reliable:ReliableTask"'


def check_acks_late(tasks: list[TaskFacts]) -> Result:
    """An early-acked message is gone once the task starts: a crash mid-task loses it."""
    if not tasks:
        return Result(
            "tasks.acks_late",
            Status.NOTE,
            "no application tasks are registered, so none could be checked",
            "import your task modules in the app module (Celery(include=[...]) or app.autodiscover_tasks())",
        )
    early = [t for t in tasks if not t.acks_late]
    if early:
        return Result(
            "tasks.acks_late",
            Status.FAIL,
            f"{len(early)} of {len(tasks)} tasks ack before they run ({names(early)}): a worker crash or "
            "restart mid-task loses the task",
            f"use {RELIABLE_BASE} (or Celery(task_cls=...)), or set acks_late=True on the task "
            "(app.conf.task_acks_late = True for all)",
        )
    reliable = sum(t.reliable for t in tasks)
    return Result(
        "tasks.acks_late",
        Status.PASS,
        f"all {len(tasks)} tasks ack after they ran ({reliable} ReliableTask)",
    )


def check_worker_lost(tasks: list[TaskFacts]) -> Result:
    """With late ack but no worker-lost handling, Celery acks the message of a killed pool process."""
    exposed = [t for t in tasks if t.acks_late and not t.survives_worker_loss]
    if exposed:
        return Result(
            "tasks.worker_lost",
            Status.FAIL,
            f"{len(exposed)} late-ack tasks are acked when their pool process is killed (OOM, SIGKILL): "
            f"the task is lost ({names(exposed)})",
            f"use {RELIABLE_BASE} (bounded retry on worker loss), or set "
            "app.conf.task_reject_on_worker_lost = True (unbounded redelivery)",
        )
    late = sum(t.acks_late for t in tasks)
    return Result(
        "tasks.worker_lost",
        Status.PASS,
        f"{late} late-ack tasks are sent again when their pool process dies",
    )


def check_prefetch(app: Celery, tasks: list[TaskFacts]) -> Result:
    """Prefetched messages wait unacknowledged behind running tasks: redelivered all at once on a
    crash and, on Redis, counted against the visibility timeout while they wait."""
    multiplier = int(app.conf.worker_prefetch_multiplier)
    if app.conf.get("worker_disable_prefetch") and broker_scheme(app) in REDIS_SCHEMES:  # ignored elsewhere
        return Result("worker.prefetch", Status.PASS, "prefetch disabled (worker_disable_prefetch = True)")
    if multiplier == 1:
        return Result("worker.prefetch", Status.PASS, "worker_prefetch_multiplier = 1: one message held per process")
    if not any(t.acks_late for t in tasks):
        return Result(
            "worker.prefetch",
            Status.NOTE,
            f"worker_prefetch_multiplier = {multiplier}; no late-ack tasks, so reserved messages are acked when run",
        )
    held = "unlimited" if multiplier == 0 else f"{multiplier}"
    return Result(
        "worker.prefetch",
        Status.WARN,
        f"worker_prefetch_multiplier = {multiplier}: each process reserves {held} messages with late ack; they wait "
        "unacknowledged behind long tasks (Redis redelivers them once the visibility timeout passes, "
        "so they run twice)",
        "app.conf.worker_prefetch_multiplier = 1 (the default with ReliableTask unless you set another value)",
    )


def check_events(app: Celery) -> Result:
    """Flower shows task states only from task events."""
    worker_events = bool(app.conf.worker_send_task_events)
    sent_events = bool(app.conf.task_send_sent_event)
    if worker_events and sent_events:
        return Result("worker.events", Status.PASS, "task events on (worker_send_task_events, task_send_sent_event)")
    if not worker_events:
        return Result(
            "worker.events",
            Status.WARN,
            "worker_send_task_events is off: Flower sees no task states unless every worker runs with -E",
            "app.conf.worker_send_task_events = True (or start workers with -E); "
            "app.conf.task_send_sent_event = True to see queued tasks too",
        )
    return Result(
        "worker.events",
        Status.NOTE,
        "task_send_sent_event is off: Flower sees a task only once a worker receives it",
        "app.conf.task_send_sent_event = True",
    )
