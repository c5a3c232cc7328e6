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
    broker_url=os.environ.get("DEMO_BROKER_URL", "redis://127.0.0.1:6379/14"),
    task_default_queue=os.environ.get("DEMO_QUEUE", "example-orders"),
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_send_task_events=True,
    # One database for the shop's tables and celery_reliable's, so a payment and the record that
    # its task completed commit together.
    reliable_database_url=os.environ.get("DEMO_DATABASE_URL", "sqlite:///example_project.sqlite3"),
    reliable_max_retries=3,
    reliable_retry_backoff=0.2,
    reliable_retry_backoff_max=2.0,
)

#: Orders the payment provider rejects until an operator fixes them.
BLOCKED_CUSTOMERS = {"mallory"}


@app.task(bind=True, name="shop.charge_payment", idempotent=True)
def charge_payment(self, order_id: int, customer: str) -> str:
    """Charge an order once: the payment row and the completion record commit together."""
    if customer in BLOCKED_CUSTOMERS:
        raise PermanentError(f"payment provider refuses customer {customer!r}")
    if os.environ.get("DEMO_CRASH_ORDER") == str(order_id) and self.request.retries == 0:
        os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-task
    time.sleep(0.05)
    with get_sessionmaker(self.app).begin() as session:
        order = session.get(Order, order_id)
        if order is None:
            raise PermanentError(f"order {order_id} does not exist")
        session.add(Payment(order_id=order_id, amount_cents=order.amount_cents, task_id=self.request.id))
        order.status = "paid"
        self.record_completion(session)
    return "paid"
