"""The probe queue on the application's broker: declared by the probe workers, counted, given
back after a whole-worker kill (Redis), and deleted at the end. Only the probe queue (a name
of its own) and its exchange are ever touched."""

from __future__ import annotations

import json
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from ...broker.facts import REDIS_SCHEMES, broker_scheme
from ...broker.redis_wire import stage_list

#: Bound on the HSCAN rounds over Redis's ``unacked`` hash (1000 entries a round).
SCAN_ROUNDS = 10_000


def is_redis(app: Celery) -> bool:
    return broker_scheme(app) in REDIS_SCHEMES


def probe_queue(name: str) -> Queue:
    """The queue as Celery creates it for ``-Q name``: a direct exchange of the same name."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def _ours(value: Any, queue: str) -> bool:
    try:
        _payload, exchange, routing_key = json.loads(value)
    except (TypeError, ValueError):
        return False
    return bool(routing_key == queue or exchange == queue)


def _unacked_tags(channel: Any, queue: str) -> list[Any]:
    client = channel.client
    tags: list[Any] = []
    cursor = 0
    for _ in range(SCAN_ROUNDS):
        cursor, items = client.hscan(channel.unacked_key, cursor, count=1000)
        tags += [tag for tag, value in items.items() if _ours(value, queue)]
        if not cursor:
            break
    return tags


def give_back_unacked(app: Celery, queue: str) -> int:
    """Redis: put the probe queue's unacknowledged messages back in the queue; how many.

    Call it only while no probe worker is alive. It does for the probe queue at once what the
    broker's visibility-timeout sweep does later (kombu's own ``restore_by_tag``, which marks
    them redelivered). Other queues' messages are left alone.
    """
    if not is_redis(app):
        return 0  # RabbitMQ requeued them when the killed worker's connection closed
    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        tags = _unacked_tags(channel, queue)
        for tag in tags:
            channel.qos.restore_by_tag(tag, leftmost=True)
        return len(tags)


def depth(app: Celery, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of the probe queue; unacknowledged is counted on Redis only."""
    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        if is_redis(app):
            client = channel.client
            lists = [channel._q_for_pri(queue, pri) for pri in channel.priority_steps]
            lists.append(stage_list(queue, channel.sep))  # a message moved by a fetch whose worker died
            ready = sum(int(client.llen(name)) for name in lists)
            return ready, len(_unacked_tags(channel, queue))
        try:
            _name, count, _consumers = channel.queue_declare(queue=queue, passive=True)
        except Exception:  # not declared (never started, or already deleted)
            return 0, 0
        return int(count), 0


def delete_queue(app: Celery, queue: str) -> None:
    """Delete the probe queue, its messages and its exchange (Redis: lists and binding keys)."""
    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        bound = probe_queue(queue)(channel)
        if is_redis(app):
            client = channel.client
            for tag in _unacked_tags(channel, queue):
                client.zrem(channel.unacked_index_key, tag)
                client.hdel(channel.unacked_key, tag)
            client.delete(stage_list(queue, channel.sep))
            bound.declare()  # kombu deletes the lists and the bindings this channel declared
            bound.delete()  # (on Redis an exchange is nothing but its binding keys)
            return
        bound.delete()
        bound.exchange.delete()
