"""griffe extension for the API reference: the docstrings use Sphinx roles (:func:`x`), which
Markdown would show as typed; here each becomes inline code naming the object."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|meth|class|attr|data|exc|mod|obj):`~?([^`]+)`")


def _plain(match: re.Match[str]) -> str:
    target = match.group(1)
    if "`~" in match.group(0):  # Sphinx shows only the last name of ``~pkg.mod.Name``
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_plain, obj.docstring.value)
