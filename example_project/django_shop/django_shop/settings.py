"""Settings of the example shop. The database and the broker come from the environment:

``SHOP_DATABASE``: ``sqlite:///path``, ``postgresql://user@host:port/name`` or
``mysql://user@host:port/name`` (default: ``db.sqlite3`` beside manage.py);
``SHOP_BROKER``: the Celery broker (default: Redis on 127.0.0.1, db 14).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", "only-for-the-example")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "django_shop.urls"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "celery_reliable.contrib.django",
    "shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


def _database(url: str) -> dict[str, object]:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # IMMEDIATE: a transaction takes the write lock when it begins, so one that reads and then
        # writes waits for the other processes' writes instead of failing with "database is locked"
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": url.removeprefix("sqlite:///"),
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
        }
    engine = {"postgresql": "postgresql", "mysql": "mysql"}[parts.scheme.split("+")[0]]
    if engine == "mysql":  # Django's MySQL driver is mysqlclient; PyMySQL stands in for it here
        import pymysql

        pymysql.install_as_MySQLdb()
    return {
        "ENGINE": f"django.db.backends.{engine}",
        "NAME": parts.path.lstrip("/"),
        "USER": parts.username or "",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


DATABASES = {"default": _database(os.environ.get("SHOP_DATABASE", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"))}

# Celery, read by app.config_from_object("django.conf:settings", namespace="CELERY"). No
# CELERY_RELIABLE_DATABASE_URL: the reliability tables are in DATABASES["default"].
CELERY_BROKER_URL = os.environ.get("SHOP_BROKER", "redis://127.0.0.1:6379/14")
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("SHOP_QUEUE", "shop")
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_RELIABLE_MAX_RETRIES = 2
CELERY_RELIABLE_RETRY_BACKOFF = 0.1
CELERY_RELIABLE_RETRY_BACKOFF_MAX = 0.5
CELERY_RELIABLE_OUTBOX_GRACE = float(os.environ.get("SHOP_OUTBOX_GRACE", "10"))
