"""The shop's Celery app, configured from Django's settings (``CELERY_*``)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_shop.settings")

# Every task is a ReliableTask (a class given here: Celery's Django fixup would otherwise make
# its own DjangoTask the base).
app = Celery("django_shop", task_cls="celery_reliable:ReliableTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
