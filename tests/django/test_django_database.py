"""The store's URL derived from Django's DATABASES, and the outbox refusing a database the relay
does not read. Each case runs in a process of its own (Django is configured once per process)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.django.shop import SHOP, manage, shop_env, shop_python
from tests.harness import PYTHON

CASES = r"""
import json, pymysql
pymysql.install_as_MySQLdb()
from django.conf import settings
settings.configure(INSTALLED_APPS=["celery_reliable.contrib.django"], USE_TZ=True, DATABASES={
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "relative.sqlite3"},
    "pg": {"ENGINE": "django.db.backends.postgresql", "NAME": "shop", "USER": "app", "PASSWORD": "p@ss",
           "HOST": "db.internal", "PORT": "6432", "OPTIONS": {"sslmode": "require", "pool": False}},
    "pg_socket": {"ENGINE": "django.db.backends.postgresql", "NAME": "shop", "HOST": "/run/postgresql"},
    "maria": {"ENGINE": "django.db.backends.mysql", "NAME": "shop", "USER": "root", "HOST": "127.0.0.1",
              "OPTIONS": {"charset": "utf8mb4"}},
    "memory": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    "local_time": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x.sqlite3", "TIME_ZONE": "Europe/Paris"},
})
import django
django.setup()
from celery import Celery
from celery_reliable import get_settings
from celery_reliable.contrib.django import database_url
out = {}
for alias in ["default", "pg", "pg_socket", "maria", "memory", "local_time", "nope"]:
    try:
        out[alias] = database_url(alias)
    except Exception as exc:
        out[alias] = f"{type(exc).__name__}: {exc}"
app = Celery("a", set_as_current=False)
app.conf.reliable_database_alias = "pg"
explicit = Celery("b", set_as_current=False)
explicit.conf.reliable_database_url = "sqlite:////elsewhere.sqlite3"
out["app"] = [get_settings(app).database_url, get_settings(explicit).database_url]
print(json.dumps(out))
"""


def test_urls_derived_from_databases(tmp_path: Path) -> None:
    done = subprocess.run(
        [PYTHON, "-c", CASES], cwd=tmp_path, env=shop_env("sqlite:///unused"), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["default"] == f"sqlite:///{tmp_path / 'relative.sqlite3'}"
    assert out["pg"] == "postgresql+psycopg://app:p%40ss@db.internal:6432/shop?sslmode=require"
    assert out["pg_socket"] == "postgresql+psycopg:///shop?host=%2Frun%2Fpostgresql"
    assert out["maria"] == "mysql+pymysql://root@127.0.0.1/shop?charset=utf8mb4"
    assert out["memory"].startswith("ImproperlyConfigured: DATABASES['memory'] is an in-memory SQLite database")
    assert out["local_time"].startswith("ImproperlyConfigured: DATABASES['local_time']['TIME_ZONE'] = 'Europe/Paris'")
    assert out["nope"].startswith("ImproperlyConfigured: reliable_database_alias 'nope'")
    assert out["app"] == [out["pg"], "sqlite:////elsewhere.sqlite3"]


def test_the_outbox_refuses_a_database_the_relay_does_not_read(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    manage(database, "migrate", "--no-input")
    printed = shop_python(
        database,
        "from celery_reliable import ImproperlyConfigured\n"
        "from celery_reliable.config import reset_settings\n"
        "from celery_reliable.contrib.django import outbox\n"
        "from django_shop.celery import app\n"
        "from django.db import transaction\n"
        f"app.conf.reliable_database_url = 'sqlite:///{tmp_path / 'other.sqlite3'}'\n"
        "reset_settings(app)\n"
        "try:\n"
        "    with transaction.atomic():\n"
        "        outbox().send('shop.charge', [1])\n"
        "except ImproperlyConfigured as exc:\n"
        "    print(exc)\n"
        "from celery_reliable.contrib.django.models import PendingMessage\n"
        "print(PendingMessage.objects.count())\n",
    )
    refusal, rows = printed.strip().splitlines()[-2:]
    assert refusal.startswith("outbox(using='default'): the pending table is in sqlite:///")
    assert rows == "0"


@pytest.mark.parametrize("module", ["apps", "models", "fields", "admin", "outbox", "database"])
def test_every_module_of_the_app_imports_with_django_set_up(module: str) -> None:
    shop_python(f"sqlite:///{SHOP / 'never-created.sqlite3'}", f"import celery_reliable.contrib.django.{module}\n")
