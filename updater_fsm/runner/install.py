"""Executors of the device's own install: stage, switch, check health, roll back, clean up.

With the services helpers they share (stop, start, which units systemd knows, health).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import attrs
import structlog

from updater_fsm.core import effects as fx
from updater_fsm.core import events as ev
from updater_fsm.core.errors import ErrorCode, Failure, UpdaterError, code_for_os_error
from updater_fsm.core.manifest import ServiceUnit, units_of
from updater_fsm.faults import crash_point
from updater_fsm.ops import external_files, rollback_floor, snapshot_staging, snapshot_store
from updater_fsm.ops.commands import run_post_cmds
from updater_fsm.ops.health import check_health, probe_once
from updater_fsm.package.destinations import external_modules
from updater_fsm.runner.context import ExecutorContext, in_thread_to_the_end

_log = structlog.get_logger(__name__)


async def stage_snapshot(ctx: ExecutorContext, effect: fx.StageSnapshot) -> None:
    updater_version: str | None = None
    config = ctx.config

    def stage() -> tuple[ServiceUnit, ...]:
        nonlocal updater_version
        manifest = ctx.read_manifest(effect.version, effect.package_name)
        if manifest.updater is not None:
            # Refused before anything is stopped: the updater could not switch itself.
            if ctx.slots is None:
                raise UpdaterError(
                    ErrorCode.UPDATER_NOT_SLOTTED,
                    f"the package carries the updater {manifest.updater.version}, but this"
                    " updater does not run from a slot <prefix>/versions/<version>"
                    " (install it with systemd/install.sh, or set updater_prefix)",
                )
            updater_version = manifest.updater.version
        snapshot_staging.stage_snapshot(
            ctx.layout,
            manifest,
            ctx.package_path(effect.package_name),
            extra_roots=config.extra_roots,
            limits=ctx.limits,
            allow_downgrade=config.allow_downgrade,
            floor=rollback_floor.read_floor(config.state_path),
        )
        return units_of(manifest)

    try:
        units = await in_thread_to_the_end(stage)
    except UpdaterError as err:
        ctx.engine.post(ev.StageFailed(effect.job_id, err.failure))
        return
    except OSError as err:
        code = code_for_os_error(err.errno, ErrorCode.DEPLOYMENT_FAILED)
        ctx.engine.post(ev.StageFailed(effect.job_id, Failure(code, str(err))))
        return
    # The switch stops the printer's services: ask the busy probe again, a print may
    # have started while the snapshot was built.
    printer = await ctx.ask_printer() if ctx.ask_printer is not None else None
    links = snapshot_store.read_links(ctx.layout)
    ctx.engine.post(ev.Staged(effect.job_id, units, links, printer, updater_version))


async def discard_staging(ctx: ExecutorContext, effect: fx.DiscardStaging) -> None:
    await asyncio.to_thread(snapshot_staging.discard_staging, ctx.layout, effect.version)


async def switch_version(ctx: ExecutorContext, effect: fx.SwitchVersion) -> None:
    started = time.perf_counter()
    try:
        await stop_units(ctx, effect.units)
        crash_point("switch:units_stopped")
        await asyncio.to_thread(_apply_external, ctx, effect.version, effect.package_name)
        await asyncio.to_thread(snapshot_store.switch_links, ctx.layout, effect.version)
        ctx.engine.refresh_links()
        crash_point("switch:links_switched")
        await start_units(ctx, effect.units)
        await _run_post_cmds(ctx, effect)
    except UpdaterError as err:
        ctx.engine.post(ev.SwitchFailed(effect.job_id, err.failure))
        return
    _log.info(
        "switched",
        version=effect.version,
        units=[u.unit for u in effect.units],
        stop_switch_start_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    ctx.engine.post(ev.Switched(effect.job_id))


async def _run_post_cmds(ctx: ExecutorContext, effect: fx.SwitchVersion) -> None:
    """Run the units' post_cmds in order, journaling each completion.

    Commands a previous run of this switch finished (``effect.post_cmds_done``) are
    skipped: only the one that was running when the updater died can run twice.
    """
    commands = [cmd for unit in effect.units for cmd in unit.post_cmds]
    for index, command in enumerate(commands):
        if index < effect.post_cmds_done:
            _log.info("post_cmd.skipped", command=command, reason="finished before restart")
            continue
        await run_post_cmds([command], timeout_s=ctx.config.post_cmd_timeout_s)
        await ctx.engine.submit(ev.PostCmdDone(effect.job_id, index + 1))
        crash_point("switch:post_cmd_journaled")


def _apply_external(ctx: ExecutorContext, version: str, package_name: str) -> None:
    if not ctx.config.extra_roots:
        return
    manifest = ctx.read_manifest(version, package_name)
    outside = external_modules(manifest, ctx.config.root)
    if outside:
        external_files.apply_external(
            outside,
            ctx.package_path(package_name),
            ctx.backup_dir(version),
            ctx.limits,
            extra_roots=ctx.config.extra_roots,
        )


async def check_health_of(ctx: ExecutorContext, effect: fx.CheckHealth) -> None:
    try:
        await health(ctx, effect.units)
    except UpdaterError as err:
        ctx.engine.post(ev.Unhealthy(effect.job_id, err.failure))
        return
    ctx.engine.post(ev.Healthy(effect.job_id))


async def roll_back(ctx: ExecutorContext, effect: fx.RollBack) -> None:
    try:
        try:
            await stop_units(ctx, effect.units)
        except UpdaterError as err:
            # A unit that will not stop must not block going back: systemd restarts it
            # on the old version once `current` moves and it is started again.
            _log.warning("rollback: stop failed, continuing", error=err.error)
        if effect.failed_version:
            await asyncio.to_thread(
                external_files.restore_external, ctx.backup_dir(effect.failed_version)
            )
        await asyncio.to_thread(snapshot_store.point_current, ctx.layout, effect.target_version)
        if effect.previous_after:
            await asyncio.to_thread(
                snapshot_store.point_previous, ctx.layout, effect.previous_after
            )
        ctx.engine.refresh_links()
        crash_point("rollback:links_switched")
        units = await known_units(ctx, effect.units)
        await start_units(ctx, units)
        # The units' probes come from the manifest of the version we leave (a self-test
        # under versions/current, a new endpoint): the version we return to cannot be
        # expected to pass them. It is judged by its units staying up, plus the probes
        # it was itself installed with, when the journal knows them.
        await health(ctx, _with_probes_of(units, effect.target_units))
    except UpdaterError as err:
        ctx.engine.post(ev.RollbackFailed(effect.job_id, err.failure))
        return
    ctx.engine.post(ev.RollbackOk(effect.job_id))


async def remove_snapshot(ctx: ExecutorContext, effect: fx.RemoveSnapshot) -> None:
    try:
        await asyncio.to_thread(snapshot_store.remove_snapshot, ctx.layout, effect.version)
    except UpdaterError as err:
        _log.info("snapshot kept", version=effect.version, reason=err.detail)


async def collect_garbage(ctx: ExecutorContext, effect: fx.CollectGarbage) -> None:
    await asyncio.to_thread(snapshot_store.collect_garbage, ctx.layout)
    backups_dir = ctx.config.backups_dir
    if backups_dir.is_dir():
        for backup in backups_dir.iterdir():
            await asyncio.to_thread(external_files.drop_backups, backup)


# ---- services ------------------------------------------------------------------------
async def stop_units(ctx: ExecutorContext, units: Sequence[ServiceUnit]) -> None:
    if ctx.controller is not None:
        await ctx.controller.stop_units(units)


async def start_units(ctx: ExecutorContext, units: Sequence[ServiceUnit]) -> None:
    if ctx.controller is not None:
        await ctx.controller.start_units(units)


async def known_units(
    ctx: ExecutorContext, units: Sequence[ServiceUnit]
) -> tuple[ServiceUnit, ...]:
    """``units`` without those systemd does not know (``LoadState=not-found``).

    A rollback restarts the units of the manifest it rolls back from; one that version
    introduced (its unit file not installed, or gone with the version) cannot belong to
    the version we return to, and failing to start it must not fail the rollback.
    """
    if ctx.controller is None:
        return tuple(units)
    known = []
    for unit in units:
        props = await ctx.controller.show(unit.unit, "LoadState")
        if props.get("LoadState") == "not-found":
            _log.warning("rollback: unit unknown to systemd, not started", unit=unit.unit)
            continue
        known.append(unit)
    return tuple(known)


async def health(ctx: ExecutorContext, units: Sequence[ServiceUnit]) -> None:
    """Raise :class:`UpdaterError` (``HEALTH_CHECK_FAILED``) unless ``units`` are healthy."""
    if ctx.controller is not None:
        await check_health(ctx.controller, units, settle_s=ctx.config.settle_s)
        return
    # Without service control only the manifest's probes can judge the new version.
    for unit in units:
        if unit.health is None:
            continue
        reason = await probe_once(unit.health)
        if reason is not None:
            raise UpdaterError(ErrorCode.HEALTH_CHECK_FAILED, f"{unit.unit}: {reason}")


def _with_probes_of(
    units: Sequence[ServiceUnit], target_units: Sequence[ServiceUnit]
) -> tuple[ServiceUnit, ...]:
    """``units`` with each probe replaced by the target version's probe for that unit (or
    none); unit state is checked either way."""
    probes = {unit.unit: unit.health for unit in target_units}
    return tuple(attrs.evolve(unit, health=probes.get(unit.unit)) for unit in units)


async def raise_rollback_floor(ctx: ExecutorContext, effect: fx.RaiseRollbackFloor) -> None:
    """Record a successful install's version as the floor (if higher): durable, idempotent."""
    await asyncio.to_thread(rollback_floor.raise_floor, ctx.config.state_path, effect.version)
