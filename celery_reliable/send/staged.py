"""The post-commit send of outbox rows: what the sync and the async outbox call once a transaction committed."""

from __future__ import annotations

import logging

from celery import Celery

from ..config import get_settings
from ..store.claims import claim_rows

logger = logging.getLogger(__name__)


def post_commit_lease(publish_timeout: float) -> float:
    """How long the post-commit send holds its rows: its own bound (connect, then send or confirm,
    each within ``reliable_publish_timeout``) and a second. A producer that dies while sending
    leaves its rows to the relay this soon, not after the relay's own (longer) lease."""
    return 2 * publish_timeout + 1.0


def publish_staged(app: Celery, ids: list[int]) -> int:
    """Send committed outbox rows now (the post-commit fast path); returns how many were sent.

    Never raises: what is not sent here stays pending and the relay sends it.
    """
    from .publisher import get_publisher
    from .relay import send_rows

    try:
        settings = get_settings(app)
        lease = post_commit_lease(settings.publish_timeout)
        # the relay's own claim: one statement on PostgreSQL (no session, no pre-ping, no BEGIN and
        # COMMIT around it), and light rows when the messages go out as they were built
        light = get_publisher(app).direct_redis()
        token, rows = claim_rows(app, limit=len(ids), lease=lease, ids=ids, light=light)
        if not rows:
            return 0
        return send_rows(app, token, rows).sent
    except Exception:
        logger.warning("Post-commit send of %d outbox message(s) failed; the relay will send them", len(ids),
                       exc_info=True)  # fmt: skip
        return 0
