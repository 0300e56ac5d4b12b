"""The effect runner: executes the machine's effects with the ops executors.

Each decision's effects run in order, and after the short effects of every earlier
decision (so a clean-up never overtakes, or is overtaken by, the work of the next job).
Long effects that answer with an event (download, verify, stage, switch, health, rollback)
run as tasks of their own, which ``StopJob`` cancels; a result becomes an event posted back
to the engine (:meth:`Engine.post`). Blocking file work runs in worker threads,
subprocesses and HTTP are awaited, so the event loop — and with it ``/progress`` — is never
held. The runner keeps no state of its own beyond the tasks it runs: everything needed to
redo an effect is in the effect, and every effect is safe to run again after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import aiohttp
import attrs
import structlog

from updater_fsm.config import Config, ServiceControl
from updater_fsm.core import effects as fx
from updater_fsm.core import events as ev
from updater_fsm.core.errors import ErrorCode, Failure, UpdaterError, code_for_os_error
from updater_fsm.core.manifest import Manifest, ServiceUnit, units_of
from updater_fsm.core.printer import PrinterStatus
from updater_fsm.core.progress import Transfer
from updater_fsm.faults import crash_point
from updater_fsm.ops import (
    download,
    external_files,
    fleet_access,
    self_update,
    snapshot_staging,
    snapshot_store,
    verify,
)
from updater_fsm.ops.commands import CommandTimeout, describe_exit, run_command, run_post_cmds
from updater_fsm.ops.health import check_health, probe_once
from updater_fsm.ops.printer_probe import configured_probe
from updater_fsm.ops.services import ServiceController
from updater_fsm.package.destinations import external_modules
from updater_fsm.package.extraction import extract_updater_bundle
from updater_fsm.package.limits import PackageLimits
from updater_fsm.package.manifest import read_package
from updater_fsm.state_layout import package_path

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from updater_fsm.engine import Engine

_log = structlog.get_logger(__name__)


#: Effects that run long and answer with a result event: each gets its own task.
_JOB_EFFECTS = (
    fx.StartDownload,
    fx.WaitForPrinter,
    fx.VerifyPackage,
    fx.StageSnapshot,
    fx.SwitchVersion,
    fx.CheckHealth,
    fx.RollBack,
    fx.StageUpdater,
    fx.SwitchUpdater,
    fx.ConfirmUpdater,
)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ReportSink(Protocol):
    """Where ``Report`` effects go (the device-api reporter)."""

    def kick(self, terminal: bool) -> None:
        """Send the current snapshot soon; ``terminal`` ones must never be dropped."""


def package_limits(config: Config) -> PackageLimits:
    return PackageLimits(
        max_total_uncompressed=config.max_package_bytes, max_ratio=config.max_zip_ratio
    )


_T = TypeVar("_T")


async def _in_thread_to_the_end(work: Callable[[], _T]) -> _T:
    """Run ``work`` in a worker thread; a cancel waits for it to finish (or fail) first.

    A thread cannot be interrupted: a cancel's clean-up (discarding a staging directory, a
    half-built slot) would otherwise race the thread still writing there.
    """
    thread = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await thread
        raise


class OpsRunner:
    """Runs effects against the real world described by ``config``.

    Args:
        engine: receives result events, transfer figures and link refreshes.
        config: paths, timeouts and the service-control mode.
        reporter: receives ``Report`` effects (None = no device-api reporting).
        controller: the systemctl client; None with ``service_control = "none"``.
        restart_self: ends this process so that its supervisor starts the updater again
            (``serve`` exits with :data:`~updater_fsm.ops.self_update.EXIT_SWITCHED`); how a
            self-update hands over to the new updater. None: nobody can (tests in-process).
    """

    def __init__(
        self,
        engine: Engine,
        config: Config,
        *,
        reporter: ReportSink | None = None,
        controller: ServiceController | None = None,
        restart_self: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._restart_self = restart_self
        self._slots = self_update.find_slots(config.updater_prefix)
        self._config = config
        self._reporter = reporter
        self._layout = snapshot_store.Layout(config.root)
        self._limits = package_limits(config)
        if controller is None and config.service_control is ServiceControl.SYSTEMD:
            controller = ServiceController(
                config.systemctl,
                stop_timeout=config.stop_timeout_s,
                start_timeout=config.start_timeout_s,
            )
        self._controller = controller
        self._trusted_key: Ed25519PublicKey | None = None
        if config.trusted_key:
            self._trusted_key = verify.load_public_key(_read_key(config.trusted_key))
        self._tasks: dict[asyncio.Task[None], int | None] = {}
        self._screen: asyncio.subprocess.Process | None = None
        self._ask_printer = configured_probe(
            config.busy_probe, timeout_s=config.busy_probe_timeout_s
        )
        self._tail: asyncio.Future[None] | None = None

    # ---- EffectRunner protocol -------------------------------------------------------
    def execute(self, effects: Sequence[fx.Effect]) -> None:
        """Run ``effects`` after the short effects of every earlier batch have finished.

        Batches are sequenced so that, say, the package deletion of a cancel can never
        run after (and destroy) the ``.part`` of the download that replaced it. Job
        effects — the ones that take long and answer with an event — are spawned as tasks
        of their own, tracked by job id so ``StopJob`` can cancel them.
        """
        previous = self._tail
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tail = done
        task = asyncio.create_task(self._run_batch(tuple(effects), previous))
        # Released however the batch ends: done, failed, or cancelled (even before it ran).
        task.add_done_callback(lambda _: _settle(done))
        self._track(task, None)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def idle(self) -> None:
        """Wait until no effect is running (tests and the demo use it)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- plumbing ------------------------------------------------------------------
    def _track(self, task: asyncio.Task[None], job_id: int | None) -> None:
        self._tasks[task] = job_id
        task.add_done_callback(self._tasks.pop)

    async def _run_batch(
        self,
        effects: tuple[fx.Effect, ...],
        previous: asyncio.Future[None] | None,
    ) -> None:
        if previous is not None:
            await previous
        for effect in effects:
            if isinstance(effect, _JOB_EFFECTS):
                task = asyncio.create_task(self._guarded(effect), name=type(effect).__name__)
                self._track(task, effect.job_id)
            else:
                await self._guarded(effect)

    async def _guarded(self, effect: fx.Effect) -> None:
        try:
            await self._dispatch(effect)
        except asyncio.CancelledError:
            raise
        except Exception:  # an executor bug must not leave the machine waiting forever
            _log.exception("effect failed unexpectedly", effect=type(effect).__name__)
            self._post_failure(effect, "unexpected internal error (see log)")

    async def _dispatch(self, effect: fx.Effect) -> None:
        match effect:
            case fx.StartDownload():
                await self._start_download(effect)
            case fx.StopJob():
                await self._stop_job(effect)
            case fx.WaitForPrinter():
                await self._wait_for_printer(effect)
            case fx.DiscardPackage():
                await self._discard_package(effect)
            case fx.VerifyPackage():
                await self._verify(effect)
            case fx.StageSnapshot():
                await self._stage(effect)
            case fx.DiscardStaging():
                await self._discard_staging(effect)
            case fx.SwitchVersion():
                await self._switch(effect)
            case fx.CheckHealth():
                await self._check_health(effect)
            case fx.RollBack():
                await self._roll_back(effect)
            case fx.RemoveSnapshot():
                await self._remove_snapshot(effect)
            case fx.CollectGarbage():
                await self._collect_garbage(effect)
            case fx.ShowScreen():
                await self._show_screen(effect)
            case fx.StageUpdater():
                await self._stage_updater(effect)
            case fx.SwitchUpdater():
                await self._switch_updater(effect)
            case fx.ConfirmUpdater():
                await self._confirm_updater(effect)
            case fx.CollectUpdaterSlots():
                await self._collect_updater_slots(effect)
            case fx.Report():
                await self._report(effect)
            case _:
                raise TypeError(f"no executor for {effect!r}")

    def _post_failure(self, effect: fx.Effect, detail: str) -> None:
        """Turn an unexpected exception into the effect's failure event, so no state hangs."""
        job_id = getattr(effect, "job_id", None)
        if job_id is None:
            return
        C = ErrorCode
        failures: dict[type[fx.Effect], Callable[[str], ev.Event]] = {
            fx.StartDownload: lambda e: ev.DownloadFailed(job_id, Failure(C.DOWNLOAD_FAILED, e)),
            fx.VerifyPackage: lambda e: ev.VerifyFailed(job_id, Failure(C.DOWNLOAD_FAILED, e)),
            fx.StageSnapshot: lambda e: ev.StageFailed(job_id, Failure(C.DEPLOYMENT_FAILED, e)),
            fx.SwitchVersion: lambda e: ev.SwitchFailed(job_id, Failure(C.DEPLOYMENT_FAILED, e)),
            fx.CheckHealth: lambda e: ev.Unhealthy(job_id, Failure(C.HEALTH_CHECK_FAILED, e)),
            fx.RollBack: lambda e: ev.RollbackFailed(job_id, Failure(C.ROLLBACK_FAILED, e)),
            fx.StageUpdater: lambda e: ev.UpdaterStageFailed(
                job_id, Failure(C.UPDATER_INSTALL_FAILED, e)
            ),
        }
        make = failures.get(type(effect))
        if make is not None:
            self._engine.post(make(detail))

    def _package_path(self, name: str) -> Path:
        return package_path(self._config.downloads_dir, name)

    def _backup_dir(self, version: str) -> Path:
        return self._config.backups_dir / f"v{version}"

    # ---- download & verify ---------------------------------------------------------
    async def _start_download(self, effect: fx.StartDownload) -> None:
        settings = download.DownloadSettings(
            connect_timeout_s=self._config.connect_timeout_s,
            read_timeout_s=self._config.read_timeout_s,
            max_attempts=self._config.download_attempts,
        )

        def on_progress(p: download.DownloadProgress) -> None:
            self._engine.update_transfer(
                Transfer(effect.job_id, p.bytes_done, p.total, p.speed_bps, p.eta_s)
            )

        async def on_checkpoint(point: ev.ResumePoint) -> None:
            await self._engine.submit(ev.DownloadCheckpoint(effect.job_id, point))

        try:
            result = await download.download_package(
                effect.request,
                self._config.downloads_dir,
                resume=effect.resume if effect.resume.offset > 0 else None,
                settings=settings,
                on_progress=on_progress,
                on_checkpoint=on_checkpoint,
                access=fleet_access.access_for(self._config, effect.request.package_url),
            )
        except UpdaterError as err:
            self._engine.post(ev.DownloadFailed(effect.job_id, err.failure))
            return
        self._engine.post(ev.DownloadDone(effect.job_id, result.size, result.md5, result.sha256))

    async def _verify(self, effect: fx.VerifyPackage) -> None:
        request = effect.request
        path = self._package_path(request.package_name)
        try:
            if effect.md5 is None or effect.sha256 is None:
                digests = await verify.hash_file(path)
            else:
                digests = verify.Digests(effect.md5, effect.sha256, path.stat().st_size)
            await asyncio.to_thread(
                verify.verify_digests,
                path,
                digests,
                size=request.package_size,
                md5=request.package_md5,
                sha256=request.package_sha256,
                signature_b64=request.package_signature,
                trusted_key=self._trusted_key,
            )
        except UpdaterError as err:
            self._engine.post(ev.VerifyFailed(effect.job_id, err.failure))
            return
        except FileNotFoundError:
            self._engine.post(
                ev.VerifyFailed(
                    effect.job_id, Failure(ErrorCode.INCOMPLETE_DOWNLOAD, f"{path} vanished")
                )
            )
            return
        self._engine.post(ev.Verified(effect.job_id))

    async def _discard_package(self, effect: fx.DiscardPackage) -> None:
        await asyncio.to_thread(
            download.discard_download, self._config.downloads_dir, effect.package_name
        )

    async def _stop_job(self, effect: fx.StopJob) -> None:
        victims = [t for t, job in self._tasks.items() if job == effect.job_id]
        for task in victims:
            task.cancel()
        for task in victims:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ---- the busy gate ---------------------------------------------------------------
    async def _wait_for_printer(self, effect: fx.WaitForPrinter) -> None:
        """Ask the busy probe until the printer is free or the package's window closes.

        Runs as a task of the waiting job (a cancel or a restart stops it; a restart asks
        again at once). Each answer only updates /progress: nothing is journaled per poll.
        """
        answered = False
        while True:
            if self._ask_printer is None:  # the probe was removed from the configuration
                status = PrinterStatus(True, "no busy_probe configured")
            else:
                status = await self._ask_printer()
            self._engine.update_printer(status)
            if status.free:
                _log.info("printer.free", reason=status.reason)
                self._engine.post(ev.PrinterFree(effect.job_id))
                return
            left = effect.expires_at - time.time()
            if left <= 0:
                _log.warning("printer.busy_past_package_window", reason=status.reason)
                self._engine.post(ev.WaitExpired(effect.job_id))
                return
            _log.info("printer.busy", reason=status.reason)
            if not answered:  # once per wait: a restart's count of interruptions ends here
                answered = True
                self._engine.post(ev.PrinterAnswered(effect.job_id, status))
            await asyncio.sleep(min(self._config.busy_poll_s, left))

    # ---- install -------------------------------------------------------------------
    def _read_manifest(self, version: str, package_name: str) -> Manifest:
        return read_package(
            self._package_path(package_name),
            expected_version=version,
            root=self._config.root,
            extra_roots=self._config.extra_roots,
            limits=self._limits,
        )

    async def _stage(self, effect: fx.StageSnapshot) -> None:
        updater_version: str | None = None

        def stage() -> tuple[ServiceUnit, ...]:
            nonlocal updater_version
            manifest = self._read_manifest(effect.version, effect.package_name)
            if manifest.updater is not None:
                # Refused before anything is stopped: the updater could not switch itself.
                if self._slots is None:
                    raise UpdaterError(
                        ErrorCode.UPDATER_NOT_SLOTTED,
                        f"the package carries the updater {manifest.updater.version}, but this"
                        " updater does not run from a slot <prefix>/versions/<version>"
                        " (install it with systemd/install.sh, or set updater_prefix)",
                    )
                updater_version = manifest.updater.version
            snapshot_staging.stage_snapshot(
                self._layout,
                manifest,
                self._package_path(effect.package_name),
                extra_roots=self._config.extra_roots,
                limits=self._limits,
                allow_downgrade=self._config.allow_downgrade,
            )
            return units_of(manifest)

        try:
            units = await _in_thread_to_the_end(stage)
        except UpdaterError as err:
            self._engine.post(ev.StageFailed(effect.job_id, err.failure))
            return
        except OSError as err:
            code = code_for_os_error(err.errno, ErrorCode.DEPLOYMENT_FAILED)
            self._engine.post(ev.StageFailed(effect.job_id, Failure(code, str(err))))
            return
        # The switch stops the printer's services: ask the busy probe again, a print may
        # have started while the snapshot was built.
        printer = await self._ask_printer() if self._ask_printer is not None else None
        links = snapshot_store.read_links(self._layout)
        self._engine.post(ev.Staged(effect.job_id, units, links, printer, updater_version))

    async def _discard_staging(self, effect: fx.DiscardStaging) -> None:
        await asyncio.to_thread(snapshot_staging.discard_staging, self._layout, effect.version)

    async def _switch(self, effect: fx.SwitchVersion) -> None:
        started = time.perf_counter()
        try:
            await self._stop_units(effect.units)
            crash_point("switch:units_stopped")
            await asyncio.to_thread(self._apply_external, effect.version, effect.package_name)
            await asyncio.to_thread(snapshot_store.switch_links, self._layout, effect.version)
            self._engine.refresh_links()
            crash_point("switch:links_switched")
            await self._start_units(effect.units)
            await self._run_post_cmds(effect)
        except UpdaterError as err:
            self._engine.post(ev.SwitchFailed(effect.job_id, err.failure))
            return
        _log.info(
            "switched",
            version=effect.version,
            units=[u.unit for u in effect.units],
            stop_switch_start_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        self._engine.post(ev.Switched(effect.job_id))

    async def _run_post_cmds(self, effect: fx.SwitchVersion) -> None:
        """Run the units' post_cmds in order, journaling each completion.

        Commands a previous run of this switch finished (``effect.post_cmds_done``) are
        skipped: only the one that was running when the updater died can run twice.
        """
        commands = [cmd for unit in effect.units for cmd in unit.post_cmds]
        for index, command in enumerate(commands):
            if index < effect.post_cmds_done:
                _log.info("post_cmd.skipped", command=command, reason="finished before restart")
                continue
            await run_post_cmds([command], timeout_s=self._config.post_cmd_timeout_s)
            await self._engine.submit(ev.PostCmdDone(effect.job_id, index + 1))
            crash_point("switch:post_cmd_journaled")

    def _apply_external(self, version: str, package_name: str) -> None:
        if not self._config.extra_roots:
            return
        manifest = self._read_manifest(version, package_name)
        outside = external_modules(manifest, self._config.root)
        if outside:
            external_files.apply_external(
                outside,
                self._package_path(package_name),
                self._backup_dir(version),
                self._limits,
                extra_roots=self._config.extra_roots,
            )

    async def _check_health(self, effect: fx.CheckHealth) -> None:
        try:
            await self._health(effect.units)
        except UpdaterError as err:
            self._engine.post(ev.Unhealthy(effect.job_id, err.failure))
            return
        self._engine.post(ev.Healthy(effect.job_id))

    async def _roll_back(self, effect: fx.RollBack) -> None:
        try:
            try:
                await self._stop_units(effect.units)
            except UpdaterError as err:
                # A unit that will not stop must not block going back: systemd restarts it
                # on the old version once `current` moves and it is started again.
                _log.warning("rollback: stop failed, continuing", error=err.error)
            if effect.failed_version:
                await asyncio.to_thread(
                    external_files.restore_external, self._backup_dir(effect.failed_version)
                )
            await asyncio.to_thread(
                snapshot_store.point_current, self._layout, effect.target_version
            )
            if effect.previous_after:
                await asyncio.to_thread(
                    snapshot_store.point_previous, self._layout, effect.previous_after
                )
            self._engine.refresh_links()
            crash_point("rollback:links_switched")
            units = await self._known_units(effect.units)
            await self._start_units(units)
            # The units' probes come from the manifest of the version we leave (a self-test
            # under versions/current, a new endpoint): the version we return to cannot be
            # expected to pass them. It is judged by its units staying up, plus the probes
            # it was itself installed with, when the journal knows them.
            await self._health(_with_probes_of(units, effect.target_units))
        except UpdaterError as err:
            self._engine.post(ev.RollbackFailed(effect.job_id, err.failure))
            return
        self._engine.post(ev.RollbackOk(effect.job_id))

    # ---- the updater updates itself -------------------------------------------------
    async def _stage_updater(self, effect: fx.StageUpdater) -> None:
        slots = self._slots
        work = self._config.state_path / "updater-staging"
        started = time.perf_counter()

        def build() -> None:
            if slots is None:
                raise UpdaterError(ErrorCode.UPDATER_NOT_SLOTTED, "this updater runs from no slot")
            crash_point("updater:stage_begun")
            # No switch is in flight: a guard's record now is stale (its report, journaled,
            # died before the clean-up) and must not end the switch that follows.
            self_update.forget_rollback_record(slots)
            manifest = self._read_manifest(effect.package_version, effect.package_name)
            if manifest.updater is None:
                raise UpdaterError(ErrorCode.UPDATER_INSTALL_FAILED, "the package has none")
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            try:
                bundle_file = work / "bundle.tar.gz"
                extract_updater_bundle(
                    self._package_path(effect.package_name),
                    manifest.updater,
                    bundle_file,
                    self._limits,
                )
                self_update.build_slot(slots, bundle_file, effect.version, work)
            finally:
                shutil.rmtree(work, ignore_errors=True)

        try:
            await _in_thread_to_the_end(build)
        except UpdaterError as err:
            self._engine.post(ev.UpdaterStageFailed(effect.job_id, err.failure))
            return
        except OSError as err:
            failure = Failure(ErrorCode.UPDATER_INSTALL_FAILED, str(err))
            self._engine.post(ev.UpdaterStageFailed(effect.job_id, failure))
            return
        _log.info(
            "updater.staged",
            version=effect.version,
            build_s=round(time.perf_counter() - started, 1),
        )
        self._engine.post(ev.UpdaterStaged(effect.job_id))

    def _rolled_back(self, effect: fx.SwitchUpdater | fx.ConfirmUpdater) -> bool:
        """Post ``UpdaterRolledBack`` when the guard's record says ``effect.version`` failed."""
        record = self_update.read_rollback_record(self._slots) if self._slots else None
        if record is None or record.version != effect.version:
            return False
        failure = Failure(
            ErrorCode.UPDATER_ROLLBACK, f"{record.version} failed to start ({record.reason})"
        )
        _log.error("updater.rolled_back", version=record.version, reason=record.reason)
        self._engine.post(ev.UpdaterRolledBack(effect.job_id, failure))
        return True

    async def _switch_updater(self, effect: fx.SwitchUpdater) -> None:
        crash_point("updater:switch_begun")
        slots = self._slots
        if self._rolled_back(effect):
            return
        running = self_update.running_version()
        if running == effect.version:
            _log.info("updater.started_on_probation", version=running)
            self._engine.post(ev.UpdaterStarted(effect.job_id))
            return
        if slots is None or not (slots.slot(running) / "bin").is_dir():
            failure = Failure(
                ErrorCode.UPDATER_ROLLBACK,
                f"{effect.version} not started: the running updater {running} has no slot",
            )
            self._engine.post(ev.UpdaterRolledBack(effect.job_id, failure))
            return
        config = self._config

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

        await self._arm_probation_timer(slots, effect.version)
        await asyncio.to_thread(switch)
        _log.info("updater.switching", version=effect.version, previous=running)
        if self._restart_self is None:
            _log.warning("updater.switched_but_cannot_restart", version=effect.version)
            return
        self._restart_self()

    async def _arm_probation_timer(self, slots: self_update.Slots, version: str) -> None:
        """A transient systemd timer that runs the guard in ``--deadline`` mode just after
        the probation's deadline: it restarts the unit if the new updater has not confirmed
        itself by then, whatever that updater does (none of its code is involved).

        Best effort: without it a new updater that hangs is still killed by the watchdog,
        and one that runs but cannot confirm exits at the deadline itself.
        """
        unit = self_update.own_unit()
        guard = slots.prefix / "updater-guard.sh"
        if unit is None or self._controller is None or not guard.is_file():
            _log.warning("updater.probation_timer_skipped", unit=unit, guard=str(guard))
            return
        delay_s = int(self._config.updater_probation_s) + 5
        argv = [
            *self._config.systemctl[:-1], "systemd-run", "--no-block", "--collect",
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

    async def _confirm_updater(self, effect: fx.ConfirmUpdater) -> None:
        crash_point("updater:probation_begun")
        if self._rolled_back(effect):
            return
        running = self_update.running_version()
        if running != effect.version or self._slots is None:
            failure = Failure(
                ErrorCode.UPDATER_ROLLBACK,
                f"{effect.version} is not running ({running} is): its probation ended",
            )
            self._engine.post(ev.UpdaterRolledBack(effect.job_id, failure))
            return
        host = "127.0.0.1" if self._config.host in ("0.0.0.0", "::", "") else self._config.host
        url = f"http://{host}:{self._config.port}/api/v1.0/healthz"
        deadline = time.monotonic() + self._config.updater_probation_s
        answered: str | None = None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with session.get(url) as resp:
                        body = await resp.json()
                        answered = (body.get("data") or {}).get("updater_version")
                        if answered == effect.version:
                            break
                await asyncio.sleep(0.2)
        if answered != effect.version:
            _log.error("updater.probation_failed", version=effect.version, answered=answered)
            if self._restart_self is not None:
                self._restart_self()  # the guard judges the next start (past the deadline)
            return
        await asyncio.to_thread(self_update.end_probation, self._slots)
        crash_point("updater:confirmed")
        _log.info("updater.confirmed", version=effect.version)
        self._engine.post(ev.UpdaterConfirmed(effect.job_id))

    async def _collect_updater_slots(self, effect: fx.CollectUpdaterSlots) -> None:
        if self._slots is None:
            return
        crash_point("updater:collect_begun")
        removed = await asyncio.to_thread(self_update.collect_slots, self._slots)
        if removed:
            _log.info("updater.slots_removed", versions=removed)

    async def _remove_snapshot(self, effect: fx.RemoveSnapshot) -> None:
        try:
            await asyncio.to_thread(snapshot_store.remove_snapshot, self._layout, effect.version)
        except UpdaterError as err:
            _log.info("snapshot kept", version=effect.version, reason=err.detail)

    async def _collect_garbage(self, effect: fx.CollectGarbage) -> None:
        await asyncio.to_thread(snapshot_store.collect_garbage, self._layout)
        if self._config.backups_dir.is_dir():
            for backup in self._config.backups_dir.iterdir():
                await asyncio.to_thread(external_files.drop_backups, backup)

    async def _show_screen(self, effect: fx.ShowScreen) -> None:
        """Start the progress display; never wait for it, never fail the update for it."""
        unit, command = self._config.screen_unit, self._config.screen_command
        try:
            if unit:
                result = await run_command(
                    [*self._config.systemctl, "start", "--no-block", "--", unit],
                    timeout_s=10,
                    max_output_bytes=4096,
                )
                if result.returncode != 0:
                    _log.warning("screen.start_failed", unit=unit, detail=describe_exit(result))
            elif command:
                if self._screen is not None and self._screen.returncode is None:
                    return  # still open
                self._screen = await asyncio.create_subprocess_exec(
                    "/bin/sh",
                    "-c",
                    command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                    start_new_session=True,  # its own session: it outlives nothing of ours
                )
                _log.info("screen.spawned", pid=self._screen.pid)
        except (OSError, CommandTimeout) as exc:
            _log.warning("screen.unavailable", error=str(exc))

    async def _report(self, effect: fx.Report) -> None:
        if self._reporter is not None:
            self._reporter.kick(effect.terminal)

    # ---- services ------------------------------------------------------------------
    async def _stop_units(self, units: Sequence[ServiceUnit]) -> None:
        if self._controller is not None:
            await self._controller.stop_units(units)

    async def _start_units(self, units: Sequence[ServiceUnit]) -> None:
        if self._controller is not None:
            await self._controller.start_units(units)

    async def _known_units(self, units: Sequence[ServiceUnit]) -> tuple[ServiceUnit, ...]:
        """``units`` without those systemd does not know (``LoadState=not-found``).

        A rollback restarts the units of the manifest it rolls back from; one that version
        introduced (its unit file not installed, or gone with the version) cannot belong to
        the version we return to, and failing to start it must not fail the rollback.
        """
        if self._controller is None:
            return tuple(units)
        known = []
        for unit in units:
            props = await self._controller.show(unit.unit, "LoadState")
            if props.get("LoadState") == "not-found":
                _log.warning("rollback: unit unknown to systemd, not started", unit=unit.unit)
                continue
            known.append(unit)
        return tuple(known)

    async def _health(self, units: Sequence[ServiceUnit]) -> None:
        if self._controller is not None:
            await check_health(self._controller, units, settle_s=self._config.settle_s)
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


def _read_key(value: str) -> str | bytes:
    """``trusted_key`` is a path to a PEM file or the key itself (base64)."""
    path = Path(value)
    if value.startswith("/") or value.endswith(".pem"):
        try:
            return path.read_bytes()
        except OSError as exc:
            raise UpdaterError(
                ErrorCode.SIGNATURE_INVALID, f"cannot read trusted key {value}: {exc.strerror}"
            ) from None
    return value
