"""The pure decision core: ``UpdaterMachine.handle(event, now) -> Decision``.

Built from :data:`updater_fsm.core.table.TRANSITIONS` with a synchronous ``transitions.Machine``
(``queued=True``, ``auto_transitions=False``, ``send_event=True``). Guards and actions are
methods of :class:`~updater_fsm.core.decisions.Decisions` that read the event and the record
and append effects; no method here touches the clock, the disk or the network, so every
decision is reproducible from ``(record, event, now)``.
"""

from __future__ import annotations

import attrs
from transitions import Machine, MachineError

from updater_fsm.core import effects as fx
from updater_fsm.core import events as ev
from updater_fsm.core.decisions import Decisions, Reply
from updater_fsm.core.errors import ErrorCode, RequestError
from updater_fsm.core.printer import PrinterGate
from updater_fsm.core.record import Record
from updater_fsm.core.states import BUSY_STATES, INSTALL_STATES, State
from updater_fsm.core.table import TRANSITIONS

__all__ = ["Decision", "Reply", "UpdaterMachine", "rejection"]


@attrs.frozen
class Decision:
    """The outcome of one event.

    Attributes:
        accepted: a transition fired (the record changed and must be journaled).
        before: the state before the event.
        record: the record after the event (unchanged when rejected).
        effects: what to execute, in order, after the record is journaled.
        reply: the answer for the caller (200, or 404/409/410 with a message).
    """

    accepted: bool
    before: State
    record: Record
    effects: tuple[fx.Effect, ...]
    reply: Reply

    @property
    def state_changed(self) -> bool:
        return self.accepted and self.before != self.record.state


_BUSY_MSG = RequestError.OPERATION_IN_PROGRESS


class UpdaterMachine:
    """The updater's decision core.

    Args:
        record: the journaled record to resume from (None = a fresh device). Restoring sets
            the state directly and runs no ``on_enter`` callback; the engine sends
            :class:`~updater_fsm.core.events.Resume` to continue explicitly.
        resume_limit: the restart that finds the same step unfinished for the
            ``resume_limit``-th time in a row fails that step (the crash-loop breaker).
        gate: how installs and manual rollbacks treat a busy printer (from ``busy_probe``
            and ``busy_policy``).
    """

    def __init__(
        self,
        record: Record | None = None,
        *,
        resume_limit: int = 3,
        gate: PrinterGate = PrinterGate.NONE,
    ) -> None:
        if resume_limit < 1:
            raise ValueError("resume_limit must be at least 1")
        self.resume_limit = resume_limit
        self.gate = gate
        self._model = Decisions(record or Record(), resume_limit, gate)
        self._machine = Machine(
            model=self._model,
            states=[s.value for s in State],
            transitions=[t.as_transitions_kwargs() for t in TRANSITIONS],
            initial=self._model.record.state.value,
            auto_transitions=False,
            queued=True,
            send_event=True,
            before_state_change="on_accept",
            after_state_change="on_state_change",
        )

    @property
    def record(self) -> Record:
        return self._model.record

    @property
    def state(self) -> State:
        return State(self._model.state)

    def handle(self, event: ev.Event, now: float) -> Decision:
        """Decide what ``event`` does at time ``now`` (UNIX seconds).

        Never raises for an event the current state does not accept: the decision is then
        ``accepted=False`` with the record untouched and a rejection in ``reply``.
        """
        model = self._model
        before_record = model.record
        before = self.state
        model.now = now
        model.prior_interruptions = before_record.interruptions
        model.effects = []
        model.reply = Reply()
        model.fired = False
        try:
            model.trigger(event.trigger.value, event=event)
        except MachineError:
            model.fired = False
        if not model.fired:
            model.record = before_record
            return Decision(
                False, before, before_record, (), rejection(before, event, before_record)
            )
        model.record = attrs.evolve(model.record, state=self.state)
        return Decision(True, before, model.record, tuple(model.effects), model.reply)


def rejection(state: State, event: ev.Event, record: Record) -> Reply:
    """Why ``event`` is not accepted in ``state``: the 404/409 answer for the API."""
    job = record.job
    running = f"v{job.version}" if job and job.version else "a job"
    if isinstance(event, ev.DownloadRequested):
        return Reply(409, f"{_BUSY_MSG}: {state} {running} is in progress; cancel it first")
    busy = _printer_busy(event)
    if isinstance(event, ev.UpdateRequested):
        same = job is not None and job.version == event.version
        if busy and same and state in (State.READY, State.FAILED):
            return Reply(409, busy)
        if state in INSTALL_STATES:
            return Reply(409, f"{_BUSY_MSG}: installing {running}")
        if same and state in (State.DOWNLOADING, State.VERIFYING):
            return Reply(409, f"{_BUSY_MSG}: v{event.version} is still {state}")
        return Reply(404, f"{RequestError.PACKAGE_NOT_FOUND}: {event.version}")
    if isinstance(event, ev.RollbackRequested):
        if busy and state in (State.IDLE, State.SUCCESS, State.FAILED):
            return Reply(409, busy)
        if state in BUSY_STATES:
            return Reply(409, f"{_BUSY_MSG}: {state} {running} is in progress")
        if state == State.READY:
            return Reply(409, f"{_BUSY_MSG}: a verified package is waiting; cancel it first")
        return Reply(
            404, f"{RequestError.VERSION_NOT_FOUND}: no {event.target} version to roll back to"
        )
    if isinstance(event, ev.Cancel):
        if state in INSTALL_STATES:
            return Reply(409, f"{_BUSY_MSG}: cannot cancel while {state}; the switch must finish")
        return Reply(409, f"{RequestError.NOTHING_TO_CANCEL}: the updater is {state}")
    if isinstance(event, ev.Reset):
        return Reply(409, f"{_BUSY_MSG}: cannot reset while {state}")
    return Reply(409, f"{RequestError.IGNORED}: {event.trigger} is not valid in state {state}")


def _printer_busy(event: ev.Event) -> str:
    """``PRINTER_BUSY: <reason>`` when ``event`` carries a busy probe answer, else ``""``."""
    printer = getattr(event, "printer", None)
    if printer is None or printer.free:
        return ""
    return f"{ErrorCode.PRINTER_BUSY}: {printer.reason or 'the busy probe says so'}"
