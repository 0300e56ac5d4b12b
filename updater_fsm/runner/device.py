"""Executors that deal with the printer and its people: the busy gate, the progress display
at the printer, the reports to device-api, the device's history of jobs."""

from __future__ import annotations

import asyncio
import time

import structlog

from updater_fsm import history
from updater_fsm.core import effects as fx
from updater_fsm.core import events as ev
from updater_fsm.core.printer import PrinterStatus
from updater_fsm.ops.commands import CommandTimeout, describe_exit, run_command
from updater_fsm.runner.context import ExecutorContext

_log = structlog.get_logger(__name__)


async def wait_for_printer(ctx: ExecutorContext, effect: fx.WaitForPrinter) -> None:
    """Ask the busy probe until the printer is free or the package's window closes.

    Runs as a task of the waiting job (a cancel or a restart stops it; a restart asks
    again at once). Each answer only updates /progress: nothing is journaled per poll.
    """
    answered = False
    while True:
        if ctx.ask_printer is None:  # the probe was removed from the configuration
            status = PrinterStatus(True, "no busy_probe configured")
        else:
            status = await ctx.ask_printer()
        ctx.engine.update_printer(status)
        if status.free:
            _log.info("printer.free", reason=status.reason)
            ctx.engine.post(ev.PrinterFree(effect.job_id))
            return
        left = effect.expires_at - time.time()
        if left <= 0:
            _log.warning("printer.busy_past_package_window", reason=status.reason)
            ctx.engine.post(ev.WaitExpired(effect.job_id))
            return
        _log.info("printer.busy", reason=status.reason)
        if not answered:  # once per wait: a restart's count of interruptions ends here
            answered = True
            ctx.engine.post(ev.PrinterAnswered(effect.job_id, status))
        await asyncio.sleep(min(ctx.config.busy_poll_s, left))


async def show_screen(ctx: ExecutorContext, effect: fx.ShowScreen) -> None:
    """Start the progress display; never wait for it, never fail the update for it."""
    config = ctx.config
    unit, command = config.screen_unit, config.screen_command
    try:
        if unit:
            result = await run_command(
                [*config.systemctl, "start", "--no-block", "--", unit],
                timeout_s=10,
                max_output_bytes=4096,
            )
            if result.returncode != 0:
                _log.warning("screen.start_failed", unit=unit, detail=describe_exit(result))
        elif command:
            screen = ctx.screen
            if screen.process is not None and screen.process.returncode is None:
                return  # still open
            screen.process = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # its own session: it outlives nothing of ours
            )
            _log.info("screen.spawned", pid=screen.process.pid)
    except (OSError, CommandTimeout) as exc:
        _log.warning("screen.unavailable", error=str(exc))


async def report(ctx: ExecutorContext, effect: fx.Report) -> None:
    if ctx.reporter is not None:
        ctx.reporter.kick(effect.terminal)


async def record_history(ctx: ExecutorContext, effect: fx.RecordHistory) -> None:
    """Keep a finished job in ``<state dir>/history.json`` (durable, idempotent by job)."""
    await asyncio.to_thread(history.record, ctx.config.state_path, effect.entry)
