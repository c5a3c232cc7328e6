"""The outbox in Django's transaction, through the example shop: the row commits with the order,
is sent on commit, is dropped with a rollback or a rolled-back savepoint, and a process that dies
between the commit and the send leaves it to the relay. The store finds Django's database itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import broker_depth, drop_queue, unique_queue
from tests.django.shop import manage, shop_python

pytestmark = [pytest.mark.integration, pytest.mark.redis]

#: prints the state the tests look at, as JSON
REPORT = """
import json
from django.db import connection
from celery_reliable import get_settings
from celery_reliable.store.engine import safe_url
from django_shop.celery import app
from shop.models import Order
with connection.cursor() as cursor:
    cursor.execute("SELECT status, count(*) FROM celery_reliable_pending_message GROUP BY status")
    pending = dict(cursor.fetchall())
print(json.dumps({"orders": Order.objects.count(), "pending": pending,
                  "store": safe_url(get_settings(app).database_url)}))
"""


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def shop(request: pytest.FixtureRequest, redis_url: str, tmp_path: Path) -> Any:
    """The shop migrated on a database of its own, with a queue of its own."""
    database = (
        f"sqlite:///{tmp_path / 'shop.sqlite3'}"
        if request.param == "sqlite"
        else str(request.getfixturevalue(f"{request.param}_db"))
    )
    queue = unique_queue(request)
    manage(database, "migrate", "--no-input")
    env = {"SHOP_BROKER": redis_url, "SHOP_QUEUE": queue, "SHOP_OUTBOX_GRACE": "0.5"}

    def run(code: str) -> dict[str, Any]:
        out = shop_python(database, "from django_shop.celery import app\n" + code + REPORT, **env)
        return dict(json.loads(out.strip().splitlines()[-1]))

    run.database, run.queue = database, queue  # type: ignore[attr-defined]
    yield run
    drop_queue(redis_url, queue)


def test_the_store_uses_djangos_database(shop: Any) -> None:
    state = shop("")
    database = shop.database.replace("mysql+pymysql", "mysql").replace("postgresql+psycopg", "postgresql")
    assert state["store"].split("://")[1] == database.split("://")[1]


def test_a_committed_order_sends_its_message_once(shop: Any, redis_url: str) -> None:
    state = shop("from shop.views import place_order\nfor i in range(3): place_order('ann', 100 + i)\n")
    assert state["orders"] == 3
    assert state["pending"] == {"sent": 3}
    assert broker_depth(redis_url, shop.queue) == (3, 0)


def test_a_rollback_sends_nothing(shop: Any, redis_url: str) -> None:
    state = shop(
        "from django.db import transaction\n"
        "from shop.views import place_order\n"
        "try:\n"
        "    with transaction.atomic():\n"
        "        place_order('ann', 100)\n"
        "        raise RuntimeError('the payment form was wrong')\n"
        "except RuntimeError:\n"
        "    pass\n"
    )
    assert (state["orders"], state["pending"]) == (0, {})
    assert broker_depth(redis_url, shop.queue) == (0, 0)


def test_a_rolled_back_savepoint_drops_its_messages_only(shop: Any, redis_url: str) -> None:
    state = shop(
        "from django.db import transaction\n"
        "from celery_reliable.contrib.django import outbox\n"
        "from shop.models import Order\n"
        "with transaction.atomic():\n"
        "    kept = Order.objects.create(customer='ann', amount_cents=1)\n"
        "    outbox().send('shop.charge', [kept.id])\n"
        "    try:\n"
        "        with transaction.atomic():\n"
        "            dropped = Order.objects.create(customer='bob', amount_cents=2)\n"
        "            outbox().send('shop.charge', [dropped.id])\n"
        "            outbox().send('shop.charge', [dropped.id], countdown=5)\n"
        "            raise RuntimeError\n"
        "    except RuntimeError:\n"
        "        pass\n"
        "    with transaction.atomic():\n"
        "        also = Order.objects.create(customer='cy', amount_cents=3)\n"
        "        outbox().send('shop.charge', [also.id])\n"
    )
    assert state["orders"] == 2
    assert state["pending"] == {"sent": 2}
    assert broker_depth(redis_url, shop.queue) == (2, 0)


def test_a_process_killed_after_the_commit_leaves_the_message_to_the_relay(shop: Any, redis_url: str) -> None:
    # Given a process that dies after its commit, before its on_commit send
    with pytest.raises(AssertionError, match="exited 9"):
        shop(
            "import os\n"
            "from django.db import transaction\n"
            "from celery_reliable.contrib.django import outbox\n"
            "from shop.models import Order\n"
            "with transaction.atomic():\n"
            "    transaction.on_commit(lambda: os._exit(9))\n"
            "    order = Order.objects.create(customer='ann', amount_cents=1)\n"
            "    outbox().send('shop.charge', [order.id])\n"
        )
    state = shop("")
    assert (state["orders"], state["pending"]) == (1, {"pending": 1})
    assert broker_depth(redis_url, shop.queue) == (0, 0)
    # When the relay runs after the outbox's grace
    state = shop("import time\nfrom celery_reliable import relay_once\ntime.sleep(0.6)\nprint(relay_once(app))\n")
    # Then the message is sent, once
    assert state["pending"] == {"sent": 1}
    assert broker_depth(redis_url, shop.queue) == (1, 0)


def test_the_row_is_the_one_the_sqlalchemy_outbox_writes(shop: Any) -> None:
    shop(
        "from datetime import datetime, timezone\n"
        "from django.db import transaction\n"
        "from sqlalchemy.orm import Session\n"
        "from celery_reliable import outbox as sa_outbox\n"
        "from celery_reliable.contrib.django import outbox\n"
        "from celery_reliable.store.engine import get_engine\n"
        "from django_shop.celery import app\n"
        "options = dict(kwargs={'note': 'ü', 'at': datetime(2026, 1, 2, tzinfo=timezone.utc)}, countdown=30,\n"
        "               expires=600, priority=3, headers={'x': 1})\n"
        "with transaction.atomic():\n"
        "    outbox().send('shop.charge', [7], task_id='django', **options)\n"
        "with Session(get_engine(app)) as session, session.begin():\n"
        "    sa_outbox(session, app).send('shop.charge', [7], task_id='sqlalchemy', **options)\n"
    )
    engine = create_engine(shop.database)
    try:
        with engine.connect() as conn:
            query = text("SELECT * FROM celery_reliable_pending_message ORDER BY id")
            rows = [dict(r) for r in conn.execute(query).mappings()]
    finally:
        engine.dispose()
    assert [r["task_id"] for r in rows] == ["django", "sqlalchemy"]
    # (the message built ahead names the task id; the times are those of each send)
    changing = {"id", "task_id", "created_at", "next_attempt_at", "eta", "expires_at", "message", "sent_at"}
    changing |= {"claim_token", "lease_expires_at"}
    first, second = ({k: v for k, v in r.items() if k not in changing} for r in rows)
    assert first == second
    assert first["status"] == "sent" and first["tracked"]  # both sent on commit, waiting for the task
    assert (rows[0]["message"] is None) == (rows[1]["message"] is None)
    for column in ("eta", "expires_at", "next_attempt_at", "created_at"):  # stored alike (SQLite: the same text form)
        assert type(rows[0][column]) is type(rows[1][column])
        assert len(str(rows[0][column])) == len(str(rows[1][column]))
