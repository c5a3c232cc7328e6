"""Keep the library's own beat tasks out of the INFO log when a pass did nothing.

Beat runs ``celery_reliable.relay`` every few seconds (and ``celery_reliable.cleanup`` now and
then); Celery's worker writes "received" and "succeeded" INFO lines for every run, which bury the
lines that matter. This filter, on the two Celery loggers that write them, lowers both to DEBUG
for these tasks, unless the run did something (the task then returns a result other than
``None`` and the relay logs its own INFO line). With the worker at ``-l debug`` they still show.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS

#: The library's beat tasks: quiet in the log and, unless ``reliable_beat_task_events``, in task events.
LIBRARY_TASKS = frozenset({"celery_reliable.relay", "celery_reliable.cleanup"})
#: The Celery loggers of the "received" and "succeeded" lines.
LOGGERS = ("celery.worker.strategy", "celery.app.trace")


class IdleBeatTaskFilter(logging.Filter):
    """Lower Celery's received/succeeded lines of an idle library beat task to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        data = record.args
        if record.levelno != logging.INFO or record.msg not in (LOG_RECEIVED, LOG_SUCCESS):
            return True
        if not isinstance(data, Mapping) or data.get("name") not in LIBRARY_TASKS:
            return True
        if record.msg == LOG_SUCCESS and data.get("return_value") != "None":
            return True  # the pass did something: keep the line
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_beat_tasks() -> None:
    """Add the filter to Celery's loggers, once per process (forked pool processes inherit it)."""
    for name in LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, IdleBeatTaskFilter) for f in target.filters):
            target.addFilter(IdleBeatTaskFilter())
