"""End-to-end demo: orders are charged by a real worker; faults happen; nothing is lost.

Run it with ``./scripts/demo``. It uses a SQLite file for the tables and the local Redis
(database 14, a queue of its own), starts a real worker process, and prints a tally.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent


def say(text: str) -> None:
    print(f"  {text}", flush=True)


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise SystemExit(f"demo failed: timed out waiting for {what}")


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="celery-reliable-demo-"))
    queue = f"example-orders-{uuid.uuid4().hex[:6]}"
    env = dict(os.environ)
    env.update(
        DEMO_DATABASE_URL=f"sqlite:///{workdir / 'shop.sqlite3'}",
        DEMO_QUEUE=queue,
        DEMO_CRASH_ORDER="3",
        PYTHONPATH=str(ROOT),
    )
    os.environ.update(env)

    from celery_reliable import FailureFilter, list_failures, replay, upgrade
    from celery_reliable.store.engine import get_engine, get_sessionmaker
    from example_project import app as shop
    from example_project.models import Base, Order, Payment

    app = shop.app
    print("celery_reliable demo: an orders service charging payments through Celery + Redis")
    upgrade(app)
    Base.metadata.create_all(get_engine(app))
    orders = [(1, "alice", 1200), (2, "bob", 450), (3, "carol", 990), (4, "mallory", 6600), (5, "dave", 300)]
    with get_sessionmaker(app).begin() as session:
        for order_id, customer, amount in orders:
            session.add(Order(id=order_id, customer=customer, amount_cents=amount))

    log = open(workdir / "worker.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "example_project.app", "worker", "-P", "prefork", "-c", "1",
         "-l", "info", "-Q", queue, "-n", f"demo-{queue}@%h", "--without-heartbeat", "--without-mingle",
         "--without-gossip"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait(lambda: b" ready." in (workdir / "worker.log").read_bytes(), 60, "the worker to start")
        say(f"worker started (prefork), queue {queue}, tables in {workdir / 'shop.sqlite3'}")

        published = 0
        for order_id, customer, _amount in orders:
            shop.charge_payment.apply_async((order_id, customer), task_id=f"charge-{order_id}")
            published += 1
        say(f"published {published} charge tasks; order 3's worker process will be killed mid-task")
        # A duplicate delivery of order 1 (a resend with the same task id).
        shop.charge_payment.apply_async((1, "alice"), task_id="charge-1")
        say("order 1's message delivered twice (same task id): idempotency must skip the second")

        def paid() -> int:
            with get_sessionmaker(app)() as session:
                return int(session.scalar(select(func.count()).select_from(Payment)) or 0)

        wait(lambda: paid() == 4 and len(list_failures(app)) == 1, 60, "four payments and one stored failure")
        failure = list_failures(app, FailureFilter(task_name="shop.charge_payment"))[0]
        say("order 3: worker process killed mid-task -> the task was sent again -> paid")
        say(f"order 4: {failure.exc_type}: {failure.exc_message} -> stored as failed task {failure.id}")

        say("an operator verifies the customer and replays the stored task with corrected arguments")
        replay(app, failure.id, args=[4, "mallory-verified"])
        wait(lambda: paid() == 5, 30, "the replayed payment")

        with get_sessionmaker(app)() as session:
            payments = session.execute(
                select(Payment.order_id, func.count()).group_by(Payment.order_id)
            ).all()
        per_order: dict[int, int] = {int(row[0]): int(row[1]) for row in payments}
        doubles = sum(count - 1 for count in per_order.values() if count > 1)
        processed = len(per_order)
        lost = len(orders) - processed
        print()
        print(f"  {published} published, {processed} processed, {doubles} charged twice, {lost} lost")
        return 0 if (lost, doubles, processed) == (0, 0, published) else 1
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
        log.close()
        _cleanup_queue(app, queue)
        shutil.rmtree(workdir, ignore_errors=True)


def _cleanup_queue(app: object, queue: str) -> None:
    import redis

    url = os.environ.get("DEMO_BROKER_URL", "redis://127.0.0.1:6379/14")
    client = redis.Redis.from_url(url)
    try:
        client.delete(queue)
    finally:
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
