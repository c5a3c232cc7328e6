"""The reliability tables as Django models: the admin reads and changes them, migrate creates them.

The columns, their types, nullability, indexes and constraint names are those of the SQLAlchemy
models in :mod:`celery_reliable.store.models` (a test compares the two schemas on SQLite,
PostgreSQL and MariaDB); the rest of the library reads and writes the tables through SQLAlchemy.
Times are stored in UTC.
"""

from __future__ import annotations

from django.db import models

from ...store.models import FailureStatus, PendingStatus
from .fields import JSONColumn, KeyColumn, SerialKey, TableIndex, TextColumn

_OPEN = "status IN ('pending', 'claimed')"
_DELIVERED = "status IN ('sent', 'done')"


def _ix(table: str, column: str, where: str | None = None, name: str | None = None) -> TableIndex:
    return TableIndex(fields=[column], name=name or f"ix_{table}_{column}", where=where)


class FailedTask(models.Model):
    """A task that will not be retried again (see :class:`celery_reliable.FailedTask`)."""

    STATUSES = [(s, s) for s in FailureStatus.ALL]

    id = SerialKey(primary_key=True)
    task_id = models.CharField(max_length=255)
    task_name = models.CharField(max_length=255)
    reason = models.CharField(max_length=32)
    status = models.CharField(max_length=16, choices=STATUSES, default=FailureStatus.FAILED)
    args = JSONColumn(null=True)
    kwargs = JSONColumn(null=True)
    options = JSONColumn(null=True)
    raw_message = JSONColumn(null=True)
    exc_type = models.CharField(max_length=255, default="")
    exc_message = TextColumn(default="")
    traceback = TextColumn(default="")
    attempts = models.IntegerField(default=1)
    hostname = models.CharField(max_length=255, default="")
    first_failed_at = models.DateTimeField()
    last_failed_at = models.DateTimeField()
    replay_of_id = models.BigIntegerField(null=True)
    replay_task_id = models.CharField(max_length=255, null=True)
    replayed_at = models.DateTimeField(null=True)
    replay_count = models.IntegerField(default=0)

    class Meta:
        db_table = "celery_reliable_failed_task"
        verbose_name = "failed task"
        constraints = [models.UniqueConstraint(fields=["task_id"], name="uq_celery_reliable_failed_task_task_id")]
        indexes = [
            _ix(db_table, "task_name"),
            _ix(db_table, "status"),
            _ix(db_table, "last_failed_at"),
            _ix(db_table, "exc_type"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}]"


class ProcessedTask(models.Model):
    """A task id that completed (idempotent tasks)."""

    task_id = KeyColumn(max_length=255, primary_key=True)
    task_name = models.CharField(max_length=255)
    completed_at = models.DateTimeField()

    class Meta:
        db_table = "celery_reliable_processed_task"
        indexes = [_ix(db_table, "completed_at")]


class PendingMessage(models.Model):
    """A task message not known to be in the broker yet (see :class:`celery_reliable.PendingMessage`)."""

    STATUSES = [(s, s) for s in (*PendingStatus.DELIVERED, PendingStatus.PENDING, PendingStatus.CLAIMED,
                                 PendingStatus.DEAD, PendingStatus.EXPIRED, PendingStatus.INVALID)]  # fmt: skip

    id = SerialKey(primary_key=True)
    task_id = models.CharField(max_length=255)
    task_name = models.CharField(max_length=255)
    args = JSONColumn(null=True)
    kwargs = JSONColumn(null=True)
    options = JSONColumn(null=True)
    eta = models.DateTimeField(null=True)
    expires_at = models.DateTimeField(null=True)
    source = models.CharField(max_length=16)
    status = models.CharField(max_length=16, choices=STATUSES, default=PendingStatus.PENDING)
    attempts = models.IntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    last_error = TextColumn(default="")
    claim_token = models.CharField(max_length=36, null=True)
    lease_expires_at = models.DateTimeField(null=True)
    created_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True)
    message = TextColumn(null=True)
    tracked = models.BooleanField(default=False, db_default=False)
    done_at = models.DateTimeField(null=True)

    class Meta:
        db_table = "celery_reliable_pending_message"
        verbose_name = "pending message"
        indexes = [
            _ix(db_table, "task_id"),
            _ix(db_table, "id", _OPEN, name=f"ix_{db_table}_open"),
            _ix(db_table, "sent_at", _DELIVERED),
        ]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}]"


class VerifyEffect(models.Model):
    """One run of a ``reliable verify`` probe task."""

    id = SerialKey(primary_key=True)
    run_id = models.CharField(max_length=32)
    seq = models.IntegerField()
    task_id = models.CharField(max_length=255)
    pid = models.IntegerField()
    created_at = models.DateTimeField()

    class Meta:
        db_table = "celery_reliable_verify_effect"
        indexes = [_ix(db_table, "run_id")]
