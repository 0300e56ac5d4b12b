"""Restart recovery (contract §6): one rule per state, each tested on its own.

After a restart the engine rebuilds the machine from the journal (no ``on_enter`` runs) and
sends ``Resume(facts)`` with what the disk shows; these are the decisions it must get.
"""

from __future__ import annotations

from updater_fsm.core import effects as fx
from updater_fsm.core import events as ev
from updater_fsm.core.errors import ErrorCode, Failure
from updater_fsm.core.machine import UpdaterMachine
from updater_fsm.core.record import PACKAGE_TTL_S
from updater_fsm.core.table import State

from .helpers import LINKS, MD5, SHA, T0, UNITS, at_health_check, at_ready, drive, request


def restart(
    m: UpdaterMachine, facts: ev.DiskFacts, now: float = T0
) -> tuple[UpdaterMachine, object]:
    restored = UpdaterMachine(m.record)
    decision = restored.handle(ev.Resume(facts), now)
    assert decision.accepted
    return restored, decision


def test_idle_does_nothing() -> None:
    m, d = restart(UpdaterMachine(), ev.DiskFacts())
    assert m.state is State.IDLE and d.effects == ()  # type: ignore[attr-defined]


def test_downloading_resumes_from_the_durable_byte() -> None:
    m = UpdaterMachine()
    drive(m, ev.DownloadRequested(request()), ev.DownloadCheckpoint(1, ev.ResumePoint(700, '"v1"')))
    m, d = restart(m, ev.DiskFacts(part_size=900))
    assert m.state is State.DOWNLOADING
    assert d.effects == (fx.StartDownload(1, request(), ev.ResumePoint(700, '"v1"')),)  # type: ignore[attr-defined]


def test_downloading_with_a_shorter_part_file_resumes_from_what_is_on_disk() -> None:
    # Power loss can revert the .part past the journal's checkpoint: trust the smaller.
    m = UpdaterMachine()
    drive(m, ev.DownloadRequested(request()), ev.DownloadCheckpoint(1, ev.ResumePoint(700, '"v1"')))
    m, d = restart(m, ev.DiskFacts(part_size=300))
    assert d.effects[0].resume.offset == 300  # type: ignore[attr-defined]


def test_downloading_without_part_file_restarts_from_zero_without_validators() -> None:
    m = UpdaterMachine()
    drive(m, ev.DownloadRequested(request()), ev.DownloadCheckpoint(1, ev.ResumePoint(700, '"v1"')))
    m, d = restart(m, ev.DiskFacts(part_size=None))
    assert d.effects == (fx.StartDownload(1, request(), ev.ResumePoint()),)  # type: ignore[attr-defined]


def test_downloading_with_the_finished_package_on_disk_does_not_fetch_again() -> None:
    # Killed after the .part was renamed into place but before DownloadDone was journaled.
    m = UpdaterMachine()
    drive(
        m, ev.DownloadRequested(request()), ev.DownloadCheckpoint(1, ev.ResumePoint(1000, '"v1"'))
    )
    m, d = restart(m, ev.DiskFacts(part_size=None, package_present=True))
    assert d.effects == (fx.StartDownload(1, request(), ev.ResumePoint(1000, '"v1"')),)  # type: ignore[attr-defined]


def test_verifying_rehashes_the_package() -> None:
    m = UpdaterMachine()
    drive(m, ev.DownloadRequested(request()), ev.DownloadDone(1, 1000, MD5, SHA))
    m, d = restart(m, ev.DiskFacts(package_present=True))
    assert m.state is State.VERIFYING
    assert d.effects == (fx.VerifyPackage(1, request()),)  # type: ignore[attr-defined]


def test_verifying_with_the_package_gone_downloads_again() -> None:
    m = UpdaterMachine()
    drive(m, ev.DownloadRequested(request()), ev.DownloadDone(1, 1000, MD5, SHA))
    m, d = restart(m, ev.DiskFacts(package_present=False, part_size=None))
    assert m.state is State.DOWNLOADING
    assert isinstance(d.effects[0], fx.StartDownload)  # type: ignore[attr-defined]


def test_ready_survives_a_restart() -> None:
    m, d = restart(at_ready(), ev.DiskFacts(package_present=True))
    assert m.state is State.READY and d.effects == ()  # type: ignore[attr-defined]


def test_ready_with_package_missing_or_expired_goes_idle() -> None:
    m, _ = restart(at_ready(), ev.DiskFacts(package_present=False))
    assert m.state is State.IDLE
    m, d = restart(at_ready(), ev.DiskFacts(package_present=True), now=T0 + PACKAGE_TTL_S + 5)
    assert m.state is State.IDLE and fx.DiscardPackage("update.zip") in d.effects  # type: ignore[attr-defined]


def test_deploying_discards_the_half_staged_snapshot_and_restages() -> None:
    m = at_ready()
    drive(m, ev.UpdateRequested("1.2.3"))
    m, d = restart(m, ev.DiskFacts(package_present=True))
    assert m.state is State.DEPLOYING
    assert d.effects == (  # type: ignore[attr-defined]
        fx.DiscardStaging("1.2.3"),
        fx.StageSnapshot(1, "1.2.3", "update.zip"),
    )


def test_switching_runs_the_idempotent_switch_again() -> None:
    m = at_ready()
    drive(m, ev.UpdateRequested("1.2.3"), ev.Staged(1, UNITS, LINKS))
    m, d = restart(m, ev.DiskFacts(links=ev.LinkVersions("1.2.3", "1.0.0", "0.9.0")))
    assert m.state is State.SWITCHING
    assert d.effects == (fx.SwitchVersion(1, "1.2.3", "update.zip", "1.0.0", UNITS),)  # type: ignore[attr-defined]


def test_health_check_runs_again() -> None:
    m, d = restart(at_health_check(), ev.DiskFacts())
    assert m.state is State.HEALTH_CHECK and d.effects == (fx.CheckHealth(1, UNITS),)  # type: ignore[attr-defined]


def test_rollback_levels_resume_with_the_same_target() -> None:
    m = at_health_check()
    drive(m, ev.Unhealthy(1, Failure(ErrorCode.HEALTH_CHECK_FAILED, "x")))
    m1, d = restart(m, ev.DiskFacts())
    assert m1.state is State.ROLLBACK_PREVIOUS
    assert d.effects == (fx.RollBack(1, 1, "1.0.0", "1.2.3", UNITS, "0.9.0"),)  # type: ignore[attr-defined]
    drive(m, ev.RollbackFailed(1, Failure(ErrorCode.HEALTH_CHECK_FAILED, "y")))
    m2, d = restart(m, ev.DiskFacts())
    assert m2.state is State.ROLLBACK_FACTORY
    assert d.effects == (fx.RollBack(1, 2, "0.9.0", "1.2.3", UNITS, "0.9.0"),)  # type: ignore[attr-defined]


def test_finished_outcomes_are_reported_again() -> None:
    m = at_health_check()
    drive(m, ev.Healthy(1))
    m, d = restart(m, ev.DiskFacts())
    # A success raises the rollback floor again (idempotent: it may not have been written).
    # So is the history: the same entry as when the job ended (written once, by job id).
    ended = drive(at_health_check(), ev.Healthy(1)).effects[-1]
    assert isinstance(ended, fx.RecordHistory)
    assert m.state is State.SUCCESS and d.effects == (  # type: ignore[attr-defined]
        fx.RaiseRollbackFloor("1.2.3"),
        fx.CollectGarbage(),
        fx.Report(terminal=True),
        ended,
    )
    m = at_health_check()
    drive(m, ev.Unhealthy(1, Failure(ErrorCode.HEALTH_CHECK_FAILED, "x")))
    ended = drive(m, ev.RollbackOk(1), now=T0 + 5).effects[-1]
    assert isinstance(ended, fx.RecordHistory) and ended.entry.ended_at == T0 + 5
    m, d = restart(m, ev.DiskFacts(), now=T0 + 99)
    assert m.state is State.FAILED and d.effects == (  # type: ignore[attr-defined]
        fx.CollectGarbage(),
        fx.Report(terminal=True),
        ended,
    )


def test_a_job_ended_in_idle_is_kept_in_the_history_again() -> None:
    """Cancelled (idle): a restart asks for the history entry again; a reset job does not."""
    m = UpdaterMachine()
    drive(m, ev.DownloadRequested(request()))
    ended = drive(m, ev.Cancel(), now=T0 + 3).effects[-1]
    assert isinstance(ended, fx.RecordHistory)
    assert ended.entry.outcome.value == "cancelled" and ended.entry.ended_at == T0 + 3
    m, d = restart(m, ev.DiskFacts(), now=T0 + 99)
    assert m.state is State.IDLE and d.effects == (ended,)  # type: ignore[attr-defined]
    drive(m, ev.Reset())
    m, d = restart(m, ev.DiskFacts())
    assert d.effects == ()  # type: ignore[attr-defined]


def test_a_verified_package_replaced_by_a_new_download_is_kept_as_replaced() -> None:
    m = at_ready()
    d = drive(m, ev.DownloadRequested(request("1.3.0", name="new.zip")), now=T0 + 7)
    ended = d.effects[-1]
    assert isinstance(ended, fx.RecordHistory)
    assert (ended.entry.job_id, ended.entry.to_version, ended.entry.outcome.value) == (
        1,
        "1.2.3",
        "replaced",
    )
    assert ended.entry.ended_at == T0 + 7


# ---- the crash-loop breaker -----------------------------------------------------------


def at_switching() -> UpdaterMachine:
    m = at_ready()
    drive(m, ev.UpdateRequested("1.2.3"), ev.Staged(1, UNITS, LINKS))
    return m


def restarts(m: UpdaterMachine, times: int, facts: ev.DiskFacts | None = None) -> UpdaterMachine:
    for _ in range(times):
        m, _d = restart(m, facts or ev.DiskFacts(package_present=True, links=LINKS))
    return m


def test_a_switch_that_kills_the_updater_three_times_rolls_back() -> None:
    m = restarts(at_switching(), 2)
    assert m.state is State.SWITCHING and m.record.interruptions == 2
    restored = UpdaterMachine(m.record)
    d = restored.handle(ev.Resume(ev.DiskFacts(links=LINKS)), T0)
    assert restored.state is State.ROLLBACK_PREVIOUS
    assert restored.record.interruptions == 0  # the rollback is a new step
    job = restored.record.job
    assert job is not None
    assert job.cause == (
        "RESUME_LIMIT: switching interrupted 3 times (the updater died every time it ran this step)"
    )
    assert d.effects[0] == fx.RollBack(1, 1, "1.0.0", "1.2.3", UNITS, "0.9.0")
    # and the ladder's outcome names the cause
    drive(restored, ev.RollbackOk(1))
    assert restored.record.job is not None and restored.record.job.error is not None
    assert restored.record.job.error.startswith("ROLLBACK_LEVEL_1_SUCCESS: v1.0.0 (cause: RESUME")


def test_progress_between_restarts_resets_the_count() -> None:
    m = restarts(at_switching(), 2)
    drive(m, ev.PostCmdDone(1, 1))
    assert m.record.interruptions == 0
    m = restarts(m, 2)
    assert m.state is State.SWITCHING and m.record.interruptions == 2


def test_a_resumed_switch_skips_the_post_cmds_already_journaled() -> None:
    m = at_switching()
    drive(m, ev.PostCmdDone(1, 1), ev.PostCmdDone(1, 2))
    m, d = restart(m, ev.DiskFacts(links=LINKS))
    assert d.effects == (fx.SwitchVersion(1, "1.2.3", "update.zip", "1.0.0", UNITS, 2),)  # type: ignore[attr-defined]


def test_post_cmd_results_of_another_job_are_ignored() -> None:
    m = at_switching()
    assert not m.handle(ev.PostCmdDone(7, 1), T0).accepted
    assert m.record.job is not None and m.record.job.post_cmds_done == 0


def test_a_staging_that_keeps_dying_fails_cleanly_before_anything_is_stopped() -> None:
    m = at_ready()
    drive(m, ev.UpdateRequested("1.2.3"))
    m = restarts(m, 2)
    restored = UpdaterMachine(m.record)
    d = restored.handle(ev.Resume(ev.DiskFacts(package_present=True, links=LINKS)), T0)
    assert restored.state is State.FAILED
    job = restored.record.job
    assert job is not None and job.error is not None
    assert job.error.startswith("RESUME_LIMIT: deploying interrupted 3 times")
    assert fx.DiscardStaging("1.2.3") in d.effects
    assert fx.DiscardPackage("update.zip") in d.effects
    assert not any(isinstance(e, fx.SwitchVersion | fx.RollBack) for e in d.effects)


def test_a_download_that_keeps_dying_fails() -> None:
    m = UpdaterMachine()
    drive(m, ev.DownloadRequested(request()))
    m = restarts(m, 3, ev.DiskFacts(part_size=0))
    assert m.state is State.FAILED
    assert m.record.job is not None and m.record.job.error is not None
    assert m.record.job.error.startswith("RESUME_LIMIT: downloading interrupted 3 times")


def test_a_rollback_level_that_keeps_dying_escalates_then_gives_up() -> None:
    m = at_health_check()
    drive(m, ev.Unhealthy(1, Failure(ErrorCode.HEALTH_CHECK_FAILED, "x")))
    assert m.state is State.ROLLBACK_PREVIOUS
    m = restarts(m, 3)
    assert m.state is State.ROLLBACK_FACTORY
    job = m.record.job
    assert job is not None and job.rollback_level == 2 and job.rollback_target == "0.9.0"
    assert job.cause is not None and "level 1: RESUME_LIMIT: rollback_previous" in job.cause
    m = restarts(m, 3)
    assert m.state is State.FAILED
    job = m.record.job
    assert job is not None and job.error is not None
    assert job.error.startswith("ROLLBACK_FAILED: manual intervention required (cause: ")
    assert "RESUME_LIMIT: rollback_factory interrupted 3 times" in job.error


def test_a_terminal_state_whose_clean_up_keeps_dying_only_reports() -> None:
    m = at_health_check()
    drive(m, ev.Healthy(1))
    m = restarts(m, 2)
    restored = UpdaterMachine(m.record)
    d = restored.handle(ev.Resume(ev.DiskFacts(links=LINKS)), T0)
    assert restored.state is State.SUCCESS
    assert d.effects == (fx.Report(terminal=True),)


def test_resume_limit_one_fails_the_step_at_the_first_restart() -> None:
    m = at_switching()
    restored = UpdaterMachine(m.record, resume_limit=1)
    restored.handle(ev.Resume(ev.DiskFacts(links=LINKS)), T0)
    assert restored.state is State.ROLLBACK_PREVIOUS
