"""Extra configuration for test Flower processes that must allow replay and purge without a login.

Loaded with ``CELERY_CONFIG_MODULE=tests.apps.flower_actions_conf``: Celery's loader reads it
under the settings ``tests.apps.workerapp`` sets itself.
"""

from __future__ import annotations

reliable_flower_unauthenticated_actions = True
