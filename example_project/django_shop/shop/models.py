"""Orders and the payments charged for them."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    customer = models.CharField(max_length=100)
    amount_cents = models.IntegerField()
    #: the payment provider refuses an ``expired`` card
    card = models.CharField(max_length=40, default="valid")
    #: ``new`` until the charge task ran, then ``paid``
    status = models.CharField(max_length=20, default="new")

    def __str__(self) -> str:
        return f"order {self.pk} ({self.customer})"


class Payment(models.Model):
    """One row per charge; no unique key, so a double charge would show."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE)
    amount_cents = models.IntegerField()
    task_id = models.CharField(max_length=255)
