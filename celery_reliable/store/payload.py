"""JSON payloads as stored: kombu's JSON encoding, so datetimes, UUIDs and bytes survive replay.

Two markers stand in for a value that cannot be used as it is:

* ``{"__unserializable_repr__": "..."}``: a failure's arguments that were not JSON when stored
  (kept as a ``repr`` for a person to read);
* ``{"__unreadable__": "...", "error": "..."}``: a cell the database holds but that does not decode
  (say, text that is not JSON written by hand on SQLite), read as this marker instead of raising,
  so one bad cell never breaks a page or a relay pass.

Neither is ever sent: the relay and replay refuse a row that holds one.
"""

from __future__ import annotations

import json
from typing import Any

from kombu.utils import json as kombu_json

#: Key of the marker a cell that does not decode reads as.
UNREADABLE = "__unreadable__"
#: Characters of the raw cell kept in an unreadable marker.
_RAW_KEPT = 500


class NotJSONError(TypeError):
    """A value that cannot be stored as JSON."""


def to_stored(value: Any) -> Any:
    """Plain JSON data for ``value`` (kombu type markers kept for special types).

    Raises:
        NotJSONError: the value cannot be encoded (e.g. an arbitrary object).
    """
    try:
        return json.loads(kombu_json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise NotJSONError(f"cannot be stored as JSON: {exc}") from exc


def to_stored_lenient(value: Any) -> Any:
    """Like :func:`to_stored`, but keeps a ``repr`` instead of failing; used for failure rows."""
    try:
        return to_stored(value)
    except NotJSONError:
        return {"__unserializable_repr__": repr(value)[:10000]}


def unreadable_marker(raw: Any, error: BaseException | str) -> dict[str, str]:
    """What a cell that does not decode reads as: its raw text (cut short) and why."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else str(raw)
    if len(text) > _RAW_KEPT:
        text = text[:_RAW_KEPT] + f"... ({len(text)} characters)"
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {UNREADABLE: text, "error": reason[:300]}


def unreadable(value: Any) -> str | None:
    """Why ``value`` is an unreadable-cell marker (see :func:`unreadable_marker`), or None."""
    if type(value) is dict and UNREADABLE in value and set(value) <= {UNREADABLE, "error"}:
        return f"the stored cell is not readable JSON ({value.get('error')}): {str(value[UNREADABLE])[:100]!r}"
    return None


def is_replayable(value: Any) -> bool:
    """False when :func:`to_stored_lenient` had to fall back to a repr somewhere, or the cell is unreadable."""
    if isinstance(value, dict):
        if "__unserializable_repr__" in value or unreadable(value):
            return False
        return all(is_replayable(v) for v in value.values())
    if isinstance(value, list):
        return all(is_replayable(v) for v in value)
    return True


def from_stored(value: Any) -> Any:
    """The Python value of a stored payload (reverses the kombu type markers)."""
    return kombu_json.loads(json.dumps(value))
