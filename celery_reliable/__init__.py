"""celery_reliable: a Celery task message is never silently lost."""

from __future__ import annotations

from . import maintenance as _maintenance  # registers celery_reliable.cleanup on every app
from .config import ReliableSettings, get_settings
from .exceptions import (
    ImproperlyConfigured,
    PermanentError,
    ReliableError,
    ReplayError,
    StoreError,
)
from .install import install
from .migrate import upgrade
from .replay import ReplayResult, replay, replay_many
from .retry import RetryPolicy
from .store.failures import FailureFilter, get_failure, list_failures, purge_failures
from .store.models import FailedTask, FailureStatus, ProcessedTask
from .task import ReliableTask

__version__ = "0.1.0"

__all__ = [
    # settings and set-up
    "ReliableSettings",
    "get_settings",
    "install",
    "upgrade",
    # tasks
    "ReliableTask",
    "RetryPolicy",
    # failures and replay
    "FailedTask",
    "FailureFilter",
    "FailureStatus",
    "ProcessedTask",
    "ReplayResult",
    "get_failure",
    "list_failures",
    "purge_failures",
    "replay",
    "replay_many",
    # errors
    "ImproperlyConfigured",
    "PermanentError",
    "ReliableError",
    "ReplayError",
    "StoreError",
]

del _maintenance
