"""Recovery in seconds on Redis: each worker says it is alive; live workers give back a lost one's messages.

A consumer step of every worker that fetches atomically (see :mod:`celery_reliable.broker.redis_liveness`):

* a thread of the worker's main process writes its heartbeat every ``reliable_worker_heartbeat``
  seconds on a connection of its own (a busy pool, a long task or a blocked event loop do not
  stop it);
* every beat, the worker's event loop looks for workers whose heartbeat is older than three beats.
  One whose connection is gone from the server died; one silent for ``reliable_worker_lost_after``
  seconds is lost whatever the server says. Its messages go back to the front of their queues
  through kombu's own ``restore_by_tag``: a WATCH/MULTI transaction that moves a message out of
  ``unacked`` once, so several workers noticing at once give each message back once.

The visibility timeout stays the last resort (a worker that beats but never acks).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, bootsteps

from ..broker import redis_liveness as live
from ..broker.facts import fetch_transport_off, visibility_timeout
from ..config import get_settings

logger = logging.getLogger(__name__)

#: How long one worker keeps the right to give back a lost worker's messages (others wait).
RECOVERY_LOCK = 30.0


class Heartbeat(threading.Thread):
    """Writes the worker's heartbeat until stopped; reconnects after an error, on the next beat."""

    def __init__(self, app: Celery, worker_id: str, interval: float, held_expiry: float) -> None:
        super().__init__(name="celery_reliable-heartbeat", daemon=True)
        self.app = app
        self.worker_id = worker_id
        self.interval = interval
        self.held_expiry = held_expiry
        self.stopped = threading.Event()
        self.beats = 0

    def run(self) -> None:
        connection: Any = None
        failing = False
        while not self.stopped.is_set():
            try:
                if connection is None:
                    connection = self.app.connection_for_write()
                    channel = connection.default_channel
                    client = channel.client
                    live.name_connection(client, self.worker_id)
                    prefix = getattr(channel, "global_keyprefix", "") or ""
                live.beat(client, prefix, self.worker_id, self.held_expiry)
                self.beats += 1
                if failing:
                    logger.info("celery_reliable: heartbeat of worker %s written again", self.worker_id)
                failing = False
            except Exception as exc:
                if not failing:
                    logger.warning("celery_reliable: heartbeat of worker %s not written (%r)", self.worker_id, exc)
                failing = True
                connection = self._close(connection)
            self.stopped.wait(self.interval)
        self._close(connection)

    @staticmethod
    def _close(connection: Any) -> None:
        if connection is not None:
            try:
                connection.release()
            except Exception:
                logger.debug("closing the heartbeat connection failed", exc_info=True)

    def stop(self) -> None:
        self.stopped.set()


class Liveness(bootsteps.StartStopStep):
    """Consumer step: this worker's heartbeat, and recovery of the messages of workers that are gone."""

    name = "celery_reliable.liveness"
    requires = ("celery.worker.consumer.connection:Connection",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self.heartbeat: Heartbeat | None = None
        self.tref: Any = None
        super().__init__(c, **kwargs)

    def include_if(self, c: Any) -> bool:
        # celery_reliable's consumer (it names its worker), fetching atomically (it tracks what it takes)
        settings = get_settings(c.app)
        return (
            settings.worker_heartbeat is not None
            and hasattr(c, "reliable_worker_id")
            and fetch_transport_off(c.app, settings.redis_atomic_fetch) is None
        )

    def start(self, c: Any) -> None:
        settings = get_settings(c.app)
        interval = float(settings.worker_heartbeat or 1.0)
        worker_id = c.reliable_worker_id
        held_expiry = max(visibility_timeout(c.app) or 0.0, 2 * settings.worker_lost_after)
        if self.heartbeat is None or not self.heartbeat.is_alive():
            self.heartbeat = Heartbeat(c.app, worker_id, interval, held_expiry)
            self.heartbeat.start()
        self.tref = c.timer.call_repeatedly(interval, self.recover, (c,))

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat.join(timeout=5)
            self.heartbeat = None
        try:  # a worker that stops cleanly gave its messages back already: say it is gone
            channel = c.connection.default_channel
            prefix = getattr(channel, "global_keyprefix", "") or ""
            with channel.conn_or_acquire() as client:
                live.leave(client, prefix, c.reliable_worker_id)
        except Exception:
            logger.debug("celery_reliable: could not remove worker %s from the live set", c.reliable_worker_id)

    def recover(self, c: Any) -> None:
        try:
            give_back_lost(c.app, c.connection.default_channel, c.reliable_worker_id)
        except Exception:  # the broker may be away: the next beat tries again
            logger.warning("celery_reliable: looking for lost workers failed", exc_info=True)


def give_back_lost(app: Celery, channel: Any, own_id: str) -> int:
    """Give back the messages of every worker that is gone; returns how many were given back."""
    # A client on the channel's pool: its own client holds the connection the fetch blocks on.
    with channel.conn_or_acquire() as client:
        return _give_back_lost(app, channel, client, own_id)


def _give_back_lost(app: Celery, channel: Any, client: Any, own_id: str) -> int:
    settings = get_settings(app)
    interval = float(settings.worker_heartbeat or 1.0)
    prefix = getattr(channel, "global_keyprefix", "") or ""
    silent = [(wid, age) for wid, age in live.stale(client, prefix, live.FAST_LAPSE_BEATS * interval) if wid != own_id]
    if not silent:
        return 0
    connected: set[str] | None = None
    asked = False
    given = 0
    for worker_id, age in silent:
        if age < settings.worker_lost_after:
            if not asked:
                connected, asked = live.connected_workers(client), True
            if connected is None or worker_id in connected:
                continue  # alive but slow, or the server cannot say yet
        if not live.take_recovery(client, prefix, worker_id, RECOVERY_LOCK):
            continue  # another worker is on it
        tags = live.held(client, prefix, worker_id)
        for tag in tags:
            channel.qos.restore_by_tag(tag, leftmost=False)  # kombu's own restore: once, to the queue's front
        live.forget(client, prefix, worker_id)
        given += len(tags)
        logger.warning(
            "celery_reliable: worker %s is gone (heartbeat %.1fs old, %s); %d message(s) it held given back",
            worker_id, age, "connection closed" if age < settings.worker_lost_after else "silent too long", len(tags),
        )  # fmt: skip
    return given
