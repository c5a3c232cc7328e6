"""A small orders-and-payments service that uses celery_reliable on all three sides.

* producer: an order and its charge message commit together (``celery_reliable.send.outbox``), and
  resends go through ``celery_reliable.publish``; what the broker cannot take waits in the
  pending table until the relay sends it;
* broker: a Redis with an append-only file fsynced on every write and no eviction;
* consumer: ``charge_payment`` is a ``ReliableTask``, idempotent, that records its completion in
  the transaction that writes the payment.

``./scripts/demo`` (``python -m example_project.demo``) runs it end to end.
"""
