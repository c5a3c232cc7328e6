"""Control characters in stored text are written out, never printed raw."""

from __future__ import annotations

import pytest

from celery_reliable.ops.cli.base import table
from celery_reliable.text import printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
        ("a\rb", "a\\x0db"),
        ("\x9b31m", "\\x9b31m"),  # C1 CSI
        ("\x7f\x00", "\\x7f\\x00"),
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
        ("\u2066x\u2069", "\\u2066x\\u2069"),
        ("a\u2028b", "a\\u2028b"),
        ("plain ünïcödé \u2013 text, 日本", "plain ünïcödé \u2013 text, 日本"),
    ],
)
def test_printable_escapes_controls_and_bidi_only(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert printable(raw, multiline=True) == shown


def test_multiline_keeps_newlines_and_tabs_only() -> None:
    assert printable("line 1\n\tline 2\r\n", multiline=True) == "line 1\n\tline 2\\x0d\n"
    assert printable("line 1\n\tline 2") == "line 1\\x0a\\x09line 2"


def test_a_table_cell_cannot_fake_a_row() -> None:
    out = table(["id", "task"], [(1, "t.a\n2  t.fake")])
    assert out.splitlines() == ["id  task", "1   t.a\\x0a2  t.fake"]
