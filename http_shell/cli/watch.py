"""``--watch``: follow the updater's progress (``GET /events``) and say how it ended.

What a watch writes, on a terminal:

* one live line per stage (``downloading``, ``verifying``, ``installing``, …), redrawn in
  place as the stage goes on and cut to the terminal's width; its bar never goes back
  within the stage, and a new stage starts a line (and a bar) of its own;
* then the outcome — the last snapshot's message (``Update to v1.1.0 complete``, ``Update
  failed: ROLLBACK_LEVEL_1_SUCCESS: v1.1.0 (cause: …)``, ``Rolled back to v1.0.0``) — whole,
  on its own last line.

Off a terminal (piped, in a log) nothing is redrawn: one line per step (each new state, with
its stage), then the outcome line. No line is written twice.
"""

from __future__ import annotations

import shutil
import sys
from typing import TYPE_CHECKING, Any, TextIO

from http_shell.cli.output import terminal_safe

if TYPE_CHECKING:  # http_shell.cli.client re-exports watch_progress and render_line
    from http_shell.cli.client import ApiClient

#: The stages a job ends in.
TERMINAL_STAGES = ("success", "failed")

_BAR_CHARS = 24


def _mb(n: float) -> str:
    return f"{n / 1_000_000:.1f} MB"


def render_line(data: dict[str, Any], width: int | None = None, *, floor: int = 0) -> str:
    """One status line: a bar, percent, stage, bytes, speed and ETA, cut to ``width``
    (default: the terminal's). ``floor``: the least percentage to show."""
    width = width or shutil.get_terminal_size((100, 20)).columns
    return _cut(_line(data, floor), width)


def _cut(line: str, width: int) -> str:
    return line[: max(20, width - 1)]


def _line(data: dict[str, Any], floor: int = 0) -> str:
    pct = max(floor, min(100, int(data.get("progress") or 0)))
    filled = _BAR_CHARS * pct // 100
    bar = "#" * filled + "-" * (_BAR_CHARS - filled)
    parts = [f"[{bar}] {pct:3d}%", f"{data.get('stage')}/{data.get('state')}"]
    if data.get("state") == "downloading":
        parts.append(
            f"{_mb(data.get('bytes_downloaded') or 0)} / {_mb(data.get('total_bytes') or 0)}"
        )
        if data.get("speed_bps"):
            parts.append(f"{_mb(data['speed_bps'])}/s")
        if data.get("eta_s") is not None:
            parts.append(f"ETA {data['eta_s']:.0f} s")
    else:
        parts.append(str(data.get("message") or ""))
    return terminal_safe("  ".join(parts))


def outcome_line(data: dict[str, Any]) -> str:
    """The outcome of a settled snapshot, whole: its message (a failure's names the error
    and its cause), or the error when there is no message."""
    text = str(data.get("message") or "") or str(data.get("error") or "") or str(data.get("state"))
    return terminal_safe(text)


def settled(data: dict[str, Any]) -> bool:
    """Nothing more happens on its own: success, failed, idle or a verified package (an
    install waiting for the printer shows the stage ``toInstall`` too, but goes on)."""
    if data.get("state") == "waiting_idle":
        return False
    return data.get("stage") in (*TERMINAL_STAGES, "idle", "toInstall")


class ProgressView:
    """Writes what a watch shows, snapshot by snapshot (see the module's docstring).

    Args:
        out: where to write.
        tty: redraw a live line in place (a terminal) or write one line per step.
        width: the live line's width on a terminal (default: the terminal's).
    """

    def __init__(self, out: TextIO, *, tty: bool, width: int | None = None) -> None:
        self.out = out
        self.tty = tty
        self.width = width
        self._stage: object = None
        self._state: object = None
        self._peak = 0
        self._drawn = ""  # the live line as last drawn ("" once it is ended)

    def show(self, data: dict[str, Any]) -> None:
        """A snapshot of a job still going on."""
        stage, state = data.get("stage"), data.get("state")
        if stage != self._stage:
            self._end_line()
            self._stage, self._peak = stage, 0
        self._peak = max(self._peak, min(100, int(data.get("progress") or 0)))
        if self.tty:
            width = self.width or shutil.get_terminal_size((100, 20)).columns
            line = _cut(_line(data, self._peak), width)
            if line != self._drawn:
                self.out.write("\r\033[K" + line)
                self._drawn = line
        elif state != self._state:
            self.out.write(_line(data, self._peak) + "\n")
        self._state = state
        self.out.flush()

    def finish(self, outcome: str | None) -> None:
        """End the live line; then write ``outcome`` (when given) whole on a line of its own."""
        self._end_line()
        if outcome is not None:
            self.out.write(outcome + "\n")
        self.out.flush()

    def _end_line(self) -> None:
        if self._drawn:
            self.out.write("\n")
            self._drawn = ""


async def watch_progress(
    client: ApiClient,
    *,
    out: TextIO = sys.stdout,
    until_terminal: bool = True,
    show_outcome: bool = False,
) -> dict[str, Any]:
    """Show the progress from the event stream; return the last snapshot.

    With ``until_terminal`` it returns once the job settled (:func:`settled`: success,
    failed, or ``idle``/``toInstall`` after work was seen, e.g. a verified download, a
    cancel or a manual rollback; at once when the first snapshot is settled already); an
    install waiting for the printer (state ``waiting_idle``) is followed until it goes on.
    With ``show_outcome`` the settled snapshot's outcome ends the output (a stream that
    ended before that says so instead); without it, the caller says how it ended.
    """
    view = ProgressView(out, tty=out.isatty())
    last: dict[str, Any] = {}
    busy_seen = done = False
    async for data in client.events():
        first = not last
        last = data
        busy_seen = busy_seen or not settled(data)
        if until_terminal and settled(data) and (busy_seen or first):
            done = True
            break
        view.show(data)
    if not show_outcome:
        view.finish(None)
    elif done or (last and settled(last)):
        view.finish(outcome_line(last))
    else:
        state = last.get("state", "nothing")
        view.finish(f"the updater's event stream ended before the job settled (last: {state})")
    return last
