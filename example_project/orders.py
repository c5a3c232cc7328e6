"""Placing an order: the order row and its charge message commit in one transaction."""

from __future__ import annotations

from celery import Celery
from sqlalchemy.orm import Session

from celery_reliable import outbox
from example_project.models import Order


def charge_task_id(order_id: int) -> str:
    """The charge of an order has one task id, so any resend of it is recognised as a duplicate."""
    return f"charge-{order_id}"


def place_order(app: Celery, session: Session, customer: str, amount_cents: int, card: str = "valid") -> int:
    """Add an order and stage its charge in the caller's transaction; returns the order id.

    Nothing is sent if the transaction rolls back; after the commit the charge is published at
    once, or, if the broker cannot take it, the relay sends it later.
    """
    order = Order(customer=customer, amount_cents=amount_cents, card=card)
    session.add(order)
    session.flush()  # the order id, for the task's arguments and id
    outbox(session, app).send("shop.charge_payment", [order.id], task_id=charge_task_id(order.id))
    return order.id
