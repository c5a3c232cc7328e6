"""Configuration for the test Flower that replays ten thousand rows of made-up task names.

Loaded with ``CELERY_CONFIG_MODULE=tests.apps.flower_bulk_conf`` (under what ``tests.apps.workerapp``
sets itself): replay and purge allowed without a login, and the ``flood.*`` names accepted as tasks
of another code base, so a replay sends them.
"""

from __future__ import annotations

reliable_flower_unauthenticated_actions = True
reliable_external_tasks = ["flood.*"]
