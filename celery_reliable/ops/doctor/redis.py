"""The Redis server behind the broker: persistence, eviction, replicas.

Settings are read with ``CONFIG GET``; managed services often refuse it, so ``INFO`` (which they
usually allow) fills in what it can, and the rest is reported as a note instead of a guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .result import Result, Status

PERSIST = "persist it in redis.conf too (or CONFIG REWRITE)"


@dataclass
class RedisFacts:
    """What the server said; ``config`` is None when ``CONFIG GET`` was refused."""

    config: dict[str, str] | None
    info: dict[str, Any] = field(default_factory=dict)
    refused: str = ""

    def setting(self, name: str) -> str | None:
        return None if self.config is None else self.config.get(name)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_facts(client: Any) -> RedisFacts:
    """``CONFIG GET`` the settings that matter, and ``INFO`` (persistence, memory, replication)."""
    from redis.exceptions import ResponseError

    facts = RedisFacts(config=None)
    try:
        config: dict[str, str] = {}
        for name in ("appendonly", "appendfsync", "save", "maxmemory", "maxmemory-policy"):
            for key, value in dict(client.config_get(name)).items():
                config[_text(key)] = _text(value)
        facts.config = config
    except ResponseError as exc:  # unknown command (renamed away) or NOPERM (ACL)
        facts.refused = str(exc)
    for section in ("server", "persistence", "memory", "replication"):
        try:
            facts.info.update(client.info(section))
        except ResponseError:
            continue
    return facts


def _refused(facts: RedisFacts) -> str:
    return f"CONFIG GET is not allowed on this server ({facts.refused})"


def check_persistence(facts: RedisFacts, ledger: bool = False) -> Result:
    """Without AOF or snapshots a restart of Redis empties every queue.

    ``ledger``: every message of the app goes through the outbox (``reliable_outbox_only``) and the
    delivery ledger sends again what Redis loses (``reliable_reconcile_after``): then a Redis
    without persistence delays messages instead of losing them.
    """
    appendonly = facts.setting("appendonly")
    aof = appendonly == "yes" if appendonly is not None else _aof_from_info(facts)
    fix_aof = f"redis-cli CONFIG SET appendonly yes; {PERSIST}: appendonly yes"
    if aof is None:
        return Result(
            "redis.persistence",
            Status.NOTE,
            f"{_refused(facts)} and INFO persistence is unavailable: persistence unknown",
            "check in your provider's console that AOF persistence is on",
        )
    if aof:
        return Result("redis.persistence", Status.PASS, "AOF persistence on (appendonly yes)")
    save = facts.setting("save")
    if save:
        return Result(
            "redis.persistence",
            Status.WARN,
            f"AOF off, RDB snapshots only (save {save!r}): a crash of Redis loses every message "
            "queued since the last snapshot",
            fix_aof,
        )
    if save is None:
        return Result(
            "redis.persistence",
            Status.WARN,
            f"AOF off (INFO); {_refused(facts)}, so RDB snapshots are unknown: without them a restart "
            "of Redis loses every queued message",
            "turn AOF persistence on in your provider's console",
        )
    if ledger:
        return Result(
            "redis.persistence",
            Status.WARN,
            "no persistence (appendonly no, save ''): a restart of Redis empties the queues, and every message "
            "goes through the outbox, so the delivery ledger sends each again (reliable_reconcile_after after "
            "it was sent: a delay, not a loss). Not covered: Celery's own messages (retries, chords, beat), and "
            "anything sent with publish() or apply_async",
            fix_aof,
        )
    return Result(
        "redis.persistence",
        Status.FAIL,
        "no persistence (appendonly no, save ''): a restart of Redis loses every queued message",
        fix_aof + " (or send every message through the outbox with the delivery ledger: reliable_outbox_only)",
    )


def _aof_from_info(facts: RedisFacts) -> bool | None:
    value = facts.info.get("aof_enabled")
    return None if value is None else bool(int(value))


def check_appendfsync(facts: RedisFacts) -> Result | None:
    """How much an acknowledged publish can lose with AOF on; None when AOF is off (see persistence)."""
    appendonly = facts.setting("appendonly")
    aof = appendonly == "yes" if appendonly is not None else _aof_from_info(facts)
    if not aof:
        return None
    fsync = facts.setting("appendfsync")
    fix = f"redis-cli CONFIG SET appendfsync always; {PERSIST}: appendfsync always"
    if fsync is None:
        return Result(
            "redis.appendfsync",
            Status.NOTE,
            f"{_refused(facts)}: appendfsync unknown",
            "check in your provider's console how often the AOF is fsynced",
        )
    if fsync == "always":
        return Result("redis.appendfsync", Status.PASS, "appendfsync always: a write is on disk before Redis replies")
    if fsync == "everysec":
        return Result(
            "redis.appendfsync",
            Status.WARN,
            "appendfsync everysec: a crash of the machine (power loss, kernel panic) loses up to about 1 s "
            "of accepted messages; a crash of the redis-server process alone loses none",
            fix + " (costs one fsync per write)",
        )
    return Result(
        "redis.appendfsync",
        Status.WARN,
        f"appendfsync {fsync}: the OS writes the AOF to disk when it chooses (often every 30 s); a crash "
        "of the machine loses what was not yet written",
        fix,
    )


def check_maxmemory_policy(facts: RedisFacts) -> Result:
    """An evicting policy deletes queue keys when Redis is full: messages vanish without an error."""
    policy = facts.setting("maxmemory-policy") or _info_text(facts, "maxmemory_policy")
    limit_text = facts.setting("maxmemory") or _info_text(facts, "maxmemory")
    fix = f"redis-cli CONFIG SET maxmemory-policy noeviction; {PERSIST}: maxmemory-policy noeviction"
    if policy is None:
        return Result(
            "redis.maxmemory_policy",
            Status.NOTE,
            f"{_refused(facts)} and INFO memory is unavailable: eviction policy unknown",
            "check in your provider's console that maxmemory-policy is noeviction",
        )
    if policy == "noeviction":
        return Result(
            "redis.maxmemory_policy",
            Status.PASS,
            "maxmemory-policy noeviction: a full Redis refuses new messages instead of dropping queued ones",
        )
    limit = int(limit_text or 0)
    if limit == 0:
        return Result(
            "redis.maxmemory_policy",
            Status.WARN,
            f"maxmemory-policy {policy} with no maxmemory limit: nothing is evicted today, but once a limit "
            "is set queued messages can be evicted",
            fix,
        )
    return Result(
        "redis.maxmemory_policy",
        Status.FAIL,
        f"maxmemory-policy {policy} (maxmemory {limit} bytes): when Redis is full it deletes keys, "
        "queues included, and their messages are lost without an error",
        fix,
    )


def _info_text(facts: RedisFacts, key: str) -> str | None:
    value = facts.info.get(key)
    return None if value is None else _text(value)


def check_replicas(facts: RedisFacts, wait_replicas: int = 0) -> Result:
    """One copy of the data: losing the machine or its disk loses the queues. ``wait_replicas`` is
    ``reliable_redis_wait_replicas``: publish() fails every send while fewer replicas are connected."""
    role = _info_text(facts, "role")
    if role is None:
        return Result("redis.replicas", Status.NOTE, "INFO replication is unavailable: replicas unknown")
    if role != "master":
        return Result(
            "redis.replicas",
            Status.WARN,
            f"the broker URL points at a Redis {role}: it refuses writes, and its data lags the primary",
            "point broker_url at the primary (or use sentinel:// URLs)",
        )
    count = int(facts.info.get("connected_slaves", 0))
    if count < wait_replicas:
        return Result(
            "redis.replicas",
            Status.FAIL,
            f"reliable_redis_wait_replicas = {wait_replicas} but {count} replica(s) connected: every publish() "
            "counts as failed and its message waits in the pending table",
            f"connect {wait_replicas - count} more replica(s), or lower reliable_redis_wait_replicas",
        )
    if count == 0:
        return Result(
            "redis.replicas",
            Status.NOTE,
            "no replicas: losing this machine or its disk loses every queued message",
            "add a replica (replicaof) with Sentinel or a managed failover; replication is asynchronous, "
            "so keep persistence on the primary as well",
        )
    waits = (
        f"publish() waits for {wait_replicas} of them (reliable_redis_wait_replicas)"
        if wait_replicas
        else "asynchronous: a failover can lose the last writes; reliable_redis_wait_replicas makes publish() wait"
    )
    return Result("redis.replicas", Status.PASS, f"{count} connected replica(s); {waits}")


def check_fetch(facts: RedisFacts, fetch_off: str | None) -> Result:
    """kombu's own fetch takes a message (BRPOP) and records it as unacknowledged in a second
    round trip: a worker killed in between loses it. ``fetch_off`` says why the atomic fetch is off."""
    from ...broker.redis_fetch import MIN_REDIS, version_tuple

    loses = (
        "workers take each message with kombu's BRPOP and record it as unacknowledged in a second round trip: "
        "a worker killed between the two loses that message "
        "(measured: 1-2 of 1200 messages in a run of 6 whole-worker kills)"
    )
    if fetch_off is not None:
        return Result(
            "redis.fetch",
            Status.WARN,
            f"{loses}; the atomic fetch is off: {fetch_off}",
            "use ReliableTask with reliable_redis_atomic_fetch = True (the default), redis://, rediss:// or "
            "sentinel:// URLs and Celery's default worker_consumer (or a subclass of "
            "celery_reliable.worker.consumer.ReliableConsumer)",
        )
    version = _info_text(facts, "redis_version")
    if version is not None and version_tuple(version) < MIN_REDIS:
        return Result(
            "redis.fetch",
            Status.WARN,
            f"{loses}; Redis {version} has no BLMOVE, so the atomic fetch falls back to it",
            "upgrade Redis to 6.2 or later",
        )
    return Result(
        "redis.fetch",
        Status.PASS,
        "workers take each message and record it as unacknowledged in one atomic step (reliable_redis_atomic_fetch)",
    )


def check_recovery(client: Any, fetch_off: str | None, heartbeat: float | None, lost_after: float) -> Result:
    """How soon the messages of a worker killed outright come back (see broker/redis_liveness)."""
    from ...broker import redis_liveness as live

    if fetch_off is not None or heartbeat is None:
        why = "reliable_worker_heartbeat is None" if heartbeat is None else "workers fetch the way kombu does"
        return Result(
            "redis.recovery",
            Status.WARN,
            f"{why}: the messages a worker held when it was killed come back only after the visibility timeout",
            "keep reliable_worker_heartbeat (1 s) and the atomic fetch (redis.fetch above)",
        )
    if live.connected_workers(client) is None:
        return Result(
            "redis.recovery",
            Status.WARN,
            f"the server refuses CLIENT LIST: a killed worker is seen only after its heartbeat is "
            f"{lost_after:g} s old (reliable_worker_lost_after), not after {live.FAST_LAPSE_BEATS} beats",
            "allow CLIENT LIST for the broker user (ACL +client|list), or lower reliable_worker_lost_after",
        )
    return Result(
        "redis.recovery",
        Status.PASS,
        f"a killed worker's messages go back to their queues about {live.FAST_LAPSE_BEATS * heartbeat:g} s after it "
        "died (heartbeats, connections seen with CLIENT LIST)",
    )


def run(
    client: Any,
    wait_replicas: int = 0,
    fetch_off: str | None = None,
    recovery: tuple[float | None, float] | None = None,
    ledger: bool = False,
) -> list[Result]:
    """Every Redis check against one server; ``recovery``: (reliable_worker_heartbeat, reliable_worker_lost_after)."""
    facts = read_facts(client)
    results = [
        check_persistence(facts, ledger),
        check_appendfsync(facts),
        check_maxmemory_policy(facts),
        check_replicas(facts, wait_replicas),
        check_fetch(facts, fetch_off),
        check_recovery(client, fetch_off, *recovery) if recovery is not None else None,
    ]
    return [r for r in results if r is not None]
