"""The Django admin of the reliability tables: failed tasks and pending messages.

Lists with filters and search, a read-only detail view (arguments, options and traceback laid
out for reading), and the operator's actions, each behind a Django permission: *Replay* (change)
and *Purge* (delete) for failed tasks, *Resend* (change) and *Drop* (delete) for pending
messages. The actions go through the library (:func:`celery_reliable.replay` claims a row before
sending it, a purge skips rows being replayed, a drop skips rows a relay holds), never through
plain ORM updates. Nothing is added by hand: rows come from workers and the outbox.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.utils.html import format_html

from ...exceptions import ReliableError
from ...send.replay import replay
from ...store.failures import FailureFilter, purge_failures
from ...store.pending import delete_pending, requeue_stuck
from .models import FailedTask, PendingMessage

_tasks_loaded: set[int] = set()


def _app() -> Any:
    """The current Celery app, its tasks imported (``autodiscover_tasks()`` waits for a worker to
    ask; a replay needs the task registered)."""
    from celery._state import get_current_app

    app = get_current_app()
    if id(app) not in _tasks_loaded:
        app.loader.import_default_modules()
        _tasks_loaded.add(id(app))
    return app


def _pretty(value: Any) -> str:
    return str(format_html("<pre>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False, default=str)))


class _ReadOnly(admin.ModelAdmin):
    """Rows are written by the library; a person reads them and acts on them with the actions."""

    def has_add_permission(self, request: Any) -> bool:
        return False

    def get_readonly_fields(self, request: Any, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields] + list(self.readonly_fields)

    def get_actions(self, request: Any) -> Any:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # the library's own purge / drop instead
        return actions


@admin.register(FailedTask)
class FailedTaskAdmin(_ReadOnly):
    list_display = ("id", "task_name", "task_id", "reason", "status", "exc_type", "attempts", "last_failed_at")
    list_filter = ("status", "reason", "task_name", "exc_type")
    search_fields = ("task_id", "task_name", "exc_type", "exc_message", "hostname")
    readonly_fields = ("arguments", "delivery_options", "formatted_traceback")
    fieldsets = (
        (None, {"fields": ("task_name", "task_id", "status", "reason", "attempts", "hostname")}),
        ("Arguments", {"fields": ("arguments", "delivery_options")}),
        ("Error", {"fields": ("exc_type", "exc_message", "formatted_traceback")}),
        ("When", {"fields": ("first_failed_at", "last_failed_at")}),
        ("Replay", {"fields": ("replay_count", "replayed_at", "replay_task_id", "replay_of_id")}),
    )
    actions = ("replay_selected", "purge_selected")

    @admin.display(description="args and kwargs")
    def arguments(self, obj: FailedTask) -> str:
        return _pretty({"args": obj.args, "kwargs": obj.kwargs})

    @admin.display(description="options")
    def delivery_options(self, obj: FailedTask) -> str:
        return _pretty(obj.options)

    @admin.display(description="traceback")
    def formatted_traceback(self, obj: FailedTask) -> str:
        return str(format_html("<pre>{}</pre>", obj.traceback))

    @admin.action(description="Replay the selected failed tasks", permissions=["change"])
    def replay_selected(self, request: Any, queryset: Any) -> None:
        sent, refused = 0, []
        for failure_id in queryset.values_list("id", flat=True):
            try:
                sent += replay(_app(), failure_id).sent
            except ReliableError as exc:
                refused.append(f"{failure_id}: {exc}")
        self.message_user(request, f"{sent} failed task(s) replayed.", messages.SUCCESS)
        for reason in refused:
            self.message_user(request, f"Not replayed: {reason}", messages.WARNING)

    @admin.action(description="Purge the selected failed tasks", permissions=["delete"])
    def purge_selected(self, request: Any, queryset: Any) -> None:
        ids = list(queryset.values_list("id", flat=True))
        purged = purge_failures(_app(), FailureFilter(ids=ids))
        self.message_user(request, f"{purged} failed task(s) purged (rows being replayed are kept).")


@admin.register(PendingMessage)
class PendingMessageAdmin(_ReadOnly):
    list_display = ("id", "task_name", "task_id", "status", "source", "attempts", "next_attempt_at", "created_at")
    list_filter = ("status", "source", "task_name", "tracked")
    search_fields = ("task_id", "task_name", "last_error")
    readonly_fields = ("arguments", "delivery_options")
    exclude = ("args", "kwargs", "options", "message")
    actions = ("resend_selected", "drop_selected")

    @admin.display(description="args and kwargs")
    def arguments(self, obj: PendingMessage) -> str:
        return _pretty({"args": obj.args, "kwargs": obj.kwargs})

    @admin.display(description="options")
    def delivery_options(self, obj: PendingMessage) -> str:
        return _pretty(obj.options)

    def get_readonly_fields(self, request: Any, obj: Any = None) -> list[str]:
        hidden = set(self.exclude)
        return [name for name in super().get_readonly_fields(request, obj) if name not in hidden]

    @admin.action(description="Resend the selected dead or invalid messages", permissions=["change"])
    def resend_selected(self, request: Any, queryset: Any) -> None:
        resent = requeue_stuck(_app(), list(queryset.values_list("id", flat=True)))
        self.message_user(request, f"{resent} message(s) due now; the relay sends them (only dead and invalid ones).")

    @admin.action(description="Drop the selected pending messages", permissions=["delete"])
    def drop_selected(self, request: Any, queryset: Any) -> None:
        dropped = delete_pending(_app(), list(queryset.values_list("id", flat=True)))
        self.message_user(request, f"{dropped} message(s) dropped (messages a relay holds are kept).")
