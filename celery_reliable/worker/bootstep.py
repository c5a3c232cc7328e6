"""Worker-side set-up that has to wait for the command line to be parsed."""

from __future__ import annotations

import gc
import logging
from typing import Any

from celery import bootsteps

from ..config import get_settings
from .quiet import LIBRARY_TASKS, quiet_beat_tasks

logger = logging.getLogger(__name__)

#: Celery's default prefetch multiplier (also what ``celery worker`` passes when not told).
DEFAULT_PREFETCH = 4


class ReliableWorkerStep(bootsteps.StartStopStep):
    """Prefetch multiplier 1 for ``celery worker``, and a start-up line saying what is in force.

    Also keeps the library's beat tasks quiet: their idle runs log at DEBUG, and they send task
    events only with ``reliable_beat_task_events``.

    ``celery worker`` reads ``--prefetch-multiplier``'s default from the configuration before
    the app (and so ReliableTask) is set up; this step runs after that, before the consumer
    is built.

    It also loads the database driver and sets up the ORM mappings before the pool processes are
    forked (see :func:`prepare_store`), then freezes what is loaded (:func:`freeze_shared_objects`).
    """

    name = "celery_reliable.worker"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        settings = get_settings(worker.app)
        quiet_beat_tasks()
        if settings.beat_task_events:  # the tasks are declared with send_events=False
            for name in LIBRARY_TASKS:
                task = worker.app.tasks.get(name)
                if task is not None:
                    task.send_events = True
        self.changed_prefetch = False
        if settings.apply_transport_defaults and worker.prefetch_multiplier == DEFAULT_PREFETCH:
            worker.prefetch_multiplier = 1
            self.changed_prefetch = True
        prepare_store(worker.app)
        if settings.worker_gc_freeze and forks_a_pool(worker):
            freeze_shared_objects()
        super().__init__(worker, **kwargs)

    def start(self, worker: Any) -> None:
        options = worker.app.conf.broker_transport_options or {}
        logger.info(
            "celery_reliable: prefetch multiplier %s%s, visibility timeout %s",
            worker.prefetch_multiplier,
            " (set by celery_reliable)" if self.changed_prefetch else "",
            options.get("visibility_timeout", "broker default"),
        )


def prepare_store(app: Any) -> None:
    """Load what the reliability tables need (the database driver and its SQLAlchemy dialect, the
    ORM mappings) in the worker's main process, before its pool processes are forked.

    The main process needs them anyway for the schema check at start-up, and pool processes for
    failure rows and idempotency marks; loaded after the fork, every process held its own copy
    (about 10 MiB for psycopg), loaded before, the pool processes share the main process's pages.
    No connection is opened: each pool process still opens its own (``worker_process_init``).
    A URL that cannot work is left to the start-up check, which logs why.
    """
    from sqlalchemy.orm import configure_mappers

    from ..exceptions import StoreError
    from ..store import models  # noqa: F401  (the mapped classes)
    from ..store.engine import get_engine

    try:
        get_engine(app)
    except StoreError:
        return
    configure_mappers()


def forks_a_pool(worker: Any) -> bool:
    """Whether the worker's pool forks processes from this one (prefork), by the pool's class."""
    pool = getattr(worker, "pool_cls", None)
    module = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    return "prefork" in str(module)


def freeze_shared_objects() -> None:
    """Move every object tracked by the garbage collector to its permanent generation.

    A pool process forked from this one shares its pages until it writes to them, and a garbage
    collection writes to every object it examines: without this, each pool process soon holds
    its own copy of most of what the main process loaded (Celery, kombu, SQLAlchemy, the
    driver). Frozen objects are never examined again, here or in the pool processes; this is
    what Python's documentation of :func:`gc.freeze` advises before a fork. The cost: a cycle
    among objects alive now that becomes garbage later is not collected (what exists at this
    point is modules, classes, the app and its configuration, which live as long as the worker).
    """
    gc.collect()
    gc.freeze()
    logger.debug("celery_reliable: %d objects frozen before the pool forks", gc.get_freeze_count())
