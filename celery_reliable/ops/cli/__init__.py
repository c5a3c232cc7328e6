"""``celery -A proj reliable ...``: operate celery_reliable from the command line.

Each subcommand lives in its own module and attaches itself to :data:`reliable`.
"""

from __future__ import annotations

from . import db as _db
from . import doctor as _doctor
from . import failed as _failed
from . import failed_replay as _failed_replay
from . import flower as _flower
from . import metrics as _metrics
from . import pending as _pending
from . import pending_resend as _pending_resend
from . import relay as _relay
from . import status as _status
from . import verify as _verify
from .base import reliable

__all__ = ["reliable"]

del _db
del _doctor
del _flower, _metrics
del _failed, _failed_replay, _pending, _pending_resend, _relay, _status
del _verify
