"""One sanitizer for text that comes from outside the updater.

A busy probe's first line, a post_cmd's or a health probe's output, device-api's and
hawkBit's answers, a manifest's strings echoed in an error: none of it is ours, and all of
it ends up in front of someone — ``/progress``, ``/events``, device-api reports, a 409's
message, the CLI's terminal, the screen at the printer. :func:`visible` makes such text
safe to show anywhere:

* C0 and C1 control characters (NUL, ESC of terminal and OSC sequences, BEL, CR, LF, DEL…)
  and the bidirectional embeddings, overrides, isolates and marks that reorder what a
  person reads become visible escapes (``\\x1b``, ``\\u202e``), so nothing is hidden and
  nothing acts on a terminal;
* lone surrogates (which no encoder writes) become escapes too;
* the text is bounded: cut at ``limit`` characters, ending in "…".

The log keeps the raw text: it is JSON, where every control character is escaped already.
Pure; the value types that carry outside text (:class:`~updater_fsm.core.errors.Failure`,
:class:`~updater_fsm.core.printer.PrinterStatus`) apply it when they are built.
"""

from __future__ import annotations

import re

#: Longest text kept by default, in characters.
DEFAULT_LIMIT = 2000

_HIDDEN = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` with every control or reordering character shown as an escape, at most
    ``limit`` characters long (the last one "…" when cut)."""
    shown = _HIDDEN.sub(_escape, text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def is_visible(text: str) -> bool:
    """True when :func:`visible` would leave ``text`` unchanged but for its length."""
    return _HIDDEN.search(text) is None
