"""The shop's tasks, found by ``app.autodiscover_tasks()``; every task is a ReliableTask."""

from __future__ import annotations

from celery import shared_task
from django.db import transaction

from celery_reliable import PermanentError

from .models import Order, Payment


@shared_task(bind=True, name="shop.charge")
def charge(self, order_id: int) -> str:  # type: ignore[no-untyped-def]
    """Charge an order: a card the provider refuses is a permanent failure, stored for a person."""
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.card == "expired":
            raise PermanentError(f"the card of order {order_id} ({order.customer}) has expired")
        Payment.objects.create(order=order, amount_cents=order.amount_cents, task_id=self.request.id)
        order.status = "paid"
        order.save(update_fields=["status"])
    return "paid"
