"""``ReliableCelery``: an app whose tasks are ReliableTasks and whose ``send_task`` can use publish()."""

from __future__ import annotations

from typing import Any

from celery import Celery

from .send.publish_all import celery_path, maybe_publish


class ReliableCelery(Celery):
    """A Celery app with :class:`~celery_reliable.ReliableTask` as its task class.

    With ``reliable_publish_all = True``, ``app.send_task()`` goes through
    :func:`celery_reliable.publish` like ``delay()``/``apply_async()`` do (retried, confirmed,
    kept for the relay when the broker is away), so messages sent by name to tasks of another
    code base are covered too. The result is an ``AsyncResult`` with the
    :class:`~celery_reliable.PublishResult` in ``.reliable``.
    """

    task_cls = "celery_reliable.worker.task:ReliableTask"

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, *positional: Any, **options: Any) -> Any:
        # countdown, eta, ... given by position are rare: Celery's own path takes them as they are
        result = None if positional else maybe_publish(self, name, args, kwargs, options)
        if result is None:
            with celery_path():
                return super().send_task(name, args, kwargs, *positional, **options)
        async_result = self.AsyncResult(result.task_id)
        async_result.reliable = result  # type: ignore[attr-defined]
        return async_result
