"""Who may change rows from the Reliability page, and the headers and cookies that keep it safe.

No tornado handlers here: plain functions the handlers call.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from celery import Celery

from ...config import PREFIX, get_settings
from ...exceptions import ReliableError

logger = logging.getLogger(__name__)

#: The setting that allows the actions on a Flower without authentication.
OPT_IN = f"{PREFIX}flower_unauthenticated_actions"

REFUSED = (
    "Replay and purge are refused: Flower runs without authentication, so anyone who can reach its port "
    "could replay or delete failed tasks. Start it with --basic-auth or --auth, or set "
    f"{OPT_IN} = True to allow these actions without a login."
)

#: What a 503 says: the reason (with the database's host, user and name) goes to Flower's log only.
STORE_UNREACHABLE = "The celery_reliable store cannot be read or written right now; Flower's log says why."

#: The most a notice cookie's JSON may take: signed and base64-encoded it stays well under the
#: 4096 bytes browsers keep per cookie (a larger one is dropped without a word).
NOTICE_BYTES = 2000
#: Characters kept of each line of a notice.
NOTICE_LINE = 300
#: A run of this many non-blank characters (a task name, say) is shortened in a notice.
LONG_WORD = re.compile(r"\S{61,}")


def authenticated(options: Any) -> bool:
    """Flower's own test for "authentication is on": ``--basic-auth`` or ``--auth`` (OAuth, ``--auth_provider``)."""
    return bool(getattr(options, "basic_auth", None) or getattr(options, "auth", None))


def actions_refusal(options: Any, app: Celery) -> str | None:
    """Why this Flower may not change rows, or ``None`` when it may."""
    if getattr(options, "read_only", False):
        return "Flower runs in read-only mode (--read_only): replay and purge are off."
    if authenticated(options):
        return None
    try:
        allowed = get_settings(app).flower_unauthenticated_actions
    except ReliableError as exc:  # an invalid setting: refuse rather than guess
        logger.warning("celery_reliable: %s", exc)
        return REFUSED
    return None if allowed else REFUSED


def content_security_policy(nonce: str) -> str:
    """Scripts from Flower's own files and our one inline script (with ``nonce``); never framed."""
    return "; ".join(
        (
            "default-src 'self'",
            f"script-src 'self' 'nonce-{nonce}'",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self' data:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def notice_value(title: str, lines: list[str], errors: list[str], command: str = "celery -A proj") -> str:
    """The notice as JSON no longer than :data:`NOTICE_BYTES`: long lines cut, extra ones counted."""

    def cut(text: str) -> str:
        # a long name or id is shortened in its middle first, so the reason after it stays readable
        text = LONG_WORD.sub(lambda m: f"{m[0][:32]}…{m[0][-12:]}", text)
        return text if len(text) <= NOTICE_LINE else text[: NOTICE_LINE - 1] + "…"

    kept_lines = [cut(line) for line in lines]
    kept_errors = [cut(error) for error in errors]
    value = ""
    for _ in range(len(lines) + len(errors) + 1):  # one line fewer each time
        hidden = len(lines) - len(kept_lines) + len(errors) - len(kept_errors)
        more = [f"… and {hidden} more (see {command} reliable failed list)"] if hidden else []
        value = json.dumps({"title": cut(title), "lines": kept_lines + more, "errors": kept_errors})
        if len(value.encode()) <= NOTICE_BYTES or not (kept_lines or kept_errors):
            break
        if kept_lines:
            kept_lines.pop()
        else:
            kept_errors.pop()
    return value
