"""The Lua scripts Redis runs for the broker layer, kept as files beside this module."""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def script(name: str) -> str:
    """The text of ``<name>`` in this folder."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
