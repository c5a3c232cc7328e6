"""celery_reliable: a Celery task message is never silently lost.

Every worker, producer and cron job imports this package, so it loads only what sending and
running tasks need. The operator's tools (doctor, verify, metrics, the status summary) and the
schema migrations load on first use (:func:`__getattr__`); one whose optional dependency is not
installed says which extra to install.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _moved
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
from .send import relay as _relay  # registers celery_reliable.relay on every app
from .send.aoutbox import AsyncOutbox
from .send.apublish import apublish
from .send.outbox import Outbox, outbox, publish_staged
from .send.publish import PublishResult, publish
from .send.relay import RelayStats, relay_once
from .send.replay import ReplayResult, replay, replay_many
from .store import cleanup as _cleanup  # registers celery_reliable.cleanup on every app
from .store.failures import FailureFilter, get_failure, list_failures, purge_failures
from .store.models import FailedTask, FailureStatus, PendingMessage, PendingStatus, ProcessedTask
from .store.pending import count_by_status, list_pending
from .worker.install import install
from .worker.retry import RetryPolicy
from .worker.task import ReliableTask

_moved.install()  # old module paths (celery_reliable.publisher...) keep importing

if TYPE_CHECKING:
    from .ops.doctor import Report as DoctorReport
    from .ops.doctor import Result as DoctorResult
    from .ops.doctor import Status as DoctorStatus
    from .ops.doctor import run_checks
    from .ops.metrics import ReliableCollector
    from .ops.status import Summary, summary
    from .ops.verify import VerifyOptions, VerifyReport, VerifySetupError, run_verify
    from .store.migrate import upgrade

#: Names loaded on first use: name -> (module, attribute, the extra that installs what it needs).
_LAZY: dict[str, tuple[str, str, str | None]] = {
    "DoctorReport": ("celery_reliable.ops.doctor", "Report", None),
    "DoctorResult": ("celery_reliable.ops.doctor", "Result", None),
    "DoctorStatus": ("celery_reliable.ops.doctor", "Status", None),
    "run_checks": ("celery_reliable.ops.doctor", "run_checks", None),
    "ReliableCollector": ("celery_reliable.ops.metrics", "ReliableCollector", "metrics"),
    "Summary": ("celery_reliable.ops.status", "Summary", None),
    "summary": ("celery_reliable.ops.status", "summary", None),
    "VerifyOptions": ("celery_reliable.ops.verify", "VerifyOptions", None),
    "VerifyReport": ("celery_reliable.ops.verify", "VerifyReport", None),
    "VerifySetupError": ("celery_reliable.ops.verify", "VerifySetupError", None),
    "run_verify": ("celery_reliable.ops.verify", "run_verify", None),
    "upgrade": ("celery_reliable.store.migrate", "upgrade", None),
}


def __getattr__(name: str) -> Any:
    """Load an operator name on first use (see the module docstring)."""
    try:
        module_name, attribute, extra = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if extra is None or (exc.name or "").startswith(__name__):
            raise
        raise ImportError(
            f"celery_reliable.{name} needs {exc.name}, which is not installed: pip install 'celery_reliable[{extra}]'"
        ) from exc
    value = getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
    "AsyncOutbox",
    "Outbox",
    "PublishResult",
    "RelayStats",
    "count_by_status",
    "list_pending",
    "apublish",
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

del _cleanup, _moved, _relay
