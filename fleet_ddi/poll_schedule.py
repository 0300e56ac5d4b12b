"""When the next poll is due, kept across an exit between polls (the fleet wake-up).

A socket-activated updater with ``ddi_url`` set exits between polls and is started again by
a timer just before the next one (``http_shell/daemon/wake.py``). Whoever starts it — that
timer, a connection to the API's socket that comes early, a restart after a crash — must
poll when the server's interval says, not at once: so before it exits the poller writes
here when the next poll is due (temp, fsync, rename, fsync dir), with its count of failed
polls (an unreachable server's backoff goes on doubling across the exits).

The time is ``CLOCK_BOOTTIME`` of the boot the file was written in (``boot_id``): no clock
step (NTP, a board without a real-time clock) moves it. After a reboot, or when the file
cannot be read, the poll is due at once, as it always was at a start; a due time further
away than the interval it came from is not believed either (due at once).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import attrs
import structlog

from updater_fsm import durable

_log = structlog.get_logger(__name__)
_SCHEMA = 1
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot's id (``""`` where the kernel has none to give)."""
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return ""


def boottime() -> float:
    """Seconds since this boot, suspend included: the schedule's clock."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@attrs.frozen
class Schedule:
    """What a start reads back: seconds until the poll is due (0: now), failed polls."""

    due_in_s: float = 0.0
    failed_polls: int = 0


class PollSchedule:
    """``<state dir>/fleet/next-poll.json``."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir / "fleet"
        self.path = self._dir / "next-poll.json"

    def load(self) -> Schedule:
        """The schedule an earlier process left; due now when there is none to believe."""
        try:
            data = json.loads(self.path.read_bytes())
            if data.get("schema") != _SCHEMA:
                raise ValueError(f"schema {data.get('schema')!r}")
            due, interval = float(data["due_boottime"]), float(data["interval_s"])
            failed = int(data["failed_polls"])
            same_boot = data["boot_id"] == boot_id() != ""
        except FileNotFoundError:
            return Schedule()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _log.warning("fleet poll schedule unreadable: polling now", error=str(exc))
            return Schedule()
        if not same_boot:
            return Schedule(0.0, max(failed, 0))
        due_in = due - boottime()
        if not 0.0 < due_in <= interval + 1.0:
            due_in = 0.0
        return Schedule(due_in, max(failed, 0))

    def save(self, due_in_s: float, interval_s: float, failed_polls: int) -> None:
        """The next poll is due ``due_in_s`` seconds from now (of an ``interval_s`` wait)."""
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {
            "schema": _SCHEMA,
            "boot_id": boot_id(),
            "due_boottime": round(boottime() + due_in_s, 3),
            "interval_s": round(interval_s, 3),
            "failed_polls": failed_polls,
        }
        durable.atomic_write_bytes(
            self.path, json.dumps(data).encode(), mode=0o600, point="fleet:schedule_saved"
        )
