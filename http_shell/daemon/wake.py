"""The fleet wake-up: a socket-activated updater with ``ddi_url`` set exits between polls.

Before it exits (:class:`~http_shell.daemon.idle.IdleWatch` decides when) the updater

1. journals when the next poll is due (:meth:`fleet_ddi.poller.FleetPoller.save_schedule`),
2. arms a transient systemd timer that starts its own service a little before then::

       systemd-run --unit=tope-updater --on-active=<due - lead> \\
           --timer-property=AccuracySec=1s --timer-property=RemainAfterElapse=no

   With timer options and no command, ``systemd-run`` creates only the timer
   (``tope-updater.timer``), which starts the existing unit of the same name. It elapses
   once and is unloaded (``RemainAfterElapse=no``); an earlier one still pending (the
   updater was started early, by a connection) is stopped and replaced.

Whoever starts the updater next — that timer, a connection to the socket, a restart after
a crash, the boot — polls when the journaled schedule says (at once after a reboot). The
timer fires ``lead`` seconds early: three times this process's own start (from ``exec`` to
the API listening, measured at each start) plus a second, bounded to 3…30 s, so the poll
goes out on time and hawkBit sees the interval it asked for.

``systemd-run`` talks to PID 1 over ``/run/systemd/private`` (AF_UNIX), which the unit's
hardening allows (the self-update's deadline timer uses the same call). When arming fails,
the updater does not exit: it stays resident and tries again later. It arms only when it
is the main process of its systemd service (``$SYSTEMD_EXEC_PID``; on systemd < 248, a
child of PID 1 with ``$INVOCATION_ID``): elsewhere — ``./dev.sh run``, the tests,
``systemd-socket-activate`` — nothing would start it again, and it stays resident.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from updater_fsm.ops.commands import CommandTimeout, describe_exit, run_command
from updater_fsm.ops.self_update import own_unit

if TYPE_CHECKING:
    from fleet_ddi.poller import FleetPoller

_log = structlog.get_logger(__name__)
#: Bounds of how early the timer fires before the poll is due.
MIN_LEAD_S, MAX_LEAD_S = 3.0, 30.0
_TIMER_PROPERTIES = ("AccuracySec=1s", "RemainAfterElapse=no")
_COMMAND_TIMEOUT_S = 15.0


def wake_unit(env: Mapping[str, str] | None = None) -> str | None:
    """The service a timer can start again: this process's own unit, when this process is
    that service's main process; None otherwise (nothing would start it: stay)."""
    env = os.environ if env is None else env
    unit = own_unit()
    if unit is None or not unit.endswith(".service") or "@" in unit:
        return None
    exec_pid = env.get("SYSTEMD_EXEC_PID")
    if exec_pid is not None:
        return unit if exec_pid.strip() == str(os.getpid()) else None
    # systemd < 248 does not set SYSTEMD_EXEC_PID: the main process is PID 1's own child.
    return unit if env.get("INVOCATION_ID") and os.getppid() == 1 else None


def process_age_s() -> float:
    """Seconds since this process was started (``exec``), from ``/proc/self/stat``."""
    try:
        stat = Path("/proc/self/stat").read_text(encoding="ascii")
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))


def lead_s(start_s: float) -> float:
    """How early the timer fires for a start that took ``start_s`` seconds."""
    return min(MAX_LEAD_S, max(MIN_LEAD_S, 3 * start_s + 1.0))


async def arm_timer(systemctl: Sequence[str], unit: str, in_s: float) -> str | None:
    """Arm the transient timer that starts ``unit`` in ``in_s`` seconds (replacing one
    still pending); returns None when armed, else why not."""
    base = unit.removesuffix(".service")
    prefix = list(systemctl[:-1])  # `systemctl`'s own prefix (the tests' nsenter)
    argv = [
        *prefix, "systemd-run", f"--unit={base}", f"--on-active={max(1, round(in_s * 1000))}ms",
        *(f"--timer-property={p}" for p in _TIMER_PROPERTIES),
        "--description=tope-updater: wake-up for the next fleet poll",
    ]  # fmt: skip
    problem = await _run(argv)
    if problem is not None and "already" in problem:
        # A timer armed before an early start (a connection) is still pending: replace it.
        await _run([*systemctl, "stop", f"{base}.timer"])
        problem = await _run(argv)
    return problem


async def _run(argv: list[str]) -> str | None:
    try:
        result = await run_command(argv, timeout_s=_COMMAND_TIMEOUT_S, max_output_bytes=4096)
    except (OSError, CommandTimeout) as exc:
        return str(exc)
    return None if result.returncode == 0 else describe_exit(result)


class FleetWake:
    """What :class:`~http_shell.daemon.idle.IdleWatch` asks of the fleet before an exit
    between polls, and the exit's preparation (the schedule, the timer).

    Args:
        poller: the running fleet poller.
        unit: the service the timer starts (:func:`wake_unit`).
        systemctl: the ``systemctl`` command (config ``systemctl``).
        min_s: exit only when the next poll is at least this far (``ddi_wake_min_s``).
    """

    def __init__(
        self,
        poller: FleetPoller,
        *,
        unit: str,
        systemctl: Sequence[str],
        min_s: float,
    ) -> None:
        self._poller = poller
        self.unit = unit
        self._systemctl = tuple(systemctl)
        self.min_s = min_s
        self.start_s = 0.0
        self.lead_s = lead_s(self.start_s)

    def ready(self) -> None:
        """The API listens (the idle watch begins): this start's duration sets how early
        the timer fires."""
        self.start_s = process_age_s()
        self.lead_s = lead_s(self.start_s)

    def hold_reason(self) -> str | None:
        """What of the fleet's is in flight (None: nothing)."""
        return self._poller.hold_reason()

    def seconds_to_next_poll(self) -> float:
        return self._poller.seconds_to_next_poll()

    async def prepare_exit(self) -> bool:
        """Journal the next poll and arm the timer; False (stay) when that failed."""
        try:
            due_in = await asyncio.to_thread(self._poller.save_schedule)
        except OSError as exc:
            _log.warning("fleet wake-up: schedule not saved, staying", error=str(exc))
            return False
        in_s = max(1.0, due_in - self.lead_s)
        problem = await arm_timer(self._systemctl, self.unit, in_s)
        if problem is not None:
            _log.warning("fleet wake-up: timer not armed, staying", error=problem)
            return False
        _log.info(
            "fleet wake-up armed",
            timer=f"{self.unit.removesuffix('.service')}.timer",
            in_s=round(in_s, 1),
            next_poll_in_s=round(due_in, 1),
            start_s=round(self.start_s, 2),
        )
        return True
