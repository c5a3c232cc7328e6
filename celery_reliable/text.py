"""Stored text made safe to show: control characters written out instead of acted on.

Task names, exception messages, tracebacks, hostnames and errors read back from the tables come
from whoever could publish a message or raise an exception. Printed raw, an escape sequence
in them can retitle, clear or rewrite an operator's terminal, a carriage return or bidi override
can hide what a line really says, and a newline can fake a table row. :func:`printable` writes
each such character as a Python-style escape (``\\x1b``, ``\\u202e``) so it is seen, not obeyed.
"""

from __future__ import annotations

#: Unicode controls that reorder or break text without being C0/C1 controls.
_FORMAT = (
    "\u061c"  # Arabic letter mark
    "\u200e\u200f"  # left-to-right / right-to-left mark
    "\u2028\u2029"  # line / paragraph separator
    "\u202a\u202b\u202c\u202d\u202e"  # bidi embeddings and overrides
    "\u2066\u2067\u2068\u2069"  # bidi isolates
)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


#: C0 controls, DEL, C1 controls and the characters above, each mapped to its escape.
_TABLE = {code: _escape(chr(code)) for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_TABLE.update({ord(c): _escape(c) for c in _FORMAT})
#: The same, keeping newlines and tabs (tracebacks, multi-line reports).
_MULTILINE = {code: value for code, value in _TABLE.items() if chr(code) not in "\n\t"}


def printable(text: object, multiline: bool = False) -> str:
    """``text`` with every terminal control character escaped; ``multiline`` keeps ``\\n`` and ``\\t``."""
    return str(text).translate(_MULTILINE if multiline else _TABLE)
