"""What the screen accepts from the updater: a ``/progress`` data object, read defensively.

The screen draws text that came over a socket. Whatever that socket says — a hostile or
broken server, a proxy's error page, an updater of another version — the screen must not
crash, freeze or draw something it cannot render. :func:`read_snapshot` is the one door:

* only the keys the view uses are kept, each with the type it must have (a number is a
  finite number between 0 and 2**53, a version or a message a string); a key of the wrong
  type, or a data object that is not an object, raises :class:`Unreadable`, which the
  follower turns into a "cannot read the updater" banner and a reconnect;
* every string is made drawable: control characters (C0, C1, DEL), bidirectional overrides
  and isolates, and lone surrogates become visible escapes (``\\x00``, ``\\u202e``), and a
  string is cut at :data:`MAX_TEXT` characters.

Pure: no I/O, no pygame, so it is tested as plain functions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

#: Longest string kept from the updater (characters); longer ones end in "…".
MAX_TEXT = 400
#: Largest number accepted (counts of bytes, seconds): beyond it the answer is nonsense.
MAX_NUMBER = 2**53

_STRINGS = (
    "state",
    "stage",
    "message",
    "error",
    "version",
    "current_version",
    "previous_version",
    "factory_version",
    "from_version",
)
_NUMBERS = ("progress", "bytes_downloaded", "total_bytes", "speed_bps", "eta_s")

# C0 (but not the space), DEL and C1; bidirectional embeddings, overrides, isolates and
# marks; lone surrogates (JSON's "\ud800" decodes to one, and no font can draw it).
_UNDRAWABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


class Unreadable(ValueError):
    """The updater's answer cannot be read: too big, not JSON, or not the expected shape."""


def drawable(value: str, limit: int = MAX_TEXT) -> str:
    """``value`` with every character a screen must not draw raw shown as an escape, and
    at most ``limit`` characters long."""
    cleaned = _UNDRAWABLE.sub(_escape, value)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def read_snapshot(data: object) -> dict[str, Any]:
    """The drawable snapshot in ``data`` (the ``data`` object of ``GET /progress`` or one
    ``/events`` message); :class:`Unreadable` when it is not one."""
    if not isinstance(data, Mapping):
        raise Unreadable(f"the progress data is a {type(data).__name__}, not an object")
    state = data.get("state")
    if not isinstance(state, str) or not state:
        raise Unreadable("the progress data has no state")
    snap: dict[str, Any] = {}
    for key in _STRINGS:
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise Unreadable(f"{key} is a {type(value).__name__}, not a string")
        snap[key] = drawable(value)
    for key in _NUMBERS:
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Unreadable(f"{key} is a {type(value).__name__}, not a number")
        if not math.isfinite(value) or not 0 <= value <= MAX_NUMBER:
            raise Unreadable(f"{key} is out of range")
        snap[key] = value
    retry = data.get("retry")
    if retry is not None:
        snap["retry"] = _read_retry(retry)
    return snap


def _read_retry(value: object) -> dict[str, Any]:
    """``retry``: why a download waits, in how many seconds, which attempt of how many."""
    if not isinstance(value, Mapping):
        raise Unreadable(f"retry is a {type(value).__name__}, not an object")
    reason = value.get("reason")
    if not isinstance(reason, str):
        raise Unreadable("retry.reason is not a string")
    out: dict[str, Any] = {"reason": drawable(reason)}
    for key in ("in_s", "attempt", "attempts"):
        number = value.get(key)
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise Unreadable(f"retry.{key} is not a number")
        if not math.isfinite(number) or not 0 <= number <= MAX_NUMBER:
            raise Unreadable(f"retry.{key} is out of range")
        out[key] = number
    return out
