"""The busy gate in the pure machine: an install waits for the printer, never interrupts it."""

from __future__ import annotations

from updater_fsm.core import effects as fx
from updater_fsm.core import events as ev
from updater_fsm.core.errors import ErrorCode, Failure
from updater_fsm.core.machine import UpdaterMachine
from updater_fsm.core.printer import PrinterGate, PrinterStatus
from updater_fsm.core.record import PACKAGE_TTL_S
from updater_fsm.core.states import STAGE_OF, Stage, State

from .helpers import LINKS, MD5, SHA, T0, drive, request

BUSY = PrinterStatus(False, "printing benchy.gcode, 43 %")
FREE = PrinterStatus(True, "standby")


def at_ready(gate: PrinterGate) -> UpdaterMachine:
    m = UpdaterMachine(gate=gate)
    req = request()
    drive(m, ev.DownloadRequested(req), ev.DownloadDone(1, 1000, MD5, SHA), ev.Verified(1))
    return m


def test_without_a_probe_an_install_starts_at_once() -> None:
    m = at_ready(PrinterGate.NONE)
    d = drive(m, ev.UpdateRequested("1.2.3"))
    assert m.state is State.DEPLOYING
    assert isinstance(d.effects[0], fx.StageSnapshot)


def test_wait_policy_enters_waiting_idle_and_stops_nothing() -> None:
    m = at_ready(PrinterGate.WAIT)
    d = drive(m, ev.UpdateRequested("1.2.3"))
    assert d.reply.code == 200
    assert m.state is State.WAITING_IDLE and STAGE_OF[m.state] is Stage.TO_INSTALL
    assert d.effects[0] == fx.WaitForPrinter(1, T0 + PACKAGE_TTL_S)
    assert not any(
        isinstance(e, fx.StageSnapshot | fx.SwitchVersion | fx.RollBack) for e in d.effects
    )
    # asked again while waiting: 200, nothing new
    again = drive(m, ev.UpdateRequested("1.2.3"))
    assert again.effects == () and m.state is State.WAITING_IDLE


def test_the_moment_the_printer_is_free_the_install_proceeds() -> None:
    m = at_ready(PrinterGate.WAIT)
    drive(m, ev.UpdateRequested("1.2.3"))
    d = drive(m, ev.PrinterFree(1))
    assert m.state is State.DEPLOYING
    assert d.effects[0] == fx.StageSnapshot(1, "1.2.3", "update.zip")


def test_a_result_of_another_job_is_ignored() -> None:
    m = at_ready(PrinterGate.WAIT)
    drive(m, ev.UpdateRequested("1.2.3"))
    assert not m.handle(ev.PrinterFree(7), T0).accepted
    assert m.state is State.WAITING_IDLE


def test_cancel_while_waiting_keeps_the_package() -> None:
    m = at_ready(PrinterGate.WAIT)
    drive(m, ev.UpdateRequested("1.2.3"))
    d = drive(m, ev.Cancel())
    assert m.state is State.READY
    assert d.effects == (fx.StopJob(1), fx.Report(terminal=False))
    assert not any(isinstance(e, fx.DiscardPackage) for e in d.effects)
    # and it can be installed later
    drive(m, ev.UpdateRequested("1.2.3"))
    assert m.state is State.WAITING_IDLE


def test_expiry_while_waiting_ends_as_any_expiry() -> None:
    m = at_ready(PrinterGate.WAIT)
    drive(m, ev.UpdateRequested("1.2.3"))
    d = drive(m, ev.WaitExpired(1), now=T0 + PACKAGE_TTL_S + 1)
    assert m.state is State.IDLE
    assert m.record.job is not None and m.record.job.error is not None
    assert m.record.job.error.startswith("PACKAGE_EXPIRED")
    assert fx.DiscardPackage("update.zip") in d.effects


def test_free_after_the_window_closed_is_an_expiry_not_an_install() -> None:
    m = at_ready(PrinterGate.WAIT)
    drive(m, ev.UpdateRequested("1.2.3"))
    drive(m, ev.PrinterFree(1), now=T0 + PACKAGE_TTL_S + 1)
    assert m.state is State.IDLE


def test_refuse_policy_answers_printer_busy_and_changes_nothing() -> None:
    m = at_ready(PrinterGate.REFUSE)
    before = m.record
    d = m.handle(ev.UpdateRequested("1.2.3", printer=BUSY), T0)
    assert not d.accepted and m.record == before
    assert (d.reply.code, d.reply.msg) == (409, "PRINTER_BUSY: printing benchy.gcode, 43 %")
    d = drive(m, ev.UpdateRequested("1.2.3", printer=FREE))
    assert m.state is State.DEPLOYING


def test_a_busy_refusal_of_an_expired_package_is_still_410() -> None:
    m = at_ready(PrinterGate.REFUSE)
    d = m.handle(ev.UpdateRequested("1.2.3", printer=BUSY), T0 + PACKAGE_TTL_S + 1)
    assert d.reply.code == 410 and m.state is State.IDLE


def test_manual_rollback_while_busy_is_refused() -> None:
    for gate in (PrinterGate.WAIT, PrinterGate.REFUSE):
        m = UpdaterMachine(gate=gate)
        d = m.handle(ev.RollbackRequested("previous", LINKS, printer=BUSY), T0)
        assert (d.reply.code, d.reply.msg) == (409, "PRINTER_BUSY: printing benchy.gcode, 43 %")
        assert m.state is State.IDLE
        drive(m, ev.RollbackRequested("previous", LINKS, printer=FREE))
        assert m.state is State.ROLLBACK_PREVIOUS


def test_a_restart_while_waiting_keeps_waiting_and_asks_again() -> None:
    m = at_ready(PrinterGate.WAIT)
    drive(m, ev.UpdateRequested("1.2.3"))
    restored = UpdaterMachine(m.record, gate=PrinterGate.WAIT)
    d = restored.handle(ev.Resume(ev.DiskFacts(package_present=True, links=LINKS)), T0 + 60)
    assert restored.state is State.WAITING_IDLE
    assert d.effects == (fx.WaitForPrinter(1, T0 + PACKAGE_TTL_S),)


def test_a_restart_while_waiting_with_the_package_gone_expires() -> None:
    m = at_ready(PrinterGate.WAIT)
    drive(m, ev.UpdateRequested("1.2.3"))
    restored = UpdaterMachine(m.record, gate=PrinterGate.WAIT)
    restored.handle(ev.Resume(ev.DiskFacts(package_present=False, links=LINKS)), T0)
    assert restored.state is State.IDLE


def test_a_different_download_while_waiting_is_refused_until_cancelled() -> None:
    m = at_ready(PrinterGate.WAIT)
    drive(m, ev.UpdateRequested("1.2.3"))
    d = m.handle(ev.DownloadRequested(request("2.0.0", name="other.zip")), T0)
    assert d.reply.code == 409 and d.reply.msg.startswith("OPERATION_IN_PROGRESS")
    same = drive(m, ev.DownloadRequested(request()))
    assert same.effects == () and m.state is State.WAITING_IDLE


def test_the_display_is_asked_for_when_an_install_or_a_rollback_begins() -> None:
    """ShowScreen at the start of a wait, an install and a rollback; never on a restart."""
    for gate in (PrinterGate.NONE, PrinterGate.WAIT):
        m = at_ready(gate)
        d = drive(m, ev.UpdateRequested("1.2.3"))
        assert fx.ShowScreen() in d.effects
        restored = UpdaterMachine(m.record, gate=gate)
        d = restored.handle(ev.Resume(ev.DiskFacts(package_present=True, links=LINKS)), T0)
        assert fx.ShowScreen() not in d.effects
    m = UpdaterMachine()
    d = drive(m, ev.RollbackRequested("previous", LINKS))
    assert fx.ShowScreen() in d.effects


def _staged(gate: PrinterGate) -> UpdaterMachine:
    m = at_ready(gate)
    drive(m, ev.UpdateRequested("1.2.3", printer=FREE if gate is PrinterGate.REFUSE else None))
    if gate is PrinterGate.WAIT:
        drive(m, ev.PrinterFree(1))
    assert m.state is State.DEPLOYING
    return m


def test_busy_again_after_staging_waits_again_and_stops_nothing() -> None:
    """A print started while the snapshot was built: the switch would stop it."""
    m = _staged(PrinterGate.WAIT)
    d = drive(m, ev.Staged(1, (), LINKS, printer=BUSY))
    assert m.state is State.WAITING_IDLE
    assert fx.DiscardStaging("1.2.3") in d.effects
    assert fx.WaitForPrinter(1, T0 + PACKAGE_TTL_S) in d.effects
    assert not any(isinstance(e, fx.SwitchVersion) for e in d.effects)
    assert m.record.job is not None and m.record.job.printer_reason == BUSY.reason
    # free again: staged again, then switched
    drive(m, ev.PrinterFree(1), ev.Staged(1, (), LINKS, printer=FREE))
    assert m.state is State.SWITCHING


def test_busy_again_after_staging_under_refuse_fails_and_keeps_the_package() -> None:
    m = _staged(PrinterGate.REFUSE)
    d = drive(m, ev.Staged(1, (), LINKS, printer=BUSY))
    assert m.state is State.FAILED
    job = m.record.job
    assert job is not None and job.error == "PRINTER_BUSY: printing benchy.gcode, 43 %"
    assert job.package_kept and fx.DiscardStaging("1.2.3") in d.effects
    assert not any(isinstance(e, fx.SwitchVersion | fx.DiscardPackage) for e in d.effects)
    drive(m, ev.UpdateRequested("1.2.3", printer=FREE))
    assert m.state is State.DEPLOYING


def test_a_broken_busy_gate_fails_the_wait_and_keeps_the_package() -> None:
    """The wait's executor raised: fail before anything is stopped; a retry waits again."""
    m = at_ready(PrinterGate.WAIT)
    drive(m, ev.UpdateRequested("1.2.3"))
    assert not m.handle(ev.WaitFailed(7, Failure(ErrorCode.PRINTER_BUSY, "x")), T0).accepted
    d = drive(m, ev.WaitFailed(1, Failure(ErrorCode.DOWNLOAD_FAILED, "probe exploded")))
    assert m.state is State.FAILED
    job = m.record.job
    assert job is not None and job.error_code is ErrorCode.PRINTER_BUSY
    assert job.error == "PRINTER_BUSY: the busy gate failed: probe exploded"
    assert job.package_kept
    # Nothing stopped, nothing deleted; the job's end kept in the history.
    assert d.effects[0] == fx.Report(terminal=True)
    assert [type(e) for e in d.effects] == [fx.Report, fx.RecordHistory]
    drive(m, ev.UpdateRequested("1.2.3"))
    assert m.state is State.WAITING_IDLE
