"""The Celery app of the example service: every task is a ReliableTask."""

from __future__ import annotations

import os
import signal
import time

from celery import Celery

from celery_reliable import PermanentError
from celery_reliable.store.engine import get_sessionmaker
from example_project.models import Order, Payment

app = Celery("example_project", task_cls="celery_reliable:ReliableTask")
app.conf.update(
    # The demo points this at a Redis of its own, run with an append-only file fsynced on every
    # write and no eviction (see example_project/processes.py).
    broker_url=os.environ.get("DEMO_BROKER_URL", "redis://127.0.0.1:6379/14"),
    task_default_queue=os.environ.get("DEMO_QUEUE", "example-orders"),
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    # One database for the shop's tables and celery_reliable's: an order and its outbox message,
    # a payment and the record that its task completed, each commit together.
    reliable_database_url=os.environ.get("DEMO_DATABASE_URL", "sqlite:///example_project.sqlite3"),
    reliable_max_retries=3,
    reliable_retry_backoff=0.2,
    reliable_retry_backoff_max=2.0,
    # Short waits, so the demo runs in seconds (defaults: 3 tries, 10 s grace, 5 s relay backoff).
    reliable_publish_retries=2,
    reliable_publish_retry_backoff=0.1,
    reliable_outbox_grace=1.0,
    reliable_relay_backoff=0.5,
    reliable_relay_backoff_max=2.0,
)


@app.task(bind=True, name="shop.charge_payment", idempotent=True)
def charge_payment(self, order_id: int) -> str:  # self: the bound ReliableTask
    """Charge an order once: the payment row and the completion record commit together."""
    if os.environ.get("DEMO_CRASH_ORDER") == str(order_id) and self.request.retries == 0:
        os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-task
    time.sleep(0.05)  # the call to the payment provider
    with get_sessionmaker(self.app).begin() as session:
        order = session.get(Order, order_id)
        if order is None:
            raise PermanentError(f"order {order_id} does not exist")
        if order.card == "expired":
            raise PermanentError(f"the card of order {order_id} ({order.customer}) has expired")
        session.add(Payment(order_id=order_id, amount_cents=order.amount_cents, task_id=self.request.id))
        order.status = "paid"
        self.record_completion(session)
    return "paid"
