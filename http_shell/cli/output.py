"""What the CLI writes for people: never a raw control character.

An answer of the updater carries text from outside (a busy probe's output, a package
server's or device-api's error, a manifest's strings): every line written to a terminal
goes through the updater's one sanitizer (:func:`updater_fsm.control.visible`), which shows
control and bidi characters as escapes and bounds the line. ``--json`` output is JSON,
where they are escaped already.
"""

from __future__ import annotations

import sys
from typing import TextIO

#: Longest line written to a terminal, in characters.
MAX_LINE_CHARS = 4000


def terminal_safe(text: str) -> str:
    """``text`` with every control or bidi character shown as an escape, line by line."""
    from updater_fsm.control import visible  # imported when something is printed

    return "\n".join(visible(line, MAX_LINE_CHARS) for line in text.split("\n"))


def say(text: object, *, file: TextIO | None = None) -> None:
    """Print ``text`` for a person."""
    print(terminal_safe(str(text)), file=file if file is not None else sys.stdout, flush=True)
