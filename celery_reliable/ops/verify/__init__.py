"""``celery -A proj reliable verify``: a bounded loss check against the application's own broker
and database, with probe workers of its own that it kills while they work.

See ``docs/verify.md``. The probe tasks are registered only where a check runs.
"""

from __future__ import annotations

from .plan import PROBES, VerifyOptions, VerifySetupError
from .report import VerifyReport
from .run import run_verify

__all__ = ["PROBES", "VerifyOptions", "VerifyReport", "VerifySetupError", "run_verify"]
