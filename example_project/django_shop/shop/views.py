"""Placing an order: the order row and its charge message commit together."""

from __future__ import annotations

from django.db import transaction

from celery_reliable.contrib.django import outbox

from .models import Order


def place_order(customer: str, amount_cents: int, card: str = "valid") -> Order:
    """Create an order and stage its charge; the message is sent once the order is committed."""
    with transaction.atomic():
        order = Order.objects.create(customer=customer, amount_cents=amount_cents, card=card)
        outbox().send("shop.charge", [order.id])
    return order
