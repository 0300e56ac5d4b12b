"""The updater updates itself: the rows of the transition table, on the pure machine."""

from __future__ import annotations

from updater_fsm.core import effects as fx
from updater_fsm.core import events as ev
from updater_fsm.core.errors import ErrorCode, Failure
from updater_fsm.core.machine import UpdaterMachine
from updater_fsm.core.progress import build_snapshot
from updater_fsm.core.table import Stage, State

from .helpers import LINKS, UNITS, at_ready, drive

UPDATER = "0.2.0"
NO_FACTS = ev.DiskFacts()


def at_health_check_with_updater() -> UpdaterMachine:
    m = at_ready()
    drive(
        m,
        ev.UpdateRequested("1.2.3"),
        ev.Staged(1, UNITS, LINKS, updater_version=UPDATER),
        ev.Switched(1),
    )
    assert m.record.job is not None and m.record.job.updater_version == UPDATER
    return m


def at_switching() -> UpdaterMachine:
    m = at_health_check_with_updater()
    drive(m, ev.Healthy(1), ev.UpdaterStaged(1))
    return m


def test_a_healthy_device_stages_the_updater_then_switches_it() -> None:
    m = at_health_check_with_updater()
    d = drive(m, ev.Healthy(1))
    assert m.state is State.UPDATER_STAGING
    assert fx.StageUpdater(1, UPDATER, "update.zip", "1.2.3") in d.effects
    # The device's install stands whatever happens to the updater now.
    assert m.record.last_version == "1.2.3" and m.record.last_units == UNITS
    assert not any(isinstance(e, fx.DiscardPackage) for e in d.effects)  # the bundle is in it
    d = drive(m, ev.UpdaterStaged(1))
    assert m.state is State.UPDATER_SWITCHING
    assert fx.SwitchUpdater(1, UPDATER) in d.effects
    snap = build_snapshot(m.record, None, LINKS)
    assert snap.stage is Stage.INSTALLING and "Restarting into the updater 0.2.0" in snap.message


def test_the_new_updater_resumes_the_switch_proves_itself_and_succeeds() -> None:
    m = at_switching()
    d = drive(m, ev.Resume(NO_FACTS))  # the new process: the switch judges what runs
    assert m.state is State.UPDATER_SWITCHING and d.effects == (fx.SwitchUpdater(1, UPDATER),)
    d = drive(m, ev.UpdaterStarted(1))
    assert m.state is State.UPDATER_PROBATION and fx.ConfirmUpdater(1, UPDATER) in d.effects
    d = drive(m, ev.Resume(NO_FACTS))  # restarted while on probation: confirm again
    assert d.effects == (fx.ConfirmUpdater(1, UPDATER),)
    d = drive(m, ev.UpdaterConfirmed(1))
    assert m.state is State.SUCCESS
    assert fx.CollectUpdaterSlots() in d.effects and fx.Report(terminal=True) in d.effects
    assert fx.DiscardPackage("update.zip") in d.effects


def test_a_guard_rollback_fails_the_job_once_with_its_reason() -> None:
    for probation in (False, True):
        m = at_switching()
        if probation:
            drive(m, ev.UpdaterStarted(1))
        failure = Failure(
            ErrorCode.UPDATER_ROLLBACK, "0.2.0 failed to start (exited 3 times during probation)"
        )
        d = drive(m, ev.UpdaterRolledBack(1, failure))
        assert m.state is State.FAILED
        assert m.record.job is not None and m.record.job.error == str(failure)
        assert fx.CollectUpdaterSlots() in d.effects and fx.Report(terminal=True) in d.effects
        snap = build_snapshot(m.record, None, LINKS)
        assert snap.error == str(failure) and str(failure) in snap.message
        # The device's new version stands: it is the one the next rollback knows.
        assert m.record.last_version == "1.2.3"


def test_an_updater_that_cannot_be_staged_leaves_the_device_installed() -> None:
    m = at_health_check_with_updater()
    drive(m, ev.Healthy(1))
    failure = Failure(ErrorCode.UPDATER_INSTALL_FAILED, "pip install exited 1")
    d = drive(m, ev.UpdaterStageFailed(1, failure))
    assert m.state is State.FAILED and m.record.job is not None
    assert m.record.job.error == (
        "UPDATER_INSTALL_FAILED: v1.2.3 is installed and healthy; the updater 0.2.0 is not"
        " (pip install exited 1)"
    )
    assert fx.CollectUpdaterSlots() in d.effects and fx.DiscardPackage("update.zip") in d.effects


def test_an_unhealthy_device_rolls_back_and_never_stages_the_updater() -> None:
    m = at_health_check_with_updater()
    d = drive(m, ev.Unhealthy(1, Failure(ErrorCode.HEALTH_CHECK_FAILED, "x")))
    assert m.state is State.ROLLBACK_PREVIOUS
    assert not any(isinstance(e, fx.StageUpdater | fx.SwitchUpdater) for e in d.effects)
    drive(m, ev.RollbackOk(1))
    assert m.state is State.FAILED


def test_a_package_without_an_updater_succeeds_at_the_health_check() -> None:
    m = at_ready()
    drive(m, ev.UpdateRequested("1.2.3"), ev.Staged(1, UNITS, LINKS), ev.Switched(1))
    drive(m, ev.Healthy(1))
    assert m.state is State.SUCCESS


def test_staging_the_updater_resumes_and_is_broken_by_the_crash_loop_breaker() -> None:
    m = at_health_check_with_updater()
    drive(m, ev.Healthy(1))
    d = drive(m, ev.Resume(NO_FACTS))
    assert d.effects == (fx.StageUpdater(1, UPDATER, "update.zip", "1.2.3"),)
    drive(m, ev.Resume(NO_FACTS), ev.Resume(NO_FACTS))
    assert m.state is State.FAILED and m.record.job is not None
    assert m.record.job.error_code is ErrorCode.RESUME_LIMIT


def test_nothing_else_runs_while_the_updater_switches() -> None:
    m = at_switching()
    for event in (ev.Cancel(), ev.Reset(), ev.UpdateRequested("1.2.3")):
        decision = m.handle(event, 0.0)
        assert not decision.accepted and decision.reply.code == 409, event
