"""The restore sweep at ``reliable_restore_interval`` on kombu before 5.7.

A worker killed outright leaves the messages it held in Redis's ``unacked`` hash; a sweep of the
live workers gives them back once the visibility timeout has passed. kombu 5.7 runs that sweep
at the period celery_reliable sets; kombu 5.5 and 5.6 scan only every 100 s (a fixed 10 s timer
that scans on every tenth call). This consumer step adds a scan every
``reliable_restore_interval`` seconds there, through kombu's own ``QoS.restore_visible`` (its
lock and transactions unchanged).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from ..broker.facts import REDIS_SCHEMES, broker_scheme, kombu_sweeps_on_its_own
from ..config import get_settings

logger = logging.getLogger(__name__)


class RestoreSweep(bootsteps.StartStopStep):
    """Consumer step: kombu's restore sweep every ``reliable_restore_interval`` seconds (kombu < 5.7)."""

    name = "celery_reliable.restore_sweep"
    requires = ("celery.worker.consumer.connection:Connection",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self.tref: Any = None
        super().__init__(c, **kwargs)

    def include_if(self, c: Any) -> bool:
        return broker_scheme(c.app) in REDIS_SCHEMES and not kombu_sweeps_on_its_own()

    def start(self, c: Any) -> None:
        interval = get_settings(c.app).restore_interval
        self.tref = c.timer.call_repeatedly(interval, self.sweep, (c,))

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop

    def sweep(self, c: Any) -> None:
        try:
            channel = c.connection.default_channel
            channel.qos.restore_visible(num=channel.unacked_restore_limit, interval=1)
        except Exception:  # the connection may be down: the next sweep tries again
            logger.warning("celery_reliable: restore sweep failed", exc_info=True)
