"""The printer's availability, as the busy gate sees it.

An install stops the printer's services, so it must never start in the middle of a print.
When ``busy_probe`` is configured, the updater asks it before anything is stopped; these
are the values that answer travels in (the probe itself runs in
:mod:`updater_fsm.ops.printer_probe`, never on the event loop).
"""

from __future__ import annotations

import enum

import attrs

from updater_fsm.core.outside_text import visible

#: Longest busy reason kept (a probe's first line), in characters.
REASON_LIMIT = 300


class BusyPolicy(enum.StrEnum):
    """What ``POST /update`` does while the printer is busy."""

    #: accept, wait in ``waiting_idle`` and install the moment the printer is free
    WAIT = "wait"
    #: refuse with ``PRINTER_BUSY`` (the caller retries later)
    REFUSE = "refuse"


class PrinterGate(enum.StrEnum):
    """How the machine treats commands that stop services (from the configuration)."""

    #: no ``busy_probe``: today's behaviour, nothing is asked
    NONE = "none"
    #: ``busy_policy = wait``: an install waits for the printer in ``waiting_idle``
    WAIT = "wait"
    #: ``busy_policy = refuse``: an install while busy is refused
    REFUSE = "refuse"


def _reason(text: str) -> str:
    return visible(text, REASON_LIMIT)


@attrs.frozen
class PrinterStatus:
    """One answer of the busy probe.

    Attributes:
        free: the probe exited 0; anything else (another status, a timeout, a probe that
            cannot start or prints too much) is busy: fail safe.
        reason: the first line of the probe's output, or why it counts as busy, for people
            ("printing benchy.gcode, 43 %"); made :func:`visible` (a probe prints
            anything) and cut at :data:`REASON_LIMIT` characters.
    """

    free: bool
    reason: str = attrs.field(default="", converter=_reason)
