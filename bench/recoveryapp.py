"""The app of the recovery benchmark (``celery -A bench.recoveryapp worker``).

One ReliableTask at the library's defaults (visibility timeout 600 s, heartbeat 1 s), which
records when each run of each message starts (``HSET <prefix>started:<key> <n> <time>``) and then
sleeps. Environment: ``BENCH_BROKER``, ``BENCH_PREFIX`` (kombu's ``global_keyprefix`` too),
``BENCH_QUEUE``, ``BENCH_DB``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery

from celery_reliable import ReliableTask

BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/12")
PREFIX = os.environ.get("BENCH_PREFIX", "reliable-recovery:")

app = Celery("recoveryapp")
app.conf.update(
    broker_url=BROKER,
    broker_transport_options={"global_keyprefix": PREFIX},
    broker_connection_retry_on_startup=True,
    result_backend=None,
    task_ignore_result=True,
    task_default_queue=os.environ.get("BENCH_QUEUE", "reliable-recovery"),
    worker_enable_remote_control=False,
    reliable_database_url=os.environ.get("BENCH_DB", "sqlite:///recovery-bench.sqlite3"),
)

_client: redis.Redis | None = None


@app.task(name="bench.recovery.work", base=ReliableTask, bind=True)
def work(self: Any, key: str, seconds: float) -> None:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(BROKER)
    runs = _client.hlen(f"{PREFIX}started:{key}")
    _client.hset(f"{PREFIX}started:{key}", str(runs), repr(time.time()))
    time.sleep(seconds)
