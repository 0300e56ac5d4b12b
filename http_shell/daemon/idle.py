"""The idle exit: a socket-activated updater leaves once nothing has been in progress.

``tope-updater.socket`` keeps the API's port open while the service is not running and
starts the service on the next connection, so an updater with nothing to do need not stay
in memory. :class:`IdleWatch` tells ``serve`` when it may exit: after ``idle_exit_s``
seconds in which, at every look,

* the job is in a final state (``idle``, ``success``, ``failed``) — so no download, no
  install, no wait for the printer (``waiting_idle``), no updater on probation
  (``updater_probation``) — and no effect is running;
* no report waits for delivery to device-api;
* no ``/events`` stream is open;
* no API request was answered (a client polling ``/progress`` keeps the updater up rather
  than starting it again for every poll);
* no self-update probation file exists (the guard's start counter must count real starts).

Everything the updater must keep is journaled at every transition, so leaving is an
ordinary stop (``serve`` returns 0). It is not a decision of the state machine: no state
changes, the machine is simply not running until the next connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from http_shell.api.events import StreamSlots
from updater_fsm.control import State, UpdaterControl

_log = structlog.get_logger(__name__)

#: The job states in which nothing is in progress.
FINAL_STATES = frozenset({State.IDLE, State.SUCCESS, State.FAILED})


class IdleWatch:
    """Decides when a socket-activated updater has been idle for ``idle_s`` seconds.

    Args:
        idle_s: the quiet time before :meth:`run` returns (config ``idle_exit_s``).
        engine: the running engine (its record's state).
        runner_busy: whether an effect is running.
        pending_reports: how many reports wait for delivery (None: no reporter).
        streams: the API's event-stream slots.
        probation: the self-update probation file (None: the updater is not slotted).
        clock: monotonic seconds (tests may pass their own).
    """

    def __init__(
        self,
        idle_s: float,
        *,
        engine: UpdaterControl,
        runner_busy: Callable[[], bool],
        pending_reports: Callable[[], int] | None,
        streams: StreamSlots,
        probation: Path | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self._engine = engine
        self._runner_busy = runner_busy
        self._pending_reports = pending_reports
        self._streams = streams
        self._probation = probation
        self._clock = clock
        self._last_busy = clock()

    def touch(self) -> None:
        """Something happened (an API request): the quiet time starts again."""
        self._last_busy = self._clock()

    def busy(self) -> str | None:
        """What is in progress right now, or None when nothing is."""
        state = self._engine.snapshot.state
        if state not in FINAL_STATES:
            return f"job in {state}"
        if self._runner_busy():
            return "effects running"
        if self._pending_reports is not None and self._pending_reports():
            return "reports waiting for delivery"
        if self._streams.open:
            return "event streams open"
        if self._probation is not None and self._probation.exists():
            return "self-update on probation"
        return None

    async def run(self) -> None:
        """Return once nothing has been in progress for ``idle_s`` seconds."""
        step = min(max(self.idle_s / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(step)
            if self.busy() is not None:
                self._last_busy = self._clock()
                continue
            quiet = self._clock() - self._last_busy
            if quiet >= self.idle_s:
                _log.info(
                    "idle exit", idle_s=round(quiet, 1), state=str(self._engine.snapshot.state)
                )
                return
