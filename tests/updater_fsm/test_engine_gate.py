"""The busy gate (issue 12) around the machine: restarts and failed journal writes.

A journal write that fails rejects the event and rebuilds the machine from the record
before it; the rebuilt machine must still know the configured printer gate, or the next
``POST /update`` would start the install at once, in the middle of a print.
"""

from __future__ import annotations

from collections.abc import Sequence

from tests.updater_fsm import helpers
from updater_fsm.core import effects as fx
from updater_fsm.core import events as ev
from updater_fsm.core.machine import UpdaterMachine
from updater_fsm.core.printer import PrinterGate, PrinterStatus
from updater_fsm.core.record import Record
from updater_fsm.core.table import State
from updater_fsm.engine import Engine


class FlakyJournal:
    """Saves in memory; the next ``fail`` saves raise ENOSPC."""

    def __init__(self) -> None:
        self.fail = 0
        self.saved: list[Record] = []

    def save(self, record: Record) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError(28, "No space left on device")
        self.saved.append(record)


class Recorder:
    def __init__(self) -> None:
        self.effects: list[fx.Effect] = []

    def execute(self, effects: Sequence[fx.Effect]) -> None:
        self.effects.extend(effects)

    async def aclose(self) -> None:
        pass


async def _busy() -> PrinterStatus:
    return PrinterStatus(False, "printing benchy.gcode, 43 %")


async def test_a_failed_journal_write_keeps_installs_waiting_for_the_printer() -> None:
    machine = helpers.at_ready()
    journal = FlakyJournal()
    engine = Engine(
        machine.record,
        journal,  # type: ignore[arg-type]
        clock=lambda: helpers.T0,
        gate=PrinterGate.WAIT,
        ask_printer=_busy,
    )
    runner = Recorder()
    engine.attach(runner)
    await engine.start(ev.DiskFacts(package_present=True))
    try:
        journal.fail = 1
        refused = await engine.submit(ev.UpdateRequested("1.2.3"))
        assert not refused.accepted and refused.reply.code == 500
        assert engine.record.state is State.READY
        # The disk has room again: the install still waits for the printer.
        decision = await engine.submit(ev.UpdateRequested("1.2.3"))
        assert decision.accepted, decision.reply
        assert engine.record.state is State.WAITING_IDLE
        assert not any(isinstance(e, fx.StageSnapshot) for e in runner.effects), runner.effects
    finally:
        await engine.stop()


def test_restarts_while_waiting_are_not_a_crash_loop_once_the_probe_answered() -> None:
    """The breaker counts restarts that find ``waiting_idle`` unfinished; the probe's first
    answer after each restart is progress, so a long print outlasts any number of restarts
    (before: the 3rd restart failed the install with RESUME_LIMIT and deleted the package)."""
    machine = UpdaterMachine(helpers.at_ready().record, gate=PrinterGate.WAIT)
    helpers.drive(machine, ev.UpdateRequested("1.2.3"))
    assert machine.state is State.WAITING_IDLE
    facts = ev.DiskFacts(package_present=True)
    for _ in range(5):
        machine = UpdaterMachine(machine.record, gate=PrinterGate.WAIT)  # a restart
        helpers.drive(machine, ev.Resume(facts))
        assert machine.state is State.WAITING_IDLE and machine.record.interruptions == 1
        helpers.drive(machine, ev.PrinterAnswered(1, PrinterStatus(False, "printing")))
        assert machine.record.interruptions == 0
    # Without an answer in between (a probe that kills the updater) the breaker still trips.
    for _ in range(3):
        machine = UpdaterMachine(machine.record, gate=PrinterGate.WAIT)
        helpers.drive(machine, ev.Resume(facts))
    assert machine.state is State.FAILED
    assert str(machine.record.job.error).startswith("RESUME_LIMIT")  # type: ignore[union-attr]
