"""celery_reliable: a Celery task message is never silently lost."""

from __future__ import annotations

from .app import ReliableCelery
from .config import ReliableSettings, get_settings
from .exceptions import (
    BadMessageError,
    ImproperlyConfigured,
    NotJSONArgumentsError,
    PermanentError,
    PublishError,
    ReliableError,
    ReplayError,
    StoreError,
)
from .ops.doctor import Report as DoctorReport
from .ops.doctor import Result as DoctorResult
from .ops.doctor import Status as DoctorStatus
from .ops.doctor import run_checks
from .ops.metrics import ReliableCollector
from .ops.status import Summary, summary
from .ops.verify import VerifyOptions, VerifyReport, VerifySetupError, run_verify
from .send import relay as _relay  # registers celery_reliable.relay on every app
from .send.outbox import Outbox, outbox, publish_staged
from .send.publish import PublishResult, publish
from .send.relay import RelayStats, relay_once
from .send.replay import ReplayResult, replay, replay_many
from .store import cleanup as _maintenance  # registers celery_reliable.cleanup on every app
from .store.failures import FailureFilter, get_failure, list_failures, purge_failures
from .store.migrate import upgrade
from .store.models import FailedTask, FailureStatus, PendingMessage, PendingStatus, ProcessedTask
from .store.pending import count_by_status, list_pending
from .worker.install import install
from .worker.retry import RetryPolicy
from .worker.task import ReliableTask

__version__ = "0.1.0"

__all__ = [
    # settings and set-up
    "ReliableSettings",
    "get_settings",
    "install",
    "upgrade",
    # tasks
    "ReliableCelery",
    "ReliableTask",
    "RetryPolicy",
    # publishing
    "Outbox",
    "PublishResult",
    "RelayStats",
    "count_by_status",
    "list_pending",
    "outbox",
    "publish",
    "publish_staged",
    "relay_once",
    # failures and replay
    "FailedTask",
    "FailureFilter",
    "FailureStatus",
    "PendingMessage",
    "PendingStatus",
    "ProcessedTask",
    "ReplayResult",
    "get_failure",
    "list_failures",
    "purge_failures",
    "replay",
    "replay_many",
    # errors
    "BadMessageError",
    "ImproperlyConfigured",
    "NotJSONArgumentsError",
    "PermanentError",
    "PublishError",
    "ReliableError",
    "ReplayError",
    "StoreError",
    # operations
    "DoctorReport",
    "DoctorResult",
    "DoctorStatus",
    "run_checks",
    "Summary",
    "summary",
    "ReliableCollector",
    "VerifyOptions",
    "VerifyReport",
    "VerifySetupError",
    "run_verify",
]

del _maintenance, _relay
