"""JSON payloads as stored: kombu's JSON encoding, so datetimes, UUIDs and bytes survive replay."""

from __future__ import annotations

import json
from typing import Any

from kombu.utils import json as kombu_json


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


def is_replayable(value: Any) -> bool:
    """False when :func:`to_stored_lenient` had to fall back to a repr somewhere."""
    if isinstance(value, dict):
        if "__unserializable_repr__" in value:
            return False
        return all(is_replayable(v) for v in value.values())
    if isinstance(value, list):
        return all(is_replayable(v) for v in value)
    return True


def from_stored(value: Any) -> Any:
    """The Python value of a stored payload (reverses the kombu type markers)."""
    return kombu_json.loads(json.dumps(value))
