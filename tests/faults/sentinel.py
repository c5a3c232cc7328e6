"""A private Redis Sentinel set: a primary, one replica (asynchronous replication) and one sentinel.

Every server is a ``redis-server`` on a free 127.0.0.1 port with a directory of its own, without
persistence, and is stopped by PID. The sentinel is ``redis-server <conf> --sentinel`` (with
quorum 1 it alone decides the failover). :meth:`SentinelSet.lag_replica` makes the replica miss
the writes that follow, :meth:`SentinelSet.fail_primary` kills the primary, and the sentinel
promotes the replica: a failover to a replica that lacks the last writes.

The test worker's app (:mod:`tests.apps.workerapp`) reads its transport options (``master_name``)
from ``RELIABLE_TEST_TRANSPORT_OPTIONS`` (JSON).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from tests.harness import RedisServer, free_port, wait_for

#: The environment variable the worker's app reads its broker transport options from (JSON).
TRANSPORT_OPTIONS_ENV = "RELIABLE_TEST_TRANSPORT_OPTIONS"


def _info(port: int, section: str = "replication") -> dict[str, Any]:
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=2)
    try:
        return dict(client.info(section))
    finally:
        client.close()


def _as_dict(reply: Any) -> dict[str, Any]:
    """A sentinel's description of an instance: a map (RESP3) or a flat list of names and values (RESP2)."""
    return dict(reply) if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))


class SentinelSet:
    """A primary, its replica and a sentinel watching them, in ``directory``; stopped by PID."""

    def __init__(self, directory: Path, master_name: str = "mymaster", db: int = 0) -> None:
        self.dir = directory
        self.master_name = master_name
        self.db = db
        # a replica's first sync starts at once (diskless sync would wait 5 s for more replicas)
        self.primary = RedisServer(directory / "primary", persistent=False, extra=("--repl-diskless-sync-delay", "0"))
        self.replica = RedisServer(
            directory / "replica",
            persistent=False,
            extra=("--replicaof", "127.0.0.1", str(self.primary.port)),
        )
        self.sentinel_port = free_port()
        self.sentinel_dir = directory / "sentinel"
        self.sentinel: subprocess.Popen[bytes] | None = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def broker_url(self) -> str:
        """The URL clients use: the sentinel, which names the current master."""
        return f"sentinel://127.0.0.1:{self.sentinel_port}/{self.db}"

    @property
    def transport_options(self) -> dict[str, Any]:
        return {"master_name": self.master_name}

    def master_port(self) -> int:
        """The port of the master the sentinel names now."""
        _host, port = self.ask("GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(port)

    def master_url(self) -> str:
        """A plain ``redis://`` URL of the master the sentinel names now (to inspect it)."""
        return f"redis://127.0.0.1:{self.master_port()}/{self.db}"

    def ask(self, *args: str) -> Any:
        """The sentinel's raw reply to ``SENTINEL <args>`` (no redis-py parsing: a map under RESP3, a flat
        list under RESP2, decoded)."""
        client: Any = redis.Redis(
            host="127.0.0.1", port=self.sentinel_port, socket_connect_timeout=1, socket_timeout=2, decode_responses=True
        )
        try:
            return client.execute_command("SENTINEL", *args)
        finally:
            client.close()

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> SentinelSet:
        try:
            self.primary.start()
            self.replica.start()
            self._wait_in_sync(timeout)  # first: the sentinel's first look at the replica finds it in sync
            self._start_sentinel()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_sentinel(self) -> None:
        self.sentinel_dir.mkdir(parents=True, exist_ok=True)
        conf = self.sentinel_dir / "sentinel.conf"  # the sentinel rewrites it with what it learns
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndaemonize no\n"
            f"dir {self.sentinel_dir}\nlogfile {self.sentinel_dir / 'sentinel.log'}\n"
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.master_name} 1000\n"
            f"sentinel failover-timeout {self.master_name} 5000\n"
            f"sentinel parallel-syncs {self.master_name} 1\n"
        )
        cmd = [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"]
        self.sentinel = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _wait_in_sync(self, timeout: float) -> None:
        def in_sync() -> bool:
            primary = _info(self.primary.port)  # first: the replica must have at least what it had then
            replica = _info(self.replica.port)
            return (
                replica.get("master_link_status") == "up"
                and int(primary.get("connected_slaves", 0)) == 1
                and int(replica.get("slave_repl_offset", -1)) >= int(primary.get("master_repl_offset", 0))
            )

        wait_for(in_sync, timeout, interval=0.1, what="the replica in sync with the primary")

    def wait_ready(self, timeout: float = 30) -> None:
        """Until the replica is in sync with the primary and the sentinel knows it as a healthy replica."""
        self._wait_in_sync(timeout)

        def sentinel_sees_replica() -> bool:
            for fields in self.ask("REPLICAS", self.master_name):
                entry = _as_dict(fields)
                if int(entry.get("port", 0)) == self.replica.port and entry.get("flags") == "slave":
                    return entry.get("master-link-status") == "ok"
            return False

        wait_for(lambda: self.master_port() == self.primary.port, timeout, what="the sentinel on the primary")
        wait_for(sentinel_sees_replica, timeout, interval=0.1, what="the sentinel to know the replica")

    def lag_replica(self) -> None:
        """The replica stops taking the primary's writes: SIGSTOP, and the primary drops its link.

        A stopped replica alone would still get the writes: the kernel keeps them in its socket's
        buffer and the replica applies them once it runs again. With its link closed while it is
        stopped, the writes that follow reach only the primary (and its backlog).
        """
        assert self.replica.proc is not None
        os.kill(self.replica.proc.pid, signal.SIGSTOP)
        client: Any = redis.Redis(host="127.0.0.1", port=self.primary.port, socket_connect_timeout=1, socket_timeout=2)
        try:
            client.execute_command("CLIENT KILL", "TYPE", "replica")
            wait_for(lambda: int(client.info("replication")["connected_slaves"]) == 0, 10, what="the link dropped")
        finally:
            client.close()

    def fail_primary(self) -> float:
        """SIGKILL the primary, then let the replica run again; returns when it happened (monotonic)."""
        self.primary.kill()
        failed_at = time.monotonic()
        assert self.replica.proc is not None
        os.kill(self.replica.proc.pid, signal.SIGCONT)
        return failed_at

    def master_state(self) -> dict[str, Any]:
        """What the sentinel says of the master (``SENTINEL MASTER``): its address, its flags."""
        return _as_dict(self.ask("MASTER", self.master_name))

    def wait_promoted(self, timeout: float = 30) -> None:
        """Until the sentinel names the replica as master, its failover is over (clients that ask it
        for the master are answered: redis-py refuses a master flagged down) and the replica says
        it is a master."""

        def promoted() -> bool:
            state = self.master_state()
            flags = set(str(state["flags"]).split(","))
            return (
                int(state["port"]) == self.replica.port
                and not flags & {"s_down", "o_down", "failover_in_progress"}
                and self.master_port() == self.replica.port
                and _info(self.replica.port).get("role") == "master"
            )

        wait_for(promoted, timeout, interval=0.1, what="the sentinel to promote the replica")

    def stop(self) -> None:
        """Stop every process by its PID (a stopped replica is let run first, so it can exit)."""
        if self.replica.proc is not None and self.replica.proc.poll() is None:
            try:
                os.kill(self.replica.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if self.sentinel is not None and self.sentinel.poll() is None:
            self.sentinel.terminate()
            try:
                self.sentinel.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.sentinel.kill()
                self.sentinel.wait(timeout=10)
        for server in (self.replica, self.primary):
            server.stop()
