"""The Django application: ``"celery_reliable.contrib.django"`` in ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig


class ReliableConfig(AppConfig):
    """``migrate`` creates the reliability tables; the admin lists failed tasks and pending messages."""

    name = "celery_reliable.contrib.django"
    label = "celery_reliable"
    verbose_name = "Reliable Celery"
    default_auto_field = "django.db.models.BigAutoField"
