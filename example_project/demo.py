"""End to end: an orders service charges payments through Celery; faults happen; nothing is lost.

Run it with ``./scripts/demo`` (or ``python -m example_project.demo``). It starts a Redis of its
own (append-only file fsynced on every write, on a free port, in a temporary directory) as the
broker, keeps the tables in a SQLite file next to it, and runs a real worker process. Then:

1. orders are placed; each order and its charge message commit together (the outbox);
2. the broker crashes while orders are placed: their messages wait in the pending table and
   the relay sends them when it is back;
3. the worker process charging an order is killed mid-task: the task runs again;
4. a charge fails for good: it is stored, the order is fixed, the stored task is replayed;
5. charges are sent twice with the same task id: the duplicates are skipped;

and prints a tally counted from the database.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

from example_project.processes import ROOT, DurableRedis, Worker, wait

#: The order whose first charge attempt kills its worker process (the fifth one placed).
CRASH_ORDER = 5


def say(text: str) -> None:
    print(f"  {text}", flush=True)


def scene(title: str) -> None:
    print(f"\n{title}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./scripts/demo", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, SQLite, AOF)")
    options = parser.parse_args(argv)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="celery-reliable-demo-"))
    redis = DurableRedis(workdir / "redis")
    worker: Worker | None = None
    keep = True  # until the demo succeeded (or was asked to): the logs say what went wrong
    try:
        # The library's own log lines (a failed send, a relay pass) go to a file; the story goes to stdout.
        logging.basicConfig(
            filename=workdir / "demo.log", level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
        )
        redis.start()
        queue = f"shop-{uuid.uuid4().hex[:6]}"
        env = dict(os.environ)
        env.update(
            DEMO_BROKER_URL=redis.url,
            DEMO_DATABASE_URL=f"sqlite:///{workdir / 'shop.sqlite3'}",
            DEMO_QUEUE=queue,
            DEMO_CRASH_ORDER=str(CRASH_ORDER),
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        )
        os.environ.update(env)  # read by example_project.app when it is imported below
        worker = Worker(queue, workdir / "worker.log", env)
        code = run(redis, worker, workdir)
        print(f"\n  (demo ran in {time.monotonic() - started:.1f} s)")
        keep = options.keep or code != 0
        return code
    finally:
        if worker is not None:
            worker.stop()
        redis.stop()
        if keep:
            print(f"  files kept in {workdir} (demo.log, worker.log, shop.sqlite3, redis/)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def run(redis: DurableRedis, worker: Worker, workdir: Path) -> int:
    import redis as redis_client

    from celery_reliable import FailureFilter, list_failures, list_pending, publish, relay_once, replay, upgrade
    from celery_reliable.store.engine import get_engine, get_sessionmaker
    from celery_reliable.store.models import FailedTask, PendingMessage, PendingStatus
    from example_project.app import app, charge_payment
    from example_project.models import Base, Order, Payment
    from example_project.orders import charge_task_id, place_order

    sessions = get_sessionmaker(app)
    broker = redis_client.Redis.from_url(redis.url, socket_connect_timeout=2, socket_timeout=5)

    def paid() -> int:
        with sessions() as session:
            return int(session.scalar(select(func.count(func.distinct(Payment.order_id)))) or 0)

    def order(customer: str, amount_cents: int, card: str = "valid") -> int:
        with sessions.begin() as session:
            return place_order(app, session, customer, amount_cents, card)

    def outbox_row(order_id: int) -> PendingMessage:
        with sessions() as session:
            query = select(PendingMessage).where(
                PendingMessage.task_id == charge_task_id(order_id), PendingMessage.source == "outbox"
            )
            return session.scalars(query).one()

    def supervise() -> None:
        """Start the worker again if it exited, as systemd or supervisord would."""
        if not worker.alive():
            say("the worker process exited (it lost its broker); starting it again, as a supervisor would")
            worker.stop()
            worker.start()

    def settled(predicate: Any) -> Any:
        def check() -> bool:
            supervise()
            return bool(predicate())

        return check

    print("celery_reliable demo: an orders service charging payments through Celery")
    upgrade(app)
    Base.metadata.create_all(get_engine(app))
    worker.start()
    say(f"broker: a Redis of its own on port {redis.port}, appendonly yes, appendfsync always, noeviction")
    say(f"tables: SQLite {workdir / 'shop.sqlite3'}; worker: 1 prefork process on queue {worker.queue}")

    scene("1. Orders are placed: the order row and its charge message commit in one transaction")
    for customer, amount in (("alice", 1200), ("bob", 450)):
        order_id = order(customer, amount)
        say(f"order {order_id} ({customer}): committed with its outbox message, which is now "
            f"{outbox_row(order_id).status} (published right after the commit)")  # fmt: skip
    wait(settled(lambda: paid() == 2), 30, "orders 1 and 2 to be paid")
    say("orders 1 and 2 paid")

    scene("2. The broker crashes while orders are placed")
    redis.kill()
    say(f"Redis killed (SIGKILL to PID {redis.proc.pid if redis.proc else '?'})")
    for customer, amount in (("carol", 990), ("dave", 300)):
        order_id = order(customer, amount)
        row = outbox_row(order_id)
        say(f"order {order_id} ({customer}): committed; its outbox message is {row.status} "
            f"(the send after the commit failed: {row.last_error.split(':')[0] or 'not tried yet'})")  # fmt: skip
    resend = publish(app, charge_payment, [2], task_id=charge_task_id(2))
    say(f"order 2's charge sent again by publish() (a client retry): sent={resend.sent}, "
        f"kept as pending row {resend.pending_id}")  # fmt: skip
    parked = list_pending(app, status=PendingStatus.PENDING)
    by_source = {s: sum(1 for row in parked if row.source == s) for s in ("outbox", "publish_fallback")}
    say(f"{len(parked)} messages wait in celery_reliable_pending_message: {by_source['outbox']} from the outbox, "
        f"{by_source['publish_fallback']} from publish()")  # fmt: skip
    redis.start()
    say("Redis started again on the same append-only file")
    relayed = 0

    def relay_done() -> bool:
        nonlocal relayed
        relayed += relay_once(app).sent
        return not list_pending(app, status=PendingStatus.PENDING) and not list_pending(
            app, status=PendingStatus.CLAIMED
        )

    wait(relay_done, 20, "the relay to send the parked messages", interval=0.3)
    say(f"the relay (the beat task celery_reliable.relay; here one pass at a time) sent {relayed} messages")
    wait(settled(lambda: paid() == 4), 45, "orders 3 and 4 to be paid")
    say("orders 3 and 4 paid once the worker was connected again")

    scene("3. The worker process is killed in the middle of a charge")
    order_id = order("erin", 2500)
    if order_id != CRASH_ORDER:
        raise SystemExit(f"demo failed: the crashing order should be order {CRASH_ORDER}, it is {order_id}")
    say(f"order {order_id} (erin): its worker process gets SIGKILL mid-task")
    wait(settled(lambda: paid() == 5), 30, f"order {order_id} to be paid")
    kills = worker.log_path.read_bytes().count(b"exited with 'signal 9 (SIGKILL)'")
    say(f"order {order_id}: {kills} worker process killed; the lost process counted as a retry, "
        "the task ran again and paid")  # fmt: skip
    if kills != 1:
        raise SystemExit(f"demo failed: expected one killed worker process, the worker log shows {kills}")

    scene("4. A charge that cannot succeed: stored, fixed, replayed")
    order_id = order("mallory", 6600, card="expired")
    wait(settled(lambda: bool(list_failures(app))), 30, "the failed charge to be stored")
    failure = list_failures(app, FailureFilter(task_name="shop.charge_payment"))[0]
    say(f"order {order_id}: {failure.exc_type}: {failure.exc_message}")
    say(f"  -> stored as failed task {failure.id} (reason {failure.reason}) before its message was acknowledged")
    with sessions.begin() as session:
        session.execute(update(Order).where(Order.id == order_id).values(card="valid"))
    say("an operator records the customer's new card and replays the stored task")
    replay(app, failure.id)
    wait(settled(lambda: paid() == 6), 30, f"order {order_id} to be paid")
    say(f"order {order_id} paid by the replay")

    scene("5. Charges delivered twice with the same task id")
    for order_id in (1, CRASH_ORDER):
        publish(app, charge_payment, [order_id], task_id=charge_task_id(order_id))
        say(f"order {order_id}'s charge sent again with task id {charge_task_id(order_id)}")

    def broker_empty() -> bool:
        return broker.llen(worker.queue) == 0 and broker.hlen("unacked") == 0

    def duplicates_skipped() -> int:
        return worker.log_path.read_bytes().count(b"duplicate delivery skipped")

    wait(settled(lambda: duplicates_skipped() >= 3 and broker_empty()), 30, "the duplicates to be delivered")
    time.sleep(0.5)  # anything still in flight would show in the queue or in the unacked hash now
    wait(broker_empty, 10, "the broker to be empty")
    say(f"{duplicates_skipped()} duplicate deliveries skipped (orders 2, 1 and {CRASH_ORDER}): already completed")
    broker.close()

    with sessions() as session:
        published = int(
            session.scalar(
                select(func.count(func.distinct(PendingMessage.task_id))).where(PendingMessage.source == "outbox")
            )
            or 0
        )
        per_order = dict(session.execute(select(Payment.order_id, func.count()).group_by(Payment.order_id)).all())
        unpaid = int(session.scalar(select(func.count()).select_from(Order).where(Order.status != "paid")) or 0)
        waiting = int(
            session.scalar(select(func.count()).select_from(FailedTask).where(FailedTask.status == "failed")) or 0
        )
        replayed = int(
            session.scalar(select(func.count()).select_from(FailedTask).where(FailedTask.status == "replayed")) or 0
        )
        not_sent = int(
            session.scalar(
                select(func.count())
                .select_from(PendingMessage)
                .where(PendingMessage.status.not_in((PendingStatus.SENT, PendingStatus.DONE)))
            )
            or 0
        )
    processed = len(per_order)
    doubles = sum(count - 1 for count in per_order.values())
    lost = published - processed - waiting
    print()
    say(f"pending table: every message sent ({not_sent} not sent); failed tasks: {replayed} replayed, "
        f"{waiting} waiting; orders not paid: {unpaid}")  # fmt: skip
    say(f"worker started {worker.starts} time(s)")
    print(f"\n  {published} published, {processed} processed, {doubles} charged twice, {lost} lost")
    return 0 if (lost, doubles, unpaid, not_sent, processed) == (0, 0, 0, 0, published) else 1


if __name__ == "__main__":
    raise SystemExit(main())
