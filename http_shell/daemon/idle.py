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

With ``ddi_url`` set (a :class:`FleetHold` given: the fleet wake-up,
:mod:`http_shell.daemon.wake`) it also waits until nothing of the fleet's is in flight —
no poll under way, no final feedback or attributes waiting for the server, no deployment
being followed — and the next poll is at least ``min_s`` away; then the hold journals that
poll and arms the timer that starts the updater again in time for it, and only if that
worked does :meth:`IdleWatch.run` return. The start itself is not activity there (only an
API request is): an updater started by the timer or at boot leaves once its poll is done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog

from http_shell.api.events import StreamSlots
from updater_fsm.control import State, UpdaterControl

_log = structlog.get_logger(__name__)

#: The job states in which nothing is in progress.
FINAL_STATES = frozenset({State.IDLE, State.SUCCESS, State.FAILED})


class FleetHold(Protocol):
    """The fleet's part in an exit between polls (:class:`http_shell.daemon.wake.FleetWake`)."""

    #: exit only when the next poll is at least this many seconds away
    min_s: float

    def ready(self) -> None: ...

    def hold_reason(self) -> str | None: ...

    def seconds_to_next_poll(self) -> float: ...

    async def prepare_exit(self) -> bool: ...


class IdleWatch:
    """Decides when a socket-activated updater has been idle for ``idle_s`` seconds.

    Args:
        idle_s: the quiet time before :meth:`run` returns (config ``idle_exit_s``).
        engine: the running engine (its record's state).
        runner_busy: whether an effect is running.
        pending_reports: how many reports wait for delivery (None: no reporter).
        streams: the API's event-stream slots.
        probation: the self-update probation file (None: the updater is not slotted).
        fleet: the fleet wake-up (None: no ``ddi_url``).
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
        fleet: FleetHold | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self._engine = engine
        self._runner_busy = runner_busy
        self._pending_reports = pending_reports
        self._streams = streams
        self._probation = probation
        self.fleet = fleet
        self._clock = clock
        # Quiet from the start on, except for a fleet device: its start (by the wake-up
        # timer, at boot) is no client's, and it leaves once its poll is done.
        self._last_busy = clock() if fleet is None else clock() - idle_s

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
        if self.fleet is not None:
            return self.fleet.hold_reason()
        return None

    def _quiet(self) -> bool:
        if self.busy() is not None:
            self._last_busy = self._clock()
            return False
        return self._clock() - self._last_busy >= self.idle_s

    async def run(self) -> None:
        """Return once nothing has been in progress for ``idle_s`` seconds (with a fleet:
        and the next poll is far enough, and the wake-up for it is armed)."""
        if self.fleet is not None:
            self.fleet.ready()
        # A fleet device looks every second: it leaves soon after its poll.
        step = min(max(self.idle_s / 4, 0.05), 5.0 if self.fleet is None else 1.0)
        while True:
            await asyncio.sleep(step)
            if not self._quiet():
                continue
            fleet = self.fleet
            next_poll_s = None
            if fleet is not None:
                next_poll_s = fleet.seconds_to_next_poll()
                if next_poll_s < fleet.min_s:
                    continue  # the poll is near: staying costs less than a start
                if not await fleet.prepare_exit():
                    self._last_busy = self._clock()  # try again after another idle_s
                    continue
                if not self._quiet():  # a request came in meanwhile: the timer is harmless
                    continue
            _log.info(
                "idle exit",
                idle_s=round(self._clock() - self._last_busy, 1),
                state=str(self._engine.snapshot.state),
                next_poll_in_s=round(next_poll_s, 1) if next_poll_s is not None else None,
            )
            return
