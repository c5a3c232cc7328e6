"""The one list of Celery's own message headers (task protocol 2).

A user header of the same name would replace Celery's in the message (``send_task`` merges user
headers over its own), so a stored ``headers`` option naming one could make a message run another
task (``task``), under another id (``id``) or at another time (``eta``). :func:`prepare` refuses
them when a message is written, the relay and replay refuse a stored row that holds one, and a
failure record drops them when it keeps a message's user headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PROTOCOL_HEADERS = frozenset(
    {
        "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit",
        "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result", "replaced_task_nesting",
        "stamped_headers", "stamps",
    }
)  # fmt: skip


def protocol_clash(headers: Mapping[str, Any]) -> list[str]:
    """The names among ``headers`` that are Celery's own message headers, sorted."""
    return sorted(str(key) for key in headers if key in PROTOCOL_HEADERS)


def without_protocol(headers: Mapping[str, Any]) -> dict[str, Any]:
    """``headers`` without Celery's own message headers."""
    return {key: value for key, value in headers.items() if key not in PROTOCOL_HEADERS}
