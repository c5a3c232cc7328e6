"""Errors raised by celery_reliable.

The tree::

    ReliableError
     ├── ImproperlyConfigured   (also celery.exceptions.ImproperlyConfigured)
     ├── StoreError             the database could not be read or written
     ├── ReplayError            a failed row could not be replayed
     ├── PublishError           a message neither sent nor kept for the relay
     │    └── BadMessageError   bad input to publish(): nothing was sent or stored
     └── PermanentError         raised by task code: store the failure now, never retry

Every message names the problem, the value at fault and the fix.
"""

from __future__ import annotations

from celery.exceptions import ImproperlyConfigured as CeleryImproperlyConfigured


class ReliableError(Exception):
    """Base class of every celery_reliable error."""


class ImproperlyConfigured(ReliableError, CeleryImproperlyConfigured):
    """A ``reliable_*`` setting or a task option is missing, unknown or of the wrong type."""


class StoreError(ReliableError):
    """The reliability tables could not be read or written (database down, not migrated)."""


class ReplayError(ReliableError):
    """A failed task could not be replayed (unknown id, unregistered task, already replayed)."""


class PublishError(ReliableError):
    """A message was refused (bad input) or could be neither sent nor stored for the relay."""


class BadMessageError(PublishError):
    """A message refused before anything was sent or stored: the arguments or options are wrong."""


class NotJSONArgumentsError(BadMessageError):
    """The arguments are not JSON, so they cannot be kept in the pending table (e.g. a pickle app)."""


class PermanentError(ReliableError):
    """Raise from a task when retrying cannot help: the failure is stored at once.

    Wrap the real cause to keep it in the stored traceback::

        raise PermanentError("customer 42 does not exist") from exc
    """
