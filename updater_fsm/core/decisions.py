"""Guards and actions: what each row of the transition table checks and does.

:class:`Decisions` is the model object ``transitions`` drives. Its guards are pure
predicates on the journaled record, the event and ``now``; its actions edit the record and
append effects. Nothing here reads a clock, the disk or the network, so every decision is
reproducible from ``(record, event, now)``. The table (:mod:`.table`) refers to these
methods directly; :mod:`.machine` runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from transitions import EventData

from updater_fsm.core import effects as fx
from updater_fsm.core import events as ev
from updater_fsm.core.errors import ErrorCode, Failure
from updater_fsm.core.events import ResumePoint, RollbackTarget
from updater_fsm.core.history import Outcome, ended_job, entry_for
from updater_fsm.core.printer import PrinterGate
from updater_fsm.core.record import PACKAGE_TTL_S, Job, JobKind, Record
from updater_fsm.core.states import TERMINAL_STATES, State


@attrs.frozen
class Reply:
    """How the machine answers the caller: 200, or a rejection the API maps to its code."""

    code: int = 200
    msg: str = "success"

    @property
    def ok(self) -> bool:
        return self.code == 200


class Decisions:
    """The object ``transitions`` drives: guards and actions, named by the table's rows.

    Every guard and action takes the event its row's trigger carries (its parameter is
    annotated with that event class; ``tests/updater_fsm/test_machine.py`` checks each row
    against it), reads the journaled record and ``now``, and only edits the record and
    appends effects. ``source`` is the state the chosen transition leaves.
    """

    state: str
    trigger: Callable[..., bool]  # added by transitions.Machine

    def __init__(
        self, record: Record, resume_limit: int, gate: PrinterGate = PrinterGate.NONE
    ) -> None:
        self.record = record
        self.resume_limit = resume_limit
        self.gate = gate
        self.now = 0.0
        self.prior_interruptions = record.interruptions
        self.effects: list[fx.Effect] = []
        self.reply = Reply()
        self.fired = False
        self.source = State(record.state)
        self.prior_job: Job | None = record.job

    # ---- helpers -------------------------------------------------------------------
    @property
    def job(self) -> Job:
        assert self.record.job is not None, "transition needs a job"
        return self.record.job

    def _set_job(self, **changes: Any) -> None:
        self.record = attrs.evolve(
            self.record, job=attrs.evolve(self.job, updated_at=self.now, **changes)
        )

    def _new_job(self, **fields: Any) -> Job:
        """Start a new job (the next id, never reused across restarts); it replaces the last."""
        job_id = self.record.last_job_id + 1
        job = Job(job_id=job_id, created_at=self.now, updated_at=self.now, **fields)
        self.record = attrs.evolve(self.record, job=job, last_job_id=job_id)
        return job

    def _fail_job(self, failure: Failure, **changes: Any) -> None:
        """End the job with ``failure``: its text for people, its code for decisions."""
        self._set_job(error=str(failure), error_code=failure.code, **changes)

    def _request(self) -> ev.DownloadRequest:
        request = self.job.request
        assert request is not None, "job has no download request"
        return request

    # ---- machine-wide callbacks ----------------------------------------------------
    def on_accept(self, data: EventData) -> None:
        self.fired = True
        self.prior_job = self.record.job
        if data.transition is not None:
            self.source = State(data.transition.source)
        # A restart that resumes the step in place is one more interruption of it; anything
        # else (a result, a checkpoint, a new step) is progress and starts the count again.
        resumed_in_place = isinstance(data.kwargs["event"], ev.Resume) and (
            data.transition is not None and data.transition.dest is None
        )
        self.record = attrs.evolve(
            self.record,
            seq=self.record.seq + 1,
            interruptions=self._interrupted_times() if resumed_in_place else 0,
        )

    def on_state_change(self, data: EventData) -> None:
        if data.transition is None or data.transition.dest is None:
            return  # internal transition: nothing new to report
        if not any(isinstance(e, fx.Report) for e in self.effects):
            self.effects.append(fx.Report(terminal=State(self.state) in TERMINAL_STATES))
        self._record_ended_job()

    def _record_ended_job(self) -> None:
        """The one place a job's end is noticed: keep it in the history."""
        dest = State(self.state)
        ended = ended_job(self.prior_job, self.source, self.record.job, dest)
        if ended is None:
            return
        if self.record.job is not None and ended.job_id == self.record.job.job_id:
            self._set_job()  # updated_at: when it ended (a restart rebuilds the same entry)
            entry = entry_for(self.job, dest)
        else:  # a new job replaced it before it was installed
            replaced = attrs.evolve(ended, updated_at=self.now)
            entry = entry_for(replaced, dest, outcome=Outcome.REPLACED)
        self.effects.append(fx.RecordHistory(entry))

    def _history_again(self) -> None:
        """After a restart: the ended job may have been journaled but not yet kept."""
        job = self.record.job
        if job is not None:
            self.effects.append(fx.RecordHistory(entry_for(job, self.source)))

    # ---- guards --------------------------------------------------------------------
    def same_package(self, event: ev.DownloadRequested) -> bool:
        job = self.record.job
        return bool(job and job.request and job.request.same_package(event.request))

    def package_expired(self, event: ev.Event) -> bool:
        return self.record.job is not None and self.record.job.is_expired(self.now)

    def gate_waits(self, event: ev.Event) -> bool:
        """A busy probe is configured with ``busy_policy = wait``: installs wait for it."""
        return self.gate is PrinterGate.WAIT

    def printer_not_busy(
        self, event: ev.UpdateRequested | ev.RollbackRequested | ev.Staged
    ) -> bool:
        """Nobody asked the probe (there is none), or it said free."""
        return event.printer is None or event.printer.free

    def package_fresh(self, event: ev.Event) -> bool:
        return self.record.job is not None and not self.record.job.is_expired(self.now)

    def current_job(self, event: ev.Event) -> bool:
        job_id = getattr(event, "job_id", None)
        return self.record.job is not None and job_id == self.record.job.job_id

    def requested_version(self, event: ev.UpdateRequested) -> bool:
        return self.record.job is not None and self.record.job.version == event.version

    def package_kept(self, event: ev.Event) -> bool:
        return self.record.job is not None and self.record.job.package_kept

    def automatic(self, event: ev.Event) -> bool:
        return self.record.job is not None and self.record.job.kind is JobKind.UPDATE

    def has_factory(self, event: ev.Event) -> bool:
        return self.record.job is not None and self.record.job.factory_version is not None

    def can_roll_back(self, event: ev.Event) -> bool:
        job = self.record.job
        return job is not None and bool(job.from_version or job.factory_version)

    def carries_updater(self, event: ev.Healthy) -> bool:
        """The package carries a new updater: it switches once the device is healthy."""
        return self.record.job is not None and self.record.job.updater_version is not None

    def to_previous(self, event: ev.RollbackRequested) -> bool:
        return event.target is RollbackTarget.PREVIOUS and event.links.previous is not None

    def to_factory(self, event: ev.RollbackRequested) -> bool:
        return event.target is RollbackTarget.FACTORY and event.links.factory is not None

    def resume_limit_reached(self, event: ev.Event) -> bool:
        """This restart is the ``resume_limit``-th in a row to find the step unfinished."""
        return self._interrupted_times() >= self.resume_limit

    def _interrupted_times(self) -> int:
        """How many times the step has been interrupted, counting the restart at hand.

        Read before ``on_accept`` updates the record (guards) or from the record as it
        was when the event arrived (actions): ``handle`` keeps it in ``prior_interruptions``.
        """
        return self.prior_interruptions + 1

    def package_on_disk(self, event: ev.Resume) -> bool:
        return event.facts.package_present

    # ---- actions: download ---------------------------------------------------------
    def begin_download(self, event: ev.DownloadRequested) -> None:
        old = self.record.job
        durable = ResumePoint()
        if old is not None and old.request is not None:
            if _resumable(old) and old.request.same_package(event.request):
                # The same package failed mid-download before: keep its durable prefix.
                durable = old.durable
            else:
                self.effects.append(fx.DiscardPackage(old.request.package_name))
        job = self._new_job(request=event.request, durable=durable, fleet_action=event.fleet_action)
        self.effects.append(fx.StartDownload(job.job_id, event.request, job.durable))

    def join_request(self, event: ev.DownloadRequested) -> None:
        """The same package asked for again: a fleet action asking for it takes the job over
        (its feedback then reports this job); device-api's re-request changes nothing."""
        if event.fleet_action is not None and self.job.fleet_action != event.fleet_action:
            self._set_job(fleet_action=event.fleet_action)

    def checkpoint(self, event: ev.DownloadCheckpoint) -> None:
        self._set_job(durable=event.point)

    def begin_verify(self, event: ev.DownloadDone) -> None:
        self._set_job(
            durable=attrs.evolve(self.job.durable, offset=event.size),
            md5=event.md5,
            sha256=event.sha256,
        )
        self.effects.append(
            fx.VerifyPackage(self.job.job_id, self._request(), event.md5, event.sha256)
        )

    def fail_download(self, event: ev.DownloadFailed | ev.VerifyFailed) -> None:
        self._fail_job(event.failure)
        if isinstance(event, ev.VerifyFailed):
            self.effects.append(fx.DiscardPackage(self._request().package_name))

    def mark_verified(self, event: ev.Event) -> None:
        # A kept package re-verified keeps its first verification time: the 24-hour
        # window is not extended by checking the same bytes again.
        self._set_job(verified_at=self.job.verified_at or self.now)

    def _reuse_kept_package(self, fleet_action: str | None = None) -> Job:
        """A new job for the kept, verified package of the failed one (for the same fleet
        action, unless a new one asks for it)."""
        old = self.job
        return self._new_job(
            request=old.request,
            durable=old.durable,
            md5=old.md5,
            sha256=old.sha256,
            verified_at=old.verified_at,
            fleet_action=fleet_action or old.fleet_action,
        )

    def reverify_kept_package(self, event: ev.DownloadRequested) -> None:
        """The same package again after a full disk: hash the kept file, do not download."""
        job = self._reuse_kept_package(event.fleet_action)
        self.effects.append(fx.VerifyPackage(job.job_id, self._request()))

    def rewait_kept_package(self, event: ev.Event) -> None:
        """``POST /update`` again after a full disk, with installs waiting for the printer."""
        self._reuse_kept_package()
        self.begin_waiting(event)

    def redeploy_kept_package(self, event: ev.Event) -> None:
        """``POST /update`` again after a full disk: stage from the kept package."""
        self._reuse_kept_package()
        self.begin_deploy(event)

    def expire(self, event: ev.Event) -> None:
        request = self._request()
        self._fail_job(
            Failure(
                ErrorCode.PACKAGE_EXPIRED,
                f"v{request.version} was verified more than 24 h ago (or the clock moved"
                " back); download it again",
            )
        )
        self.reply = Reply(410, self.job.error or "")
        self.effects.append(fx.DiscardPackage(request.package_name))

    # ---- actions: install ----------------------------------------------------------
    def begin_waiting(self, event: ev.Event) -> None:
        """Wait for the printer: nothing is stopped, staged or switched meanwhile."""
        self.effects += [self._wait_effect(), fx.ShowScreen()]

    def _wait_effect(self) -> fx.WaitForPrinter:
        job = self.job
        verified_at = job.verified_at if job.verified_at is not None else self.now
        return fx.WaitForPrinter(job.job_id, verified_at + PACKAGE_TTL_S)

    def note_printer(self, event: ev.PrinterAnswered) -> None:
        """Keep why the printer is busy (journaled) and tell device-api once."""
        self._set_job(printer_reason=event.status.reason)
        self.effects.append(fx.Report())

    def fail_wait(self, event: ev.WaitFailed) -> None:
        """The busy gate broke down while waiting: fail, keeping the verified package for a
        later ``POST /update``; nothing was stopped (the printer keeps printing)."""
        self._fail_job(
            Failure(ErrorCode.PRINTER_BUSY, f"the busy gate failed: {event.failure.detail}"),
            package_kept=True,
        )

    def stop_waiting(self, event: ev.Event) -> None:
        """Cancelled while waiting: stop asking; the verified package stays installable."""
        self.effects.append(fx.StopJob(self.job.job_id))

    def begin_deploy(self, event: ev.Event) -> None:
        request = self._request()
        self.effects += [
            fx.StageSnapshot(self.job.job_id, request.version, request.package_name),
            fx.ShowScreen(),  # the printer's GUI is about to stop: say what is happening
        ]

    def wait_again_before_switch(self, event: ev.Staged) -> None:
        """Busy again after staging: drop the unused snapshot, wait, and stage again later."""
        self._set_job(printer_reason=event.printer.reason if event.printer else None)
        self.effects += [
            fx.DiscardStaging(self._request().version),
            fx.CollectGarbage(),  # the built snapshot: no link names it
            self._wait_effect(),
        ]

    def refuse_switch(self, event: ev.Staged) -> None:
        """Busy again after staging under ``refuse``: fail before anything is stopped."""
        request = self._request()
        reason = event.printer.reason if event.printer else ""
        self._fail_job(
            Failure(ErrorCode.PRINTER_BUSY, reason or "the busy probe says so"), package_kept=True
        )
        self.effects += [fx.DiscardStaging(request.version), fx.CollectGarbage()]

    def begin_switch(self, event: ev.Staged) -> None:
        self._set_job(
            units=event.units,
            from_version=event.links.current,
            factory_version=event.links.factory,
            previous_before=event.links.previous,
            updater_version=event.updater_version,
        )
        self.effects.append(self._switch_effect())

    def _switch_effect(self) -> fx.SwitchVersion:
        job = self.job
        request = self._request()
        return fx.SwitchVersion(
            job.job_id,
            request.version,
            request.package_name,
            job.from_version,
            job.units,
            job.post_cmds_done,
        )

    def note_post_cmd(self, event: ev.PostCmdDone) -> None:
        self._set_job(post_cmds_done=event.done)

    def fail_stage(self, event: ev.StageFailed) -> None:
        request = self._request()
        # Out of space is the device's problem, not the package's: keep the verified
        # package so a retry once space is freed needs no new download.
        keep = event.failure.code is ErrorCode.DISK_FULL
        self._fail_job(event.failure, package_kept=keep)
        self.effects.append(fx.DiscardStaging(request.version))
        if not keep:
            self.effects.append(fx.DiscardPackage(request.package_name))

    def begin_health(self, event: ev.Event) -> None:
        self.effects.append(fx.CheckHealth(self.job.job_id, self.job.units))

    def finish_success(self, event: ev.Event) -> None:
        self.record = attrs.evolve(
            self.record, last_units=self.job.units, last_version=self._request().version
        )
        self.effects += [
            fx.RaiseRollbackFloor(self._request().version),
            fx.DiscardPackage(self._request().package_name),
            fx.CollectGarbage(),
            fx.Report(terminal=True),
        ]

    # ---- actions: the updater updates itself -----------------------------------------
    def _updater_version(self) -> str:
        version = self.job.updater_version
        assert version is not None, "guards ensure the package carries an updater"
        return version

    def begin_updater_stage(self, event: ev.Healthy) -> None:
        """The device is healthy on the new version (kept whatever happens to the updater
        now); install the package's updater into a slot of its own."""
        request = self._request()
        self.record = attrs.evolve(
            self.record, last_units=self.job.units, last_version=request.version
        )
        self.effects.append(self._stage_updater_effect())

    def _stage_updater_effect(self) -> fx.StageUpdater:
        request = self._request()
        return fx.StageUpdater(
            self.job.job_id, self._updater_version(), request.package_name, request.version
        )

    def begin_updater_switch(self, event: ev.UpdaterStaged) -> None:
        """Journaled before anything moves: from here a restart resumes the switch."""
        self.effects.append(fx.SwitchUpdater(self.job.job_id, self._updater_version()))

    def begin_probation(self, event: ev.UpdaterStarted) -> None:
        self.effects.append(fx.ConfirmUpdater(self.job.job_id, self._updater_version()))

    def finish_updater(self, event: ev.UpdaterConfirmed) -> None:
        self.finish_success(event)
        self.effects.insert(0, fx.CollectUpdaterSlots())

    def fail_updater_stage(self, event: ev.UpdaterStageFailed) -> None:
        """The new updater could not be installed: the device's new version stands, the
        updater stays what it was."""
        request = self._request()
        self._fail_job(
            Failure(
                event.failure.code,
                f"v{request.version} is installed and healthy; the updater"
                f" {self._updater_version()} is not ({event.failure.detail})",
            )
        )
        self.effects += [
            fx.DiscardPackage(request.package_name),
            fx.CollectUpdaterSlots(),
            fx.CollectGarbage(),
            fx.Report(terminal=True),
        ]

    def fail_updater_rollback(self, event: ev.UpdaterRolledBack) -> None:
        """The guard put the old updater back (reported once: the guard's record is deleted
        only after this is journaled)."""
        self._fail_job(event.failure)
        self.effects += [
            fx.DiscardPackage(self._request().package_name),
            fx.CollectUpdaterSlots(),
            fx.CollectGarbage(),
            fx.Report(terminal=True),
        ]

    def resume_updater_stage(self, event: ev.Event) -> None:
        """Building the slot again completes or redoes it (a half-built one is replaced)."""
        self.effects.append(self._stage_updater_effect())

    def resume_updater_switch(self, event: ev.Event) -> None:
        """The switch judges by what runs: the new updater starts its probation, the old one
        (killed mid-switch) completes the switch, a guard record reports the way back."""
        self.effects.append(fx.SwitchUpdater(self.job.job_id, self._updater_version()))

    def resume_probation(self, event: ev.Event) -> None:
        self.effects.append(fx.ConfirmUpdater(self.job.job_id, self._updater_version()))

    # ---- actions: rollback ---------------------------------------------------------
    def begin_rollback(self, event: ev.SwitchFailed | ev.Unhealthy) -> None:
        job = self.job
        self._set_job(cause=str(event.failure))
        # Level 1 returns to the version that ran before; on a layout that had no `current`
        # link the factory version is the only one that ever ran.
        self._start_rollback(1, job.from_version or job.factory_version)
        self.effects.append(fx.ShowScreen())

    def begin_manual_rollback(self, event: ev.RollbackRequested) -> None:
        old = self.record.job
        if old is not None and old.package_kept and old.request is not None:
            self.effects.append(fx.DiscardPackage(old.request.package_name))
        self._new_job(
            kind=JobKind.MANUAL_ROLLBACK,
            from_version=event.links.current,
            factory_version=event.links.factory,
            units=self.record.last_units or event.units,
        )
        if event.target is RollbackTarget.PREVIOUS:
            self._start_rollback(1, event.links.previous)
        else:
            self._start_rollback(2, event.links.factory)
        self.effects.append(fx.ShowScreen())

    def escalate_rollback(self, event: ev.RollbackFailed) -> None:
        cause = self.job.cause or "manual rollback"
        self._set_job(cause=f"{cause}; level 1: {event.failure}")
        self._start_rollback(2, self.job.factory_version)

    def _start_rollback(self, level: int, target: str | None) -> None:
        assert target is not None, "guards ensure a rollback target exists"
        self._set_job(rollback_level=level, rollback_target=target)
        self.effects.append(self._rollback_effect())

    def _rollback_effect(self) -> fx.RollBack:
        job = self.job
        target = job.rollback_target
        assert target is not None
        if job.kind is JobKind.UPDATE:
            failed: str | None = self._request().version
            # `previous` goes back to what it named before the switch, unless that is gone.
            previous_after = job.previous_before or target
            if previous_after == failed:
                previous_after = target
        else:
            failed = None
            previous_after = job.from_version or target  # the version we just left
        # Probes are known for the target only if it is the version the last successful
        # install put in place (they come from that version's manifest).
        known = self.record.last_units if self.record.last_version == target else ()
        return fx.RollBack(
            job.job_id, job.rollback_level, target, failed, job.units, previous_after, known
        )

    def finish_rollback(self, event: ev.Event) -> None:
        job = self.job
        if job.kind is JobKind.UPDATE:
            code = (
                ErrorCode.ROLLBACK_LEVEL_2_SUCCESS
                if job.rollback_level == 2
                else ErrorCode.ROLLBACK_LEVEL_1_SUCCESS
            )
            self._fail_job(Failure(code, f"v{job.rollback_target} (cause: {job.cause})"))
            request = self._request()
            self.effects += [
                fx.RemoveSnapshot(request.version),
                fx.DiscardPackage(request.package_name),
            ]
        # Moving `current`/`previous` can orphan a snapshot (after a level-2 rollback, the
        # version that was running before the update is named by no link any more).
        self.effects += [fx.CollectGarbage(), fx.Report(terminal=True)]

    def give_up(self, event: ev.RollbackFailed | ev.SwitchFailed | ev.Unhealthy) -> None:
        if isinstance(event, ev.RollbackFailed):
            detail = f"cause: {self.job.cause}; last rollback: {event.failure}"
        else:
            detail = f"cause: {event.failure}; no version to roll back to"
        self._fail_job(
            Failure(ErrorCode.ROLLBACK_FAILED, f"manual intervention required ({detail})")
        )
        self.effects.append(fx.Report(terminal=True))

    # ---- actions: crash-loop breaker -------------------------------------------------
    def _interrupted(self) -> Failure:
        return Failure(
            ErrorCode.RESUME_LIMIT,
            f"{self.source} interrupted {self._interrupted_times()} times"
            " (the updater died every time it ran this step)",
        )

    def fail_interrupted(self, event: ev.Event) -> None:
        """Before the switch nothing runs a new version yet: the job simply fails."""
        request = self._request()
        self._fail_job(self._interrupted())
        self.effects.append(fx.DiscardPackage(request.package_name))
        if self.source is State.DEPLOYING:
            self.effects += [fx.DiscardStaging(request.version), fx.CollectGarbage()]
        if self.source is State.UPDATER_STAGING:
            self.effects.append(fx.CollectUpdaterSlots())  # the half-built slot

    def roll_back_interrupted(self, event: ev.Event) -> None:
        job = self.job
        self._set_job(cause=str(self._interrupted()))
        self._start_rollback(1, job.from_version or job.factory_version)

    def escalate_interrupted(self, event: ev.Event) -> None:
        cause = self.job.cause or "manual rollback"
        self._set_job(cause=f"{cause}; level 1: {self._interrupted()!s}")
        self._start_rollback(2, self.job.factory_version)

    def give_up_interrupted(self, event: ev.Event) -> None:
        detail = str(self._interrupted())
        if self.job.cause:
            detail = f"cause: {self.job.cause}; last rollback: {detail}"
        else:
            detail = f"cause: {detail}; no version to roll back to"
        self._fail_job(
            Failure(ErrorCode.ROLLBACK_FAILED, f"manual intervention required ({detail})")
        )

    def report_only(self, event: ev.Event) -> None:
        """Report the outcome again, without the clean-up that keeps taking the process down."""
        self.effects.append(fx.Report(terminal=True))

    # ---- actions: operator -----------------------------------------------------------
    def cancel_job(self, event: ev.Event) -> None:
        job = self.job
        self._fail_job(Failure(ErrorCode.CANCELLED, "cancelled by request"))
        self.effects.append(fx.StopJob(job.job_id))
        if job.request is not None:
            self.effects.append(fx.DiscardPackage(job.request.package_name))
            if self.source is State.DEPLOYING:
                # The stage may have finished its rename before the cancel took effect:
                # collecting garbage removes that snapshot too (no link names it yet).
                self.effects += [fx.DiscardStaging(job.request.version), fx.CollectGarbage()]

    def clear(self, event: ev.Event) -> None:
        job = self.record.job
        if job is not None and job.request is not None:
            self.effects.append(fx.DiscardPackage(job.request.package_name))
        self.record = attrs.evolve(self.record, job=None)

    # ---- actions: restart recovery (contract §6) -------------------------------------
    def resume_idle(self, event: ev.Event) -> None:
        """Nothing is running; a job that ended in idle (cancelled, expired, a manual
        rollback) is kept in the history again (idempotent)."""
        self._history_again()

    def resume_download(self, event: ev.Resume) -> None:
        """Continue from the last durable byte the ``.part`` file still has."""
        job = self.job
        on_disk = event.facts.part_size or 0
        if event.facts.package_present:
            # Died between publishing the finished package and journaling DownloadDone: the
            # whole file is on disk (the downloader re-hashes it instead of fetching again).
            on_disk = self._request().package_size
        offset = min(job.durable.offset, on_disk)
        # Nothing durable left: start over, and without validators of bytes we do not have.
        resume = attrs.evolve(job.durable, offset=offset) if offset > 0 else ResumePoint()
        self._set_job(durable=resume, md5=None, sha256=None)
        self.effects.append(fx.StartDownload(job.job_id, self._request(), resume))

    def resume_verify(self, event: ev.Event) -> None:
        """Digests computed before the restart are not trusted: hash the file again."""
        self.effects.append(fx.VerifyPackage(self.job.job_id, self._request()))

    def resume_waiting(self, event: ev.Event) -> None:
        """Still waiting after a restart: ask the probe again."""
        self.effects.append(self._wait_effect())

    def resume_ready(self, event: ev.Event) -> None:
        """A verified package survives restarts until it expires."""

    def resume_deploy(self, event: ev.Event) -> None:
        """A half-staged snapshot is discarded and staged again."""
        request = self._request()
        self.effects += [
            fx.DiscardStaging(request.version),
            fx.StageSnapshot(self.job.job_id, request.version, request.package_name),
        ]

    def resume_switch(self, event: ev.Event) -> None:
        """The switch is idempotent: running it again completes what the links show."""
        self.effects.append(self._switch_effect())

    def resume_health(self, event: ev.Event) -> None:
        self.effects.append(fx.CheckHealth(self.job.job_id, self.job.units))

    def resume_rollback(self, event: ev.Event) -> None:
        """Pointing ``current`` and restarting units is idempotent: run the level again."""
        self.effects.append(self._rollback_effect())

    def resume_terminal(self, event: ev.Event) -> None:
        """A finished outcome is reported again: device-api may never have received it.

        The clean-up that followed the outcome (removing the failed snapshot, old ones) may
        have died with the process too; collecting garbage again is idempotent, and so is
        raising the rollback floor to a successful install's version, and keeping the job
        in the history (one entry per job id).
        """
        job = self.record.job
        if self.source is State.SUCCESS and job is not None and job.request is not None:
            self.effects.append(fx.RaiseRollbackFloor(job.request.version))
        self.effects += [fx.CollectGarbage(), fx.Report(terminal=True)]
        self._history_again()


def _resumable(job: Job) -> bool:
    """A failed download whose ``.part`` is worth continuing when the same package is asked."""
    return (
        job.verified_at is None
        and job.durable.offset > 0
        and job.error_code in (ErrorCode.DOWNLOAD_FAILED, ErrorCode.DISK_FULL)
    )
