"""A small asyncio client for ``systemctl``: stop, start and inspect the updated services.

Everything goes through ``systemctl`` subprocesses (never D-Bus), so the same code drives
the device's systemd and, in tests, a sandboxed one reached with an ``nsenter`` prefix.

Semantics the install sequence relies on:

* :meth:`ServiceController.stop` is idempotent: a unit that is not running, or not even
  known to systemd (a service a new version introduces), is already stopped. A unit that
  ignores SIGTERM is SIGKILLed after ``stop_timeout``; once it is down the update goes on
  (a warning is logged). Only a unit still running after SIGKILL is ``SERVICE_STOP_TIMEOUT``.
* :meth:`ServiceController.start` resets a previous failed state, starts the unit bounded
  by ``start_timeout`` and confirms it is still up ``start_confirm_s`` later, so a
  ``Type=simple`` service that exits at once is reported as ``SERVICE_START_FAILED`` with
  systemd's reason and the last log lines.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import NoReturn

import structlog

from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.core.manifest import ServiceUnit
from updater_fsm.ops.commands import CommandResult, CommandTimeout, run_command, tail_lines

log = structlog.get_logger(__name__)

#: ActiveState values meaning "no process of the unit is running".
STOPPED_STATES = frozenset({"inactive", "failed"})
#: systemctl exit status for "no such unit" (LSB 5, "program is not installed").
_RC_NO_SUCH_UNIT = 5
_NOT_LOADED_HINTS = ("not loaded", "not found", "does not exist")
_STATUS_PROPS = (
    "LoadState",
    "ActiveState",
    "SubState",
    "Result",
    "ExecMainCode",
    "ExecMainStatus",
    "Type",
)


def _fmt_s(value: float) -> str:
    return f"{value:g}"


class ServiceController:
    """Stops, starts and inspects systemd units by running ``systemctl``.

    Args:
        systemctl: argv prefix that runs systemctl, e.g. ``("systemctl",)`` on the device
            or ``["nsenter", "-t", "1234", "-m", "-p", "systemctl"]`` for the test sandbox.
        stop_timeout: seconds a unit gets to stop gracefully (its own stop logic, SIGTERM)
            before it is SIGKILLed (contract: 10 s).
        start_timeout: seconds a unit gets to become active.
        kill_wait: seconds to wait for a unit to go down after SIGKILL.
        start_confirm_s: after a start, the unit must still be running this much later.
        poll_s: interval of state polling while waiting.
        journalctl: argv prefix for ``journalctl`` (last log lines in error details);
            default: ``systemctl``'s prefix with ``journalctl`` as the program.
        call_timeout: limit for each quick ``systemctl`` query.
    """

    def __init__(
        self,
        systemctl: Sequence[str] = ("systemctl",),
        *,
        stop_timeout: float = 10.0,
        start_timeout: float = 30.0,
        kill_wait: float = 5.0,
        start_confirm_s: float = 0.5,
        poll_s: float = 0.1,
        journalctl: Sequence[str] | None = None,
        call_timeout: float = 15.0,
    ) -> None:
        self.systemctl = tuple(systemctl)
        if not self.systemctl:
            raise ValueError("systemctl argv must not be empty")
        self.stop_timeout = stop_timeout
        self.start_timeout = start_timeout
        self.kill_wait = kill_wait
        self.start_confirm_s = start_confirm_s
        self.poll_s = poll_s
        self.call_timeout = call_timeout
        if journalctl is None:
            program = self.systemctl[-1]
            journal = program[: -len("systemctl")] + "journalctl"
            journalctl = (*self.systemctl[:-1], journal)
        self.journalctl = tuple(journalctl)

    # -- low level -------------------------------------------------------------------------

    async def _run(self, *args: str, limit_s: float | None = None) -> CommandResult:
        argv = [*self.systemctl, "--no-pager", *args]
        return await run_command(argv, timeout_s=limit_s or self.call_timeout, env=_plain_env())

    async def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show``: the unit's properties (all of them if ``props`` is empty).

        Unknown units are not an error: systemd reports ``LoadState=not-found``.

        Raises:
            UpdaterError: ``SERVICE_START_FAILED`` if systemctl cannot be run or fails.
        """
        args = ["show"]
        if props:
            args += ["-p", ",".join(props)]
        result = await self._query(*args, "--", unit)
        values: dict[str, str] = {}
        for line in result.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key] = value
        return values

    async def is_active(self, unit: str) -> str:
        """``systemctl is-active``: ``"active"``, ``"inactive"``, ``"failed"``, ``"activating"``…

        ``"unknown"`` if systemctl printed nothing.
        """
        result = await self._query("is-active", "--", unit, accept_rc=True)
        return result.stdout.strip() or "unknown"

    async def _query(self, *args: str, accept_rc: bool = False) -> CommandResult:
        try:
            result = await self._run(*args)
        except (OSError, CommandTimeout) as exc:
            raise UpdaterError(
                ErrorCode.SERVICE_START_FAILED, f"systemctl {args[0]} failed: {exc}"
            ) from exc
        if result.returncode != 0 and not accept_rc:
            raise UpdaterError(
                ErrorCode.SERVICE_START_FAILED,
                f"systemctl {' '.join(args)}: exit {result.returncode}: "
                f"{tail_lines(result.stderr)}",
            )
        return result

    async def _wait_stopped(self, unit: str, limit: float) -> str:
        """Poll until ``unit`` is inactive/failed or ``limit`` s passed; return last state."""
        deadline = time.monotonic() + limit
        while True:
            state = await self.is_active(unit)
            if state in STOPPED_STATES or state == "unknown":
                return state
            if time.monotonic() >= deadline:
                return state
            await asyncio.sleep(self.poll_s)

    # -- stop ------------------------------------------------------------------------------

    async def stop(self, unit: str) -> None:
        """Stop ``unit``: gracefully within ``stop_timeout``, else SIGKILL it.

        A unit that is not running or not loaded (unknown to systemd) is left alone.

        Raises:
            UpdaterError: ``SERVICE_STOP_FAILED`` (systemctl refused; its stderr included)
                or ``SERVICE_STOP_TIMEOUT`` (still running after SIGKILL and ``kill_wait``).
        """
        state = await self._stop_state(unit)
        if state in STOPPED_STATES:
            log.info("service.stop.not_running", unit=unit, state=state)
            return
        log.info("service.stop", unit=unit, state=state)
        try:
            result = await self._run("stop", "--no-block", "--", unit)
        except (OSError, CommandTimeout) as exc:
            raise UpdaterError(ErrorCode.SERVICE_STOP_FAILED, f"{unit}: {exc}") from exc
        if result.returncode != 0:
            if _is_not_loaded(result):
                log.info("service.stop.not_loaded", unit=unit)
                return
            raise UpdaterError(
                ErrorCode.SERVICE_STOP_FAILED,
                f"{unit}: systemctl stop exit {result.returncode}: {tail_lines(result.stderr)}",
            )
        state = await self._wait_stopped(unit, self.stop_timeout)
        if state in STOPPED_STATES or state == "unknown":
            log.info("service.stopped", unit=unit, state=state)
            return
        log.warning("service.stop.sigkill", unit=unit, state=state, stop_timeout=self.stop_timeout)
        try:
            result = await self._run("kill", "--signal=SIGKILL", "--", unit)
        except (OSError, CommandTimeout) as exc:
            raise UpdaterError(ErrorCode.SERVICE_STOP_FAILED, f"{unit}: kill: {exc}") from exc
        if result.returncode != 0 and not _is_not_loaded(result):
            raise UpdaterError(
                ErrorCode.SERVICE_STOP_FAILED,
                f"{unit}: did not stop within {_fmt_s(self.stop_timeout)} s and "
                f"systemctl kill failed: {tail_lines(result.stderr)}",
            )
        state = await self._wait_stopped(unit, self.kill_wait)
        if state in STOPPED_STATES or state == "unknown":
            log.warning("service.stopped_by_sigkill", unit=unit, stop_timeout=self.stop_timeout)
            return
        raise UpdaterError(
            ErrorCode.SERVICE_STOP_TIMEOUT,
            f"{unit}: did not stop within {_fmt_s(self.stop_timeout)} s; "
            f"still {state} {_fmt_s(self.kill_wait)} s after SIGKILL",
        )

    async def _stop_state(self, unit: str) -> str:
        try:
            props = await self.show(unit, "LoadState", "ActiveState")
        except UpdaterError as exc:
            raise UpdaterError(ErrorCode.SERVICE_STOP_FAILED, f"{unit}: {exc.detail}") from exc
        active = props.get("ActiveState", "")
        if props.get("LoadState") in {"not-found", "masked"} and active in {"", "inactive"}:
            return "inactive"
        return active or "unknown"

    async def stop_units(self, units: Sequence[ServiceUnit]) -> None:
        """Stop ``units`` one by one in descending ``restart_order`` (ties: reverse name)."""
        for unit in sorted(units, key=lambda u: (u.restart_order, u.unit), reverse=True):
            await self.stop(unit.unit)

    # -- start -----------------------------------------------------------------------------

    async def start(self, unit: str) -> None:
        """Start ``unit`` and make sure it came up.

        Resets a failed state first (a unit that failed before can start again), runs
        ``systemctl start`` bounded by ``start_timeout`` and checks the unit is still
        active ``start_confirm_s`` later (a oneshot that exited successfully also passes).

        Raises:
            UpdaterError: ``SERVICE_START_FAILED`` with ``"<unit>: <reason>; last log: …"``.
        """
        log.info("service.start", unit=unit)
        # A non-zero exit here is harmless (the unit never failed, or is not loaded yet).
        try:
            await self._run("reset-failed", "--", unit)
        except (OSError, CommandTimeout) as exc:
            raise UpdaterError(ErrorCode.SERVICE_START_FAILED, f"{unit}: {exc}") from exc
        started = time.monotonic()
        try:
            result = await self._run("start", "--", unit, limit_s=self.start_timeout)
        except CommandTimeout:
            state = await self.is_active(unit)
            await self._fail_start(
                unit, f"not active within {_fmt_s(self.start_timeout)} s (still {state})"
            )
        except OSError as exc:
            raise UpdaterError(ErrorCode.SERVICE_START_FAILED, f"{unit}: {exc}") from exc
        if result.returncode != 0:
            reason = tail_lines(result.stderr, count=2) or f"systemctl exit {result.returncode}"
            await self._fail_start(unit, reason)
        remaining = max(0.0, self.start_timeout - (time.monotonic() - started))
        await self._confirm_started(unit, remaining)
        log.info("service.started", unit=unit)

    async def _confirm_started(self, unit: str, activating_budget: float) -> None:
        """Wait out ``activating`` (within budget), then require ``start_confirm_s`` up."""
        deadline = time.monotonic() + activating_budget
        confirm_until: float | None = None
        while True:
            props = await self.show(unit, *_STATUS_PROPS)
            state = props.get("ActiveState", "unknown")
            now = time.monotonic()
            if state in {"active", "reloading"}:
                if confirm_until is None:
                    confirm_until = now + self.start_confirm_s
                if now >= confirm_until:
                    return
            elif _finished_oneshot(props):
                return
            elif state == "activating" and props.get("SubState") == "auto-restart":
                await self._fail_start(
                    unit,
                    f"exited right after start, systemd restarts it ({_describe_state(props)})",
                )
            elif state == "activating" and now < deadline:
                confirm_until = None
            else:
                if state == "activating":
                    reason = f"not active within {_fmt_s(self.start_timeout)} s (activating)"
                else:
                    reason = f"exited right after start ({_describe_state(props)})"
                await self._fail_start(unit, reason)
            await asyncio.sleep(self.poll_s)

    async def _fail_start(self, unit: str, reason: str) -> NoReturn:
        logs = await self.last_log(unit)
        detail = f"{unit}: {reason}"
        if logs:
            detail += f"; last log: {logs}"
        log.error("service.start_failed", unit=unit, reason=reason, last_log=logs)
        raise UpdaterError(ErrorCode.SERVICE_START_FAILED, detail)

    async def last_log(self, unit: str, lines: int = 5) -> str:
        """The unit's last log lines on one line: journal, else ``systemctl status``.

        Never raises: a missing journal (or journalctl) yields what ``status`` shows, and
        failing that an empty string.
        """
        try:
            journal = await run_command(
                [
                    *self.journalctl,
                    "--no-pager",
                    "-q",
                    "-o",
                    "cat",
                    "-n",
                    str(lines),
                    f"--unit={unit}",
                ],
                timeout_s=self.call_timeout,
                env=_plain_env(),
            )
            text = "\n".join(
                line for line in journal.stdout.splitlines() if not line.startswith("-- ")
            )
            if journal.returncode == 0 and text.strip():
                return tail_lines(text, count=lines)
        except (OSError, CommandTimeout):
            pass
        try:
            status = await self._run("status", "--lines", str(lines), "--", unit)
        except (OSError, CommandTimeout):
            return ""
        # Keep the informative part: state, main PID/exit code, process lines, log lines.
        keep = [
            line
            for line in status.stdout.splitlines()
            if line.strip() and not line.lstrip().startswith(("Loaded:", "Docs:", "CGroup:"))
        ]
        return tail_lines("\n".join(keep[1:]), count=lines, max_chars=500)

    async def start_units(self, units: Sequence[ServiceUnit]) -> None:
        """Start ``units`` one by one in ascending ``restart_order`` (ties: by name)."""
        for unit in sorted(units, key=lambda u: (u.restart_order, u.unit)):
            await self.start(unit.unit)


def _plain_env() -> dict[str, str]:
    """Environment for systemctl/journalctl: stable, uncoloured, unpaged output."""
    env = dict(os.environ)
    env.update({"LC_ALL": "C", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_URLIFY": "0"})
    return env


def _is_not_loaded(result: CommandResult) -> bool:
    stderr = result.stderr.lower()
    return result.returncode == _RC_NO_SUCH_UNIT or any(h in stderr for h in _NOT_LOADED_HINTS)


def _finished_oneshot(props: dict[str, str]) -> bool:
    return (
        props.get("Type") == "oneshot"
        and props.get("ActiveState") == "inactive"
        and props.get("Result") == "success"
    )


def _describe_state(props: dict[str, str]) -> str:
    parts = [f"{props.get('ActiveState', '?')}/{props.get('SubState', '?')}"]
    if props.get("LoadState") not in (None, "loaded"):
        parts.append(f"LoadState={props['LoadState']}")
    if props.get("Result"):
        parts.append(f"Result={props['Result']}")
    if props.get("ExecMainCode") == "1":  # CLD_EXITED: a plain exit status
        parts.append(f"ExecMainStatus={props.get('ExecMainStatus', '?')}")
    elif props.get("ExecMainCode") in {"2", "3"}:  # CLD_KILLED / CLD_DUMPED
        parts.append(f"killed by signal {props.get('ExecMainStatus', '?')}")
    return ", ".join(parts)
