"""The Django outbox against Celery's ``delay_on_commit``: one committed transaction each.

    python -m bench.bench_django [--n 500] [--runs 5] [--pg-url postgresql+psycopg://postgres@127.0.0.1/test]
                                 [--redis-url redis://127.0.0.1:6379/13]

Each transaction creates an order (the example shop's model) and sends its charge, then commits;
the time is until ``atomic()`` returns, which includes the ``on_commit`` send in both cases:

* ``outbox``: ``outbox().send("shop.charge", [order.id])``: a pending row in the transaction,
  then claim, send and mark after the commit;
* ``delay_on_commit``: Celery's ``DjangoTask.delay_on_commit(order.id)``: sent from ``on_commit``;
* ``order only``: the transaction without a message, for reference.

Variants are interleaved run by run; the median of the runs is printed. Everything runs on
127.0.0.1: a PostgreSQL database created and dropped here, one Redis list of a unique name in
``--redis-url``'s database (deleted at the end; the server is never flushed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
SHOP = ROOT / "example_project" / "django_shop"


def _database(pg_url: str) -> tuple[str, Callable[[], None]]:
    name = f"reliable_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()

    return f"{pg_url.rpartition('/')[0]}/{name}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="transactions per variant and run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()

    url, drop = _database(args.pg_url)
    queue = f"bench-django-{uuid.uuid4().hex[:8]}"
    os.environ.update(SHOP_DATABASE=url, SHOP_BROKER=args.redis_url, SHOP_QUEUE=queue,
                      DJANGO_SETTINGS_MODULE="django_shop.settings")  # fmt: skip
    sys.path[:0] = [str(SHOP), str(ROOT)]
    try:
        import django

        django.setup()
        from celery.contrib.django.task import DjangoTask
        from django.core.management import call_command
        from django.db import transaction
        from django_shop.celery import app
        from shop.models import Order

        from celery_reliable.contrib.django import outbox

        call_command("migrate", verbosity=0)
        app.loader.import_default_modules()

        @app.task(name="shop.charge_plain", base=DjangoTask)
        def charge_plain(order_id: int) -> None: ...

        def with_outbox() -> None:
            with transaction.atomic():
                order = Order.objects.create(customer="ann", amount_cents=100)
                outbox().send("shop.charge", [order.id])

        def with_delay_on_commit() -> None:
            with transaction.atomic():
                order = Order.objects.create(customer="ann", amount_cents=100)
                charge_plain.delay_on_commit(order.id)

        def order_only() -> None:
            with transaction.atomic():
                Order.objects.create(customer="ann", amount_cents=100)

        variants = {"outbox": with_outbox, "delay_on_commit": with_delay_on_commit, "order only": order_only}
        for run in variants.values():  # warm up: connections, first builds
            for _ in range(20):
                run()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.runs):
            for name, run in variants.items():
                start = time.perf_counter()
                for _ in range(args.n):
                    run()
                times[name].append((time.perf_counter() - start) / args.n * 1e6)
        import redis

        client = redis.Redis.from_url(args.redis_url)
        sent = int(client.llen(queue))
        client.delete(queue, f"_kombu.binding.{queue}")
        client.close()
        expected = (args.runs * args.n + 20) * 2
        base = statistics.median(times["delay_on_commit"])
        print(f"{args.runs} runs x {args.n} transactions, PostgreSQL + Redis; messages in Redis: {sent} "
              f"(expected {expected})")  # fmt: skip
        print("| transaction | median µs | runs (µs) | vs delay_on_commit |")
        print("|---|---|---|---|")
        for name, values in times.items():
            median = statistics.median(values)
            spread = ", ".join(f"{v:.0f}" for v in values)
            print(f"| {name} | {median:.0f} | {spread} | {median / base:.2f}x |")
        from django.db import connections

        connections.close_all()
        from celery_reliable.store.engine import dispose

        dispose(app)
    finally:
        drop()


if __name__ == "__main__":
    main()
