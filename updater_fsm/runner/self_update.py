"""Executors of the updater's own update: build its slot, switch to it, confirm it.

The guard outside this code (``updater-guard.sh``, run by systemd) judges a new updater
that does not confirm itself; these executors only read its record.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time

import aiohttp
import structlog

from updater_fsm.core import effects as fx
from updater_fsm.core import events as ev
from updater_fsm.core.errors import ErrorCode, Failure, UpdaterError
from updater_fsm.faults import crash_point
from updater_fsm.ops import self_update
from updater_fsm.ops.commands import CommandTimeout, describe_exit, run_command
from updater_fsm.package.extraction import extract_updater_bundle
from updater_fsm.runner.context import ExecutorContext, in_thread_to_the_end

_log = structlog.get_logger(__name__)


async def stage_updater(ctx: ExecutorContext, effect: fx.StageUpdater) -> None:
    slots = ctx.slots
    work = ctx.config.state_path / "updater-staging"
    started = time.perf_counter()

    def build() -> None:
        if slots is None:
            raise UpdaterError(ErrorCode.UPDATER_NOT_SLOTTED, "this updater runs from no slot")
        crash_point("updater:stage_begun")
        # No switch is in flight: a guard's record now is stale (its report, journaled,
        # died before the clean-up) and must not end the switch that follows.
        self_update.forget_rollback_record(slots)
        manifest = ctx.read_manifest(effect.package_version, effect.package_name)
        if manifest.updater is None:
            raise UpdaterError(ErrorCode.UPDATER_INSTALL_FAILED, "the package has none")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            bundle_file = work / "bundle.tar.gz"
            extract_updater_bundle(
                ctx.package_path(effect.package_name),
                manifest.updater,
                bundle_file,
                ctx.limits,
            )
            self_update.build_slot(slots, bundle_file, effect.version, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    try:
        await in_thread_to_the_end(build)
    except UpdaterError as err:
        ctx.engine.post(ev.UpdaterStageFailed(effect.job_id, err.failure))
        return
    except OSError as err:
        failure = Failure(ErrorCode.UPDATER_INSTALL_FAILED, str(err))
        ctx.engine.post(ev.UpdaterStageFailed(effect.job_id, failure))
        return
    _log.info(
        "updater.staged",
        version=effect.version,
        build_s=round(time.perf_counter() - started, 1),
    )
    ctx.engine.post(ev.UpdaterStaged(effect.job_id))


def _rolled_back(ctx: ExecutorContext, effect: fx.SwitchUpdater | fx.ConfirmUpdater) -> bool:
    """Post ``UpdaterRolledBack`` when the guard's record says ``effect.version`` failed."""
    record = self_update.read_rollback_record(ctx.slots) if ctx.slots else None
    if record is None or record.version != effect.version:
        return False
    failure = Failure(
        ErrorCode.UPDATER_ROLLBACK, f"{record.version} failed to start ({record.reason})"
    )
    _log.error("updater.rolled_back", version=record.version, reason=record.reason)
    ctx.engine.post(ev.UpdaterRolledBack(effect.job_id, failure))
    return True


async def switch_updater(ctx: ExecutorContext, effect: fx.SwitchUpdater) -> None:
    crash_point("updater:switch_begun")
    slots = ctx.slots
    if _rolled_back(ctx, effect):
        return
    running = self_update.running_version()
    if running == effect.version:
        _log.info("updater.started_on_probation", version=running)
        ctx.engine.post(ev.UpdaterStarted(effect.job_id))
        return
    if slots is None or not (slots.slot(running) / "bin").is_dir():
        failure = Failure(
            ErrorCode.UPDATER_ROLLBACK,
            f"{effect.version} not started: the running updater {running} has no slot",
        )
        ctx.engine.post(ev.UpdaterRolledBack(effect.job_id, failure))
        return
    config = ctx.config

    def switch() -> None:
        assert slots is not None
        deadline = time.time() + config.updater_probation_s
        self_update.write_probation(
            slots, effect.version, running, deadline=deadline,
            max_starts=config.updater_max_starts,
        )  # fmt: skip
        crash_point("updater:probation_written")
        self_update.switch_current(slots, effect.version, running)
        crash_point("updater:switched")

    await _arm_probation_timer(ctx, slots, effect.version)
    await asyncio.to_thread(switch)
    _log.info("updater.switching", version=effect.version, previous=running)
    if ctx.restart_self is None:
        _log.warning("updater.switched_but_cannot_restart", version=effect.version)
        return
    ctx.restart_self()


async def _arm_probation_timer(
    ctx: ExecutorContext, slots: self_update.Slots, version: str
) -> None:
    """A transient systemd timer that runs the guard in ``--deadline`` mode just after
    the probation's deadline: it restarts the unit if the new updater has not confirmed
    itself by then, whatever that updater does (none of its code is involved).

    Best effort: without it a new updater that hangs is still killed by the watchdog,
    and one that runs but cannot confirm exits at the deadline itself.
    """
    unit = self_update.own_unit()
    guard = slots.prefix / "updater-guard.sh"
    if unit is None or ctx.controller is None or not guard.is_file():
        _log.warning("updater.probation_timer_skipped", unit=unit, guard=str(guard))
        return
    delay_s = int(ctx.config.updater_probation_s) + 5
    argv = [
        *ctx.config.systemctl[:-1], "systemd-run", "--no-block", "--collect",
        f"--unit=tope-updater-probation-{version}-{int(time.time())}",
        f"--on-active={delay_s}s",
        "--timer-property=AccuracySec=1s", str(guard), "--deadline", str(slots.prefix), unit,
    ]  # fmt: skip
    try:
        result = await run_command(argv, timeout_s=10, max_output_bytes=4096)
    except (OSError, CommandTimeout) as exc:
        _log.warning("updater.probation_timer_failed", error=str(exc))
        return
    if result.returncode != 0:
        _log.warning("updater.probation_timer_failed", detail=describe_exit(result))
        return
    _log.info("updater.probation_timer_armed", unit=unit, in_s=delay_s)


async def confirm_updater(ctx: ExecutorContext, effect: fx.ConfirmUpdater) -> None:
    crash_point("updater:probation_begun")
    if _rolled_back(ctx, effect):
        return
    running = self_update.running_version()
    if running != effect.version or ctx.slots is None:
        failure = Failure(
            ErrorCode.UPDATER_ROLLBACK,
            f"{effect.version} is not running ({running} is): its probation ended",
        )
        ctx.engine.post(ev.UpdaterRolledBack(effect.job_id, failure))
        return
    answered = await _own_healthz_version(ctx, effect.version)
    if answered != effect.version:
        _log.error("updater.probation_failed", version=effect.version, answered=answered)
        if ctx.restart_self is not None:
            ctx.restart_self()  # the guard judges the next start (past the deadline)
        return
    await asyncio.to_thread(self_update.end_probation, ctx.slots)
    crash_point("updater:confirmed")
    _log.info("updater.confirmed", version=effect.version)
    ctx.engine.post(ev.UpdaterConfirmed(effect.job_id))


async def _own_healthz_version(ctx: ExecutorContext, version: str) -> str | None:
    """Poll this process's own ``/healthz`` until it answers with ``version`` or the
    probation's time is up; the ``updater_version`` it last answered (None: none)."""
    config = ctx.config
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    url = f"http://{host}:{config.port}/api/v1.0/healthz"
    deadline = time.monotonic() + config.updater_probation_s
    answered: str | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with session.get(url) as resp:
                    body = await resp.json()
                    answered = (body.get("data") or {}).get("updater_version")
                    if answered == version:
                        break
            await asyncio.sleep(0.2)
    return answered


async def collect_updater_slots(ctx: ExecutorContext, effect: fx.CollectUpdaterSlots) -> None:
    if ctx.slots is None:
        return
    crash_point("updater:collect_begun")
    removed = await asyncio.to_thread(self_update.collect_slots, ctx.slots)
    if removed:
        _log.info("updater.slots_removed", versions=removed)
