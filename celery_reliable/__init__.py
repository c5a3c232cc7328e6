"""celery_reliable: a Celery task message is never silently lost."""

from __future__ import annotations

from . import maintenance as _maintenance  # registers celery_reliable.cleanup on every app
from . import relay as _relay  # registers celery_reliable.relay on every app
from .app import ReliableCelery
from .config import ReliableSettings, get_settings
from .doctor import Report as DoctorReport
from .doctor import Result as DoctorResult
from .doctor import Status as DoctorStatus
from .doctor import run_checks
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
from .install import install
from .metrics import ReliableCollector
from .migrate import upgrade
from .outbox import Outbox, outbox, publish_staged
from .publisher import PublishResult, publish
from .relay import RelayStats, relay_once
from .replay import ReplayResult, replay, replay_many
from .retry import RetryPolicy
from .status import Summary, summary
from .store.failures import FailureFilter, get_failure, list_failures, purge_failures
from .store.models import FailedTask, FailureStatus, PendingMessage, PendingStatus, ProcessedTask
from .store.pending import count_by_status, list_pending
from .task import ReliableTask
from .verify import VerifyOptions, VerifyReport, VerifySetupError, run_verify

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
