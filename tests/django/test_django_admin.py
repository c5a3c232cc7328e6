"""The admin of failed tasks and pending messages, through Django's test client in the example
shop: lists with filters and search, the detail view, and the actions behind their permissions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import broker_depth, drop_queue, unique_queue
from tests.django.shop import manage, shop_python

pytestmark = [pytest.mark.integration, pytest.mark.redis]

SCRIPT = r"""
import json
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone
from celery_reliable.contrib.django.models import FailedTask, PendingMessage

now = timezone.now()
failed = [
    FailedTask.objects.create(
        task_id=f"t{i}", task_name="shop.charge", reason="permanent", args=[i], kwargs={}, options={},
        exc_type="PermanentError", exc_message=f"card {i} expired",
        traceback="Traceback (most recent call last):\n  <b>boom</b>", first_failed_at=now, last_failed_at=now,
    ).id
    for i in range(3)
]
pending = [
    PendingMessage.objects.create(
        task_id=f"p{i}", task_name="shop.charge", args=[i], kwargs={}, options={}, source="outbox",
        status=status, attempts=20, next_attempt_at=now, created_at=now,
    ).id
    for i, status in enumerate(["dead", "invalid", "sent"])
]
User.objects.create_superuser("boss", "boss@example.com", "pw")
viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_failedtask", "view_pendingmessage"]))
out = {}
client = Client()

def rows(response):
    return response.content.count(b'class="field-task_id"')

def act(url, action, ids):
    return client.post(url, {"action": action, "_selected_action": ids}, follow=True)

FAILED, PENDING = "/admin/celery_reliable/failedtask/", "/admin/celery_reliable/pendingmessage/"
client.force_login(viewer)
out["viewer list"] = [client.get(FAILED).status_code, rows(client.get(FAILED))]
out["search"] = rows(client.get(FAILED + "?q=card+1"))
out["filter"] = [rows(client.get(FAILED + f"?status__exact={status}")) for status in ("failed", "replayed")]
out["pending filter"] = rows(client.get(PENDING + "?status__exact=dead"))
detail = client.get(f"{FAILED}{failed[0]}/change/")
shown = detail.content
out["detail"] = [detail.status_code, b"Traceback (most recent call last)" in shown,
                 b"&lt;b&gt;boom&lt;/b&gt;" in shown, b"&quot;args&quot;: [\n    0\n  ]" in shown]
out["viewer actions"] = [b"replay_selected" in client.get(FAILED).content,
                         b"drop_selected" in client.get(PENDING).content]
act(FAILED, "replay_selected", failed[:1])
act(FAILED, "purge_selected", failed[1:2])
act(PENDING, "drop_selected", pending[1:2])
out["after viewer"] = [FailedTask.objects.filter(status="failed").count(), PendingMessage.objects.count()]
out["add"] = client.get(FAILED + "add/").status_code

client.force_login(User.objects.get(username="boss"))
replayed = act(FAILED, "replay_selected", failed[:1])
out["replay message"] = b"1 failed task(s) replayed." in replayed.content
act(FAILED, "purge_selected", failed[1:2])
act(PENDING, "resend_selected", pending[:1])
act(PENDING, "drop_selected", pending[1:2])
out["after boss"] = {
    "failed": FailedTask.objects.filter(status="failed").count(),
    "replayed": FailedTask.objects.filter(status="replayed").count(),
    "rows": FailedTask.objects.count(),
    "pending": sorted(PendingMessage.objects.values_list("status", flat=True)),
}
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    "kind",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), pytest.param("mysql", marks=pytest.mark.mysql)],
)
def test_the_admin_lists_shows_and_acts_within_permissions(
    request: pytest.FixtureRequest, kind: str, redis_url: str, tmp_path: Path
) -> None:
    database = (
        f"sqlite:///{tmp_path / 'shop.sqlite3'}" if kind == "sqlite" else str(request.getfixturevalue(f"{kind}_db"))
    )
    queue = unique_queue(request)
    manage(database, "migrate", "--no-input")
    try:
        printed = shop_python(database, SCRIPT, SHOP_BROKER=redis_url, SHOP_QUEUE=queue)
        out = json.loads(printed.strip().splitlines()[-1])
        assert out["viewer list"] == [200, 3]
        assert out["search"] == 1
        assert out["filter"] == [3, 0]
        assert out["pending filter"] == 1
        assert out["detail"] == [200, True, True, True]
        # a person with view permission only sees no action, and none runs
        assert out["viewer actions"] == [False, False]
        assert out["after viewer"] == [3, 3]
        assert out["add"] == 403
        # with the permissions, each action does what the library does, once
        assert out["replay message"] is True
        assert out["after boss"] == {"failed": 1, "replayed": 1, "rows": 2, "pending": ["pending", "sent"]}
        assert broker_depth(redis_url, queue) == (1, 0)  # the replayed message
    finally:
        drop_queue(redis_url, queue)
