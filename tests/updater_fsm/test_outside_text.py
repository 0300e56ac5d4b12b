"""The one sanitizer for text from outside (core/outside_text.py) and the value types that
apply it when they are built."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from updater_fsm.core.errors import ErrorCode, Failure, UpdaterError
from updater_fsm.core.outside_text import DEFAULT_LIMIT, is_visible, visible
from updater_fsm.core.printer import REASON_LIMIT, PrinterStatus
from updater_fsm.core.report_outbox import ReportOutbox
from updater_fsm.core.table import State

from .helpers import snap


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("printing benchy.gcode, 43 %", "printing benchy.gcode, 43 %"),
        ("打印中 43 %", "打印中 43 %"),
        ("a\x00b", "a\\x00b"),
        ("\x1b[2J\x1b]0;title\x07", "\\x1b[2J\\x1b]0;title\\x07"),
        ("line\r\nnext\ttab", "line\\x0d\\x0anext\\x09tab"),
        ("del\x7f c1\x85\x9b", "del\\x7f c1\\x85\\x9b"),
        ("\u202eevil\u202c \u2066iso\u2069", "\\u202eevil\\u202c \\u2066iso\\u2069"),
        ("\u200emark\u200f \u061c", "\\u200emark\\u200f \\u061c"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
    ],
)  # fmt: skip
def test_visible_shows_every_hidden_character_as_an_escape(raw: str, shown: str) -> None:
    assert visible(raw) == shown
    assert is_visible(shown)


def test_visible_bounds_the_length() -> None:
    assert visible("x" * 10, limit=5) == "xxxx…"
    assert len(visible("\x00" * 5000)) == DEFAULT_LIMIT


@given(st.text())
def test_visible_text_is_always_printable_and_bounded(raw: str) -> None:
    shown = visible(raw)
    assert is_visible(shown) and len(shown) <= DEFAULT_LIMIT
    shown.encode("utf-8")  # no lone surrogate left to refuse encoding
    if is_visible(raw) and len(raw) <= DEFAULT_LIMIT:
        assert shown == raw  # honest text is untouched


def test_the_value_types_that_carry_outside_text_apply_it() -> None:
    assert Failure(ErrorCode.POST_CMD_FAILED, "out: \x1b[31mred").detail == "out: \\x1b[31mred"
    err = UpdaterError(ErrorCode.INVALID_MANIFEST, "name '\u202egpj.exe'")
    assert err.detail == "name '\\u202egpj.exe'" and str(err).endswith("'\\u202egpj.exe'")
    assert err.failure.detail == err.detail
    reason = PrinterStatus(False, "busy\x00" + "y" * 1000).reason
    assert reason.startswith("busy\\x00y") and len(reason) == REASON_LIMIT


def test_device_apis_answer_is_shown_visible_in_healthz() -> None:
    outbox = ReportOutbox()
    outbox.offer(snap(State.DOWNLOADING))
    report = outbox.next_report(0.0)
    assert report is not None
    outbox.failed(report, 0.1, "HTTP 500: \x1b]8;;http://evil\x07click")
    assert outbox.last_error == "HTTP 500: \\x1b]8;;http://evil\\x07click"
