"""Asking the printer whether it is free: the busy gate's probe.

``busy_probe`` is a shell command: exit status 0 means the printer is free; any other
status, a timeout, a failure to start it, or an answer longer than
:data:`PROBE_OUTPUT_LIMIT` means busy — an install must never start because a probe broke.
The first line of its output is the reason shown to people ("printing benchy.gcode,
43 %"). The probe runs as a child process in its own session (a timeout kills its whole
process group), read without blocking the event loop, with bounded memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from updater_fsm.core.printer import PrinterStatus
from updater_fsm.ops.commands import CommandTimeout, describe_exit, run_command

log = structlog.get_logger(__name__)

#: An answer longer than this is not a status line: the probe counts as broken (busy).
PROBE_OUTPUT_LIMIT = 4096
#: How much of the first line is shown to people.
REASON_MAX_CHARS = 200


async def probe_printer(command: str, *, timeout_s: float) -> PrinterStatus:
    """Run ``command`` once and read its answer (never raises: trouble is "busy")."""
    try:
        result = await run_command(
            command, timeout_s=timeout_s, max_output_bytes=PROBE_OUTPUT_LIMIT
        )
    except CommandTimeout:
        status = PrinterStatus(False, f"the busy probe did not answer within {timeout_s:g} s")
    except OSError as exc:
        status = PrinterStatus(False, f"the busy probe cannot run: {exc.strerror or exc}")
    else:
        if max(result.stdout_bytes, result.stderr_bytes) > PROBE_OUTPUT_LIMIT:
            printed = max(result.stdout_bytes, result.stderr_bytes)
            status = PrinterStatus(
                False,
                f"the busy probe printed {printed} bytes (more than {PROBE_OUTPUT_LIMIT}):"
                " not a status line",
            )
        elif result.returncode == 0:
            status = PrinterStatus(True, _first_line(result.stdout) or "free")
        else:
            reason = _first_line(result.stdout)
            status = PrinterStatus(
                False, reason or f"the busy probe says busy ({describe_exit(result)})"
            )
    log.debug("printer.probed", free=status.free, reason=status.reason)
    return status


def configured_probe(
    command: str | None, *, timeout_s: float
) -> Callable[[], Awaitable[PrinterStatus]] | None:
    """``busy_probe`` as one call to ask the printer (None when no probe is configured)."""
    if not command:
        return None

    async def ask() -> PrinterStatus:
        return await probe_printer(command, timeout_s=timeout_s)

    return ask


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= REASON_MAX_CHARS else line[: REASON_MAX_CHARS - 1] + "…"
    return ""
