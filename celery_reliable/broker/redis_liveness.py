"""Which workers are alive on a Redis broker, and which messages each one holds.

A worker SIGKILLed (an OOM kill, a node lost, a deploy that does not wait) leaves the messages it
held in ``unacked``; kombu gives them back only once the visibility timeout has passed (ten minutes
by default here, an hour in kombu). Here each worker says it is alive and what it holds:

* its main process writes a heartbeat every ``reliable_worker_heartbeat`` seconds into the sorted
  set :data:`ALIVE` (member: the worker's id, score: Redis's own clock), on a connection of its own
  named ``celery_reliable.worker.<id>`` (:func:`client_name`);
* the atomic fetch adds the delivery tag of every message it takes to the worker's *held* set
  (:func:`held_key`) in the same atomic step that records it in ``unacked``; kombu's ack, reject
  and restore remove it.

A worker is lost when its heartbeat is older than three beats and no connection of that name is
open on the server (a process that died closes its connections at once), or when its heartbeat is
older than ``reliable_worker_lost_after`` seconds whatever the server says (a host that vanished
leaves half-open connections behind). A live worker that is merely slow keeps its connection and
its heartbeat (a thread of its own), so it is never taken for lost.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

#: Sorted set of live workers: member = worker id, score = its last heartbeat (Redis time, seconds).
ALIVE = "_reliable.workers.alive"
#: Prefix of a worker's held set (delivery tags it took and has not acked, rejected or given back).
HELD = "_reliable.workers.held."
#: Prefix of the key a worker sets while it gives a lost worker's messages back (one at a time).
RECOVERING = "_reliable.workers.recovering."
#: Prefix of the name of each worker's heartbeat connection.
CLIENT_PREFIX = "celery_reliable.worker."
#: A heartbeat this many beats old, with no connection of the worker's left, means the worker is gone.
FAST_LAPSE_BEATS = 3

#: Writes a heartbeat with the server's clock and keeps the worker's held set from expiring.
#: KEYS: the alive set, the held set. ARGV: the worker id, the held set's expiry (seconds).
HEARTBEAT = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) + tonumber(t[2]) / 1e6, ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return 1
"""

#: The workers whose heartbeat is older than ARGV[1] seconds by the server's clock, with their age.
#: KEYS: the alive set. Returns {id1, age1, id2, age2, ...}.
STALE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local found = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'WITHSCORES')
local out = {}
for i = 1, #found, 2 do
  out[#out + 1] = found[i]
  out[#out + 1] = tostring(now - tonumber(found[i + 1]))
end
return out
"""


def _exec(client: Any, *args: Any) -> Any:
    """Run a command with its keys exactly as given (kombu's client adds its key prefix to some
    commands only; here keys always carry the prefix already)."""
    import redis

    execute: Any = redis.Redis.execute_command
    return execute(client, *args)


def new_worker_id() -> str:
    """A worker id unique across hosts and restarts (also usable in a Redis client name)."""
    host = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in socket.gethostname())[:40]
    return f"{host}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def held_key(worker_id: str) -> str:
    return HELD + worker_id


def client_name(worker_id: str) -> str:
    return CLIENT_PREFIX + worker_id


def name_connection(client: Any, worker_id: str) -> None:
    """Name ``client``'s connections after the worker (now, and when they reconnect)."""
    name = client_name(worker_id)
    client.connection_pool.connection_kwargs["client_name"] = name
    _exec(client, "CLIENT SETNAME", name)


def beat(client: Any, prefix: str, worker_id: str, held_expiry: float) -> None:
    """Write one heartbeat of ``worker_id`` (``client``: a redis-py client of the broker)."""
    keys = (prefix + ALIVE, prefix + held_key(worker_id))
    _exec(client, "EVAL", HEARTBEAT, 2, *keys, worker_id, max(1, int(held_expiry)))


def stale(client: Any, prefix: str, older_than: float) -> list[tuple[str, float]]:
    """(worker id, seconds since its heartbeat) of every worker silent for more than ``older_than``."""
    reply = _exec(client, "EVAL", STALE, 1, prefix + ALIVE, repr(float(older_than)))
    found = []
    for i in range(0, len(reply) - 1, 2):
        name = reply[i].decode() if isinstance(reply[i], bytes) else str(reply[i])
        age = reply[i + 1].decode() if isinstance(reply[i + 1], bytes) else str(reply[i + 1])
        found.append((name, float(age)))
    return found


def connected_workers(client: Any) -> set[str] | None:
    """Ids of the workers with a heartbeat connection open on the server; None if ``CLIENT LIST``
    is refused (some managed Redis services rename or forbid it)."""
    try:
        clients = _exec(client, "CLIENT LIST")
    except Exception:
        return None
    names = (str(entry.get("name") or "") for entry in clients if isinstance(entry, dict))
    return {name[len(CLIENT_PREFIX) :] for name in names if name.startswith(CLIENT_PREFIX)}


def forget(client: Any, prefix: str, worker_id: str) -> None:
    """Remove a worker whose messages were all given back (its heartbeat and its held set)."""
    _exec(client, "ZREM", prefix + ALIVE, worker_id)
    _exec(client, "DEL", prefix + held_key(worker_id))


def take_recovery(client: Any, prefix: str, worker_id: str, seconds: float) -> bool:
    """Whether this worker may give back ``worker_id``'s messages now (one worker at a time)."""
    return bool(_exec(client, "SET", prefix + RECOVERING + worker_id, os.getpid(), "NX", "PX", int(seconds * 1000)))


def held(client: Any, prefix: str, worker_id: str) -> list[bytes]:
    """The delivery tags ``worker_id`` holds."""
    return sorted(_exec(client, "SMEMBERS", prefix + held_key(worker_id)))


def leave(client: Any, prefix: str, worker_id: str) -> None:
    """A worker that stops cleanly (its messages given back by kombu) is no longer alive."""
    _exec(client, "ZREM", prefix + ALIVE, worker_id)
