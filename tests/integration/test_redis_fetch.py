"""The atomic Redis fetch (``celery_reliable.broker.redis_fetch``) against private redis-servers.

The loss it closes is shown with kombu's own transport first: a consumer whose connection dies
after Redis answered its BRPOP, before it recorded the message as unacknowledged, has taken
the message out of Redis for good. The same moment with the atomic fetch leaves the message in
kombu's ``unacked`` hash, from where kombu's visibility-timeout sweep gives it back.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue

from celery_reliable.broker import redis_liveness as live
from celery_reliable.broker.redis_fetch import SENTINEL_TRANSPORT, TRANSPORT, fetch_connection, stage_list
from tests.harness import RedisServer, die_after_fetch, free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.redis]

KOMBU = "redis"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", persistent=False).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sentinel(server: RedisServer, tmp_path: Path) -> Iterator[str]:
    """A private Redis Sentinel watching ``server`` as master ``reltest``; its URL."""
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nlogfile {tmp_path / 'sentinel.log'}\n"
        f"sentinel monitor reltest 127.0.0.1 {server.port} 1\n"
    )
    cmd = [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
        # the raw command: redis-py 6.4's own helper for it fails on a keyword it passes itself
        wait_for(lambda: client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", "reltest"), 20, what="the sentinel")
        client.close()
        yield f"sentinel://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _queue(name: str | None = None) -> Queue:
    name = name or f"fetch-{uuid.uuid4().hex[:8]}"
    return Queue(name, Exchange(name, type="direct"), routing_key=name, max_priority=9)


def _publish(url: str, queue: Queue, bodies: list[Any], priority: int | None = None, **options: Any) -> None:
    with Connection(url, transport_options=options) as conn:
        producer = conn.Producer()
        for body in bodies:
            producer.publish(
                body, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue], priority=priority
            )


def _unacked(client: redis.Redis, queue: str, key: str = "unacked") -> dict[str, Any]:
    """Entries of kombu's unacked hash that belong to ``queue``: tag -> [payload, exchange, routing key]."""
    entries = {k.decode(): json.loads(v) for k, v in client.hgetall(key).items()}
    return {tag: entry for tag, entry in entries.items() if entry[2] == queue}


def _consume(conn: Connection, queue: Queue, want: int = 1) -> list[Any]:
    """Bodies of ``want`` messages (fewer if they do not come within a few waits), each acked."""
    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(body)
        message.ack()

    with conn.Consumer(queue, callbacks=[on_message], accept=["json"]):
        for _ in range(want + 4):
            if len(got) >= want:
                break
            try:
                conn.drain_events(timeout=2)
            except TimeoutError:
                continue
    return got


def _die_after_the_fetch(url: str, transport: str, queue: Queue, data_url: str | None = None, **options: Any) -> None:
    """A consumer sends its fetch, a message arrives and is taken by Redis, then the consumer's
    connection dies before it read the reply (what a SIGKILL of the worker does)."""
    die_after_fetch(
        Connection(url, transport=transport, transport_options=options),
        queue,
        redis.Redis.from_url(data_url or url),
        key=options.get("global_keyprefix", "") + queue.name,
        publish=lambda: _publish(url, queue, [{"n": 1}], **options),
    )


@pytest.mark.parametrize("transport", [KOMBU, TRANSPORT], ids=["kombu", "atomic"])
def test_a_consumer_killed_right_after_the_fetch(server: RedisServer, transport: str) -> None:
    queue = _queue()
    client = redis.Redis.from_url(server.url)
    _die_after_the_fetch(server.url, transport, queue)

    parked = _unacked(client, queue.name)
    assert client.llen(queue.name) == 0
    if transport == KOMBU:
        assert parked == {}  # in neither place: no sweep can ever bring it back
        return
    # the message is recorded exactly as kombu's QoS.append records it
    assert len(parked) == 1, parked
    ((tag, (payload, exchange, routing_key)),) = parked.items()
    assert payload["properties"]["delivery_tag"] == tag
    assert (exchange, routing_key) == (queue.exchange.name, queue.routing_key)
    assert json.loads(base64.b64decode(payload["body"])) == {"n": 1}
    assert client.zscore("unacked_index", tag) is not None

    # kombu's own visibility-timeout sweep gives it back; it is then delivered once and acked
    with Connection(server.url, transport=transport, transport_options={"visibility_timeout": 0.5}) as conn:
        time.sleep(1.0)
        channel: Any = conn.default_channel
        channel.qos.restore_visible(num=100)
        assert client.llen(queue.name) == 1
        assert _consume(conn, queue) == [{"n": 1}]
    assert _unacked(client, queue.name) == {} and client.zcard("unacked_index") == 0


def test_several_queues_and_priorities_are_all_taken_atomically(server: RedisServer) -> None:
    """Messages on another queue or priority than the one waited on are taken within the short wait."""
    first, second = _queue(), _queue()
    client = redis.Redis.from_url(server.url)
    got: list[tuple[str, Any]] = []
    with Connection(server.url, transport=TRANSPORT) as conn:
        channel: Any = conn.default_channel

        def on_message(body: Any, message: Any) -> None:
            # recorded before it reached the consumer (QoS.append rewrites the same entry)
            assert message.delivery_tag in {k.decode() for k in client.hkeys("unacked")}
            got.append((message.delivery_info["routing_key"], body))
            message.ack()

        with conn.Consumer([first, second], callbacks=[on_message], accept=["json"]):
            _publish(server.url, second, [{"q": 2, "i": i} for i in range(3)])
            _publish(server.url, first, [{"q": 1, "p": 9}], priority=9)
            _publish(server.url, first, [{"q": 1, "p": 0}], priority=0)
            started = time.monotonic()
            for _ in range(20):
                if len(got) == 5:
                    break
                try:
                    conn.drain_events(timeout=2)
                except TimeoutError:
                    break
            took = time.monotonic() - started
    assert sorted(json.dumps(body, sort_keys=True) for _, body in got) == sorted(
        json.dumps(b, sort_keys=True)
        for b in [{"q": 2, "i": 0}, {"q": 2, "i": 1}, {"q": 2, "i": 2}, {"q": 1, "p": 9}, {"q": 1, "p": 0}]
    )
    assert [body["i"] for rk, body in got if rk == second.routing_key] == [0, 1, 2]  # FIFO kept
    assert took < 3.0, took
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    assert channel._atomic is True


def test_a_flushed_script_cache_is_loaded_again(server: RedisServer) -> None:
    """A Redis restart (or SCRIPT FLUSH) empties the script cache: the fetch loads it again."""
    queue = _queue()
    client = redis.Redis.from_url(server.url)
    with Connection(server.url, transport=TRANSPORT) as conn:
        _publish(server.url, queue, [{"n": 1}])
        assert _consume(conn, queue) == [{"n": 1}]
        client.script_flush()
        _publish(server.url, queue, [{"n": 2}])
        assert _consume(conn, queue) == [{"n": 2}]  # the same channel: its first fetch got NOSCRIPT
    assert client.llen(queue.name) == 0 and client.hlen("unacked") == 0


def test_a_global_key_prefix_is_honoured(server: RedisServer) -> None:
    queue = _queue()
    client = redis.Redis.from_url(server.url)
    _die_after_the_fetch(server.url, TRANSPORT, queue, global_keyprefix="app1:")
    assert client.llen(f"app1:{queue.name}") == 0
    assert len(_unacked(client, queue.name, key="app1:unacked")) == 1
    assert client.zcard("app1:unacked_index") == 1
    assert not client.exists("unacked")


@pytest.mark.parametrize("transport", ["sentinel", SENTINEL_TRANSPORT], ids=["kombu", "atomic"])
def test_through_sentinel(server: RedisServer, sentinel: str, transport: str) -> None:
    """Sentinel URLs (kombu's SentinelTransport) get the same atomic fetch."""
    queue = _queue()
    _die_after_the_fetch(sentinel, transport, queue, data_url=server.url, master_name="reltest")
    client = redis.Redis.from_url(server.url)
    assert client.llen(queue.name) == 0
    assert len(_unacked(client, queue.name)) == (0 if transport == "sentinel" else 1)


def test_a_message_left_in_a_stage_list_is_taken_by_the_next_fetch(server: RedisServer) -> None:
    """A worker that died after its BLMOVE moved a message and before its script ran leaves the
    message in the queue's stage list; any worker's next fetch takes it from there."""
    queue = _queue()
    client = redis.Redis.from_url(server.url)
    _publish(server.url, queue, [{"n": 1}])
    stage = stage_list(queue.name)
    client.lmove(queue.name, stage, "RIGHT", "LEFT")  # what the dead worker's BLMOVE did
    assert (client.llen(queue.name), client.llen(stage)) == (0, 1)
    with Connection(server.url, transport=TRANSPORT) as conn:
        assert _consume(conn, queue) == [{"n": 1}]
    assert client.llen(stage) == 0 and client.hlen("unacked") == 0


def test_one_message_wakes_one_idle_consumer(server: RedisServer) -> None:
    """Idle consumers wait in BLMOVE, which wakes one of them per message, as BRPOP does."""
    queue = _queue()
    client = redis.Redis.from_url(server.url)
    consumers: list[tuple[Connection, Any]] = []
    channel: Any
    try:
        for _ in range(5):  # each waits up to 10 s at a time
            conn = Connection(server.url, transport=TRANSPORT, transport_options={"polling_interval": 10})
            channel: Any = conn.default_channel
            conn.Consumer(queue, callbacks=[lambda body, message: message.ack()], accept=["json"]).consume()
            conn.transport.cycle._register_BRPOP(channel)  # each one now waits in BLMOVE
            consumers.append((conn, channel))
        wait_for(lambda: int(client.info("clients")["blocked_clients"]) == 5, 10, what="5 consumers waiting")
        before = int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
        _publish(server.url, queue, [{"n": 1}])
        wait_for(lambda: int(client.info("clients")["blocked_clients"]) == 4, 10, what="one consumer woken")
        time.sleep(0.3)
        calls = int(client.info("commandstats")["cmdstat_evalsha"]["calls"]) - before
        assert calls == 1, f"{calls} consumers ran the take script for one message"
        assert len(_unacked(client, queue.name)) == 1  # taken and recorded, not yet read
    finally:
        for conn, channel in consumers:
            channel.client.connection.disconnect()  # not waiting out the BLMOVEs; nothing is lost
            conn.release()


def test_a_worker_that_fails_over_to_its_next_url_keeps_the_atomic_fetch(redis_sqlite_scenario: Any) -> None:
    """kombu's Connection.switch() takes the transport from the next URL's scheme; the worker's
    connection keeps the atomic fetch through a failover."""
    scenario = redis_sqlite_scenario
    dead = "redis://127.0.0.1:1/0"  # nothing listens: the first connect fails, kombu moves on
    worker = scenario.worker("w1", RELIABLE_TEST_BROKER=f"{dead};{scenario.broker_url}")
    key = f"failover-{uuid.uuid4().hex[:6]}"
    scenario.send("t.slow", key, 3.0, task_id=key)
    client = redis.Redis.from_url(scenario.broker_url)
    try:
        # taken by the atomic fetch: while it runs, its tag is in the worker's held set (kombu's fetch keeps none)
        def held() -> bool:
            return any(client.scard(k) for k in client.scan_iter(match=f"{live.HELD}*", count=1000))

        wait_for(held, 30, interval=0.05, what="the message in the worker's held set")
    finally:
        client.close()
    wait_for(lambda: scenario.db.counts().effect(key) == 1, 60, what="the task run")
    connected = [line for line in worker.output().splitlines() if "Connected to" in line]
    assert connected and all("Connected to redis://" in line for line in connected), connected


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """A private redis-server that speaks only TLS (a self-signed certificate made here); its
    rediss:// URL and the ssl options that verify it."""
    import ssl

    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make the TLS test's certificate (apt-get install openssl)"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    cmd = [
        shutil.which("redis-server") or "redis-server", "--port", "0", "--tls-port", str(port),
        "--bind", "127.0.0.1", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
        "--dir", str(tmp_path), "--logfile", str(tmp_path / "redis-tls.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    options = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(cert)}
    try:
        client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(cert), socket_connect_timeout=1)
        wait_for(client.ping, 20, what=f"redis-server with TLS on {port}")
        client.close()
        yield f"rediss://127.0.0.1:{port}/0", options
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_over_tls(tls_server: tuple[str, dict[str, Any]]) -> None:
    """rediss:// URLs: Celery's ssl options are kept, the fetch is atomic, a verified connection."""
    url, ssl_options = tls_server
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=ssl_options["ssl_ca_certs"])
    queue = _queue()
    with Connection(url, ssl=ssl_options) as producer:
        producer.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue])
    # a consumer that dies right after its fetch leaves the message recorded as unacknowledged
    channel = die_after_fetch(fetch_connection(Connection(url, ssl=ssl_options), TRANSPORT), queue, client)
    assert channel._atomic is True  # over TLS: the server has no plain-text port
    assert len(_unacked(client, queue.name)) == 1
