"""The example shop end to end: migrate, orders placed in ``transaction.atomic()`` with the outbox,
a real worker (``celery -A django_shop worker``, tasks found by ``autodiscover_tasks()``) charging
them, a refused card stored as a failure and replayed with ``celery -A django_shop reliable failed
replay``. Exact counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import drop_queue, unique_queue
from tests.django.shop import manage, shop_celery, shop_env, shop_python
from tests.harness import Worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.redis]

COUNTS = """
import json
from celery_reliable.contrib.django.models import FailedTask, PendingMessage
from shop.models import Order, Payment
print(json.dumps({"paid": Order.objects.filter(status="paid").count(), "payments": Payment.objects.count(),
                  "failed": FailedTask.objects.filter(status="failed").count(),
                  "done": PendingMessage.objects.filter(status="done").count()}))
"""


class ShopWorker(Worker):
    app_module = "django_shop"
    queue_env = "SHOP_QUEUE"


@pytest.mark.parametrize(
    "kind",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), pytest.param("mysql", marks=pytest.mark.mysql)],
)
def test_a_real_worker_charges_the_orders_placed_with_the_outbox(
    request: pytest.FixtureRequest, kind: str, redis_url: str, tmp_path: Path
) -> None:
    database = (
        f"sqlite:///{tmp_path / 'shop.sqlite3'}" if kind == "sqlite" else str(request.getfixturevalue(f"{kind}_db"))
    )
    queue = unique_queue(request)
    env = {"SHOP_BROKER": redis_url, "SHOP_QUEUE": queue}
    manage(database, "migrate", "--no-input")
    worker = ShopWorker(shop_env(database, **env), tmp_path / "worker.log", f"shop-{queue}")

    def counts() -> dict[str, int]:
        return dict(json.loads(shop_python(database, COUNTS, **env).strip().splitlines()[-1]))

    try:
        worker.start()
        assert "shop.charge" in worker.output()  # found by autodiscover_tasks()
        # Given 5 orders placed with the outbox, one with a card the provider refuses
        shop_python(
            database,
            "from shop.views import place_order\n"
            "for i in range(4): place_order('ann', 100 + i)\n"
            "place_order('bob', 999, card='expired')\n",
            **env,
        )
        # Then the worker charges each valid order once and stores the refused one
        wait_for(lambda: counts() == {"paid": 4, "payments": 4, "failed": 1, "done": 5}, 60, what="charges")
        # When the card is fixed and the failure replayed
        shop_python(database, "from shop.models import Order\nOrder.objects.update(card='valid')\n", **env)
        replayed = shop_celery(database, "reliable", "failed", "replay", "1", "--yes", **env)
        assert replayed.returncode == 0, replayed.stderr
        # Then it is charged too, once
        wait_for(lambda: counts() == {"paid": 5, "payments": 5, "failed": 0, "done": 5}, 60, what="the replay")
    finally:
        worker.stop()
        drop_queue(redis_url, queue)
