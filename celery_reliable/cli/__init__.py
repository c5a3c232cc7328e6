"""``celery -A proj reliable ...``: operate celery_reliable from the command line.

Each subcommand lives in its own module and attaches itself to :data:`reliable`.
"""

from __future__ import annotations

from . import db as _db
from .base import reliable

__all__ = ["reliable"]

del _db
