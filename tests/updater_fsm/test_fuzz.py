"""Property-based fuzzing of the machine with restarts and corrupt journals.

Random event sequences (valid, invalid and stale) are fed to the machine while every
accepted record is journaled. At random points the updater "restarts": the machine is
rebuilt from the journal and resumed with random disk facts; sometimes the journal is
corrupted first. The invariants below must hold after every step.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from updater_fsm.core import events as ev
from updater_fsm.core.errors import ErrorCode, Failure
from updater_fsm.core.machine import UpdaterMachine
from updater_fsm.core.printer import PrinterGate, PrinterStatus
from updater_fsm.core.record import PACKAGE_TTL_S, Record
from updater_fsm.core.table import BUSY_STATES, State
from updater_fsm.journal import Journal, decode

from .helpers import MD5, SHA, T0, UNITS, request

VERSIONS = ("1.0.0", "1.2.3", "2.0.0")
REQUESTS = [request(v, name=f"p{v}.zip") for v in VERSIONS] + [request("1.2.3", name="alt.zip")]
LINKS = st.builds(
    ev.LinkVersions,
    st.sampled_from([None, *VERSIONS]),
    st.sampled_from([None, *VERSIONS]),
    st.sampled_from([None, "0.9.0"]),
)
ERRORS = st.builds(Failure, st.sampled_from(list(ErrorCode)), st.sampled_from(["x", "a: dead"]))
FACTS = st.builds(
    ev.DiskFacts,
    st.one_of(st.none(), st.integers(0, 2000)),
    st.booleans(),
    LINKS,
)


#: A download for device-api (None) or for a fleet server's action.
FLEET_ACTIONS = st.sampled_from([None, "7", "8"])
#: A package without (None) or with a new updater in it.
UPDATER_VERSIONS = st.sampled_from([None, "0.2.0"])
#: What the engine may attach to a command that would stop services (None: nobody asked).
PRINTER = st.sampled_from([None, PrinterStatus(True, "standby"), PrinterStatus(False, "printing")])


def events(job_id: int) -> st.SearchStrategy[ev.Event]:
    jid = st.sampled_from([job_id, job_id, job_id, job_id - 1, job_id + 1])
    return st.one_of(
        st.builds(ev.DownloadRequested, st.sampled_from(REQUESTS), FLEET_ACTIONS),
        st.builds(
            ev.DownloadCheckpoint,
            jid,
            st.builds(ev.ResumePoint, st.integers(0, 1000), st.sampled_from([None, '"e"'])),
        ),
        st.builds(ev.DownloadDone, jid, st.just(1000), st.just(MD5), st.just(SHA)),
        st.builds(ev.DownloadFailed, jid, ERRORS),
        st.builds(ev.Verified, jid),
        st.builds(ev.VerifyFailed, jid, ERRORS),
        st.builds(ev.UpdateRequested, st.sampled_from(VERSIONS), PRINTER),
        st.builds(ev.PrinterFree, jid),
        st.builds(
            ev.PrinterAnswered, jid, st.builds(PrinterStatus, st.just(False), st.just("printing"))
        ),
        st.builds(ev.WaitExpired, jid),
        st.builds(ev.WaitFailed, jid, ERRORS),
        st.builds(ev.Staged, jid, st.just(UNITS), LINKS, PRINTER, UPDATER_VERSIONS),
        st.builds(ev.StageFailed, jid, ERRORS),
        st.builds(ev.PostCmdDone, jid, st.integers(1, 3)),
        st.builds(ev.Switched, jid),
        st.builds(ev.SwitchFailed, jid, ERRORS),
        st.builds(ev.Healthy, jid),
        st.builds(ev.Unhealthy, jid, ERRORS),
        st.builds(
            ev.RollbackRequested,
            st.sampled_from(["previous", "factory"]),
            LINKS,
            st.just(()),
            PRINTER,
        ),
        st.builds(ev.UpdaterStaged, jid),
        st.builds(ev.UpdaterStageFailed, jid, ERRORS),
        st.builds(ev.UpdaterStarted, jid),
        st.builds(ev.UpdaterConfirmed, jid),
        st.builds(ev.UpdaterRolledBack, jid, ERRORS),
        st.builds(ev.RollbackOk, jid),
        st.builds(ev.RollbackFailed, jid, ERRORS),
        st.just(ev.Cancel()),
        st.just(ev.Reset()),
    )


#: The machine's default crash-loop breaker limit (config ``resume_limit``).
RESUME_LIMIT = 3
#: The updater's own switch and probation: the new updater restarts through them on
#: purpose, so no crash-loop breaker counts them; the guard outside the code judges them.
GUARDED_STATES = frozenset({State.UPDATER_SWITCHING, State.UPDATER_PROBATION})
#: States in which a step runs that a crash can interrupt (and the breaker counts).
STEP_STATES = BUSY_STATES - GUARDED_STATES


def expected_after_resume(record: Record, facts: ev.DiskFacts, now: float) -> State:
    """The recovery rules of contract §6 and the crash-loop breaker, stated independently
    of the table."""
    state = record.state
    if state in STEP_STATES and record.interruptions + 1 >= RESUME_LIMIT:
        job = record.job
        assert job is not None
        if state in (State.SWITCHING, State.HEALTH_CHECK):
            can = job.from_version or job.factory_version
            return State.ROLLBACK_PREVIOUS if can else State.FAILED
        if state is State.ROLLBACK_PREVIOUS and job.factory_version:
            return State.ROLLBACK_FACTORY
        return State.FAILED
    if state is State.VERIFYING and not facts.package_present:
        return State.DOWNLOADING
    if state in (State.READY, State.WAITING_IDLE):
        assert record.job is not None
        if not facts.package_present or record.job.is_expired(now):
            return State.IDLE
    return state


def _scratch_dir() -> Path:
    # tmpfs makes the thousands of fsyncs cheap; the journal code path is unchanged.
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="tope-fuzz-", dir=shm if shm.is_dir() else None))


class UpdaterFuzz(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = _scratch_dir()
        self.journal = Journal(self.dir)
        self.gate = PrinterGate.NONE
        self.machine = UpdaterMachine()
        self.journal.save(self.machine.record)
        self.now = T0

    @initialize(gate=st.sampled_from(list(PrinterGate)))
    def configure_the_busy_gate(self, gate: PrinterGate) -> None:
        self.gate = gate
        self.machine = UpdaterMachine(self.machine.record, gate=gate)

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _job_id(self) -> int:
        return self.machine.record.last_job_id

    @rule(data=st.data())
    def send_event(self, data: st.DataObject) -> None:
        self._send(data.draw(events(max(self._job_id(), 1))))

    @rule(data=st.data())
    def the_running_step_succeeds(self, data: st.DataObject) -> None:
        """The result a healthy device sends for the step in progress: random events alone
        seldom get a job past its health check, where the updater's own switch begins."""
        record = self.machine.record
        job_id = record.job.job_id if record.job else 1
        version = record.job.version if record.job and record.job.version else "1.2.3"
        free = PrinterStatus(True, "standby")
        steps: dict[State, ev.Event] = {
            State.DOWNLOADING: ev.DownloadDone(job_id, 1000, MD5, SHA),
            State.VERIFYING: ev.Verified(job_id),
            State.READY: ev.UpdateRequested(version, free),
            State.WAITING_IDLE: ev.PrinterFree(job_id),
            State.DEPLOYING: ev.Staged(
                job_id,
                UNITS,
                ev.LinkVersions("1.0.0", None, "1.0.0"),
                free,
                data.draw(UPDATER_VERSIONS),
            ),
            State.SWITCHING: ev.Switched(job_id),
            State.HEALTH_CHECK: ev.Healthy(job_id),
            State.UPDATER_STAGING: ev.UpdaterStaged(job_id),
            State.UPDATER_SWITCHING: ev.UpdaterStarted(job_id),
            State.UPDATER_PROBATION: ev.UpdaterConfirmed(job_id),
        }
        default = ev.DownloadRequested(
            data.draw(st.sampled_from(REQUESTS)), data.draw(FLEET_ACTIONS)
        )
        self._send(steps.get(record.state, default))

    def _send(self, event: ev.Event) -> None:
        before = self.machine.record
        decision = self.machine.handle(event, self.now)
        if not decision.accepted:
            assert self.machine.record == before == decision.record
            assert decision.effects == ()
            assert decision.reply.code in (404, 409, 410)
            return
        self.journal.save(decision.record)
        entered = decision.record.state if decision.state_changed else None
        if entered is State.SUCCESS:
            # A package with a new updater succeeds only once that updater confirmed itself.
            updater = decision.record.job.updater_version if decision.record.job else None
            if updater is None:
                assert decision.before is State.HEALTH_CHECK
            else:
                assert decision.before is State.UPDATER_PROBATION
                assert isinstance(event, ev.UpdaterConfirmed)
        if entered is State.UPDATER_STAGING:
            # The updater switches itself only after the device is healthy on its new version.
            assert decision.before is State.HEALTH_CHECK and isinstance(event, ev.Healthy)
            job = decision.record.job
            assert job is not None and job.updater_version is not None
        if entered is State.UPDATER_SWITCHING:
            assert decision.before is State.UPDATER_STAGING
        if entered is State.ROLLBACK_FACTORY:
            manual = isinstance(event, ev.RollbackRequested) and event.target == "factory"
            escalated = decision.before is State.ROLLBACK_PREVIOUS and isinstance(
                event, ev.RollbackFailed
            )
            assert manual or escalated
        if entered is State.ROLLBACK_PREVIOUS:
            assert decision.before in (State.SWITCHING, State.HEALTH_CHECK) or isinstance(
                event, ev.RollbackRequested
            )
        if entered is State.WAITING_IDLE:
            # Only a configured gate with `busy_policy = wait` ever makes an install wait.
            assert self.gate is PrinterGate.WAIT
            assert isinstance(event, ev.UpdateRequested | ev.Staged)
        if entered is State.SWITCHING:
            # Services are stopped only when the probe, asked after staging, said free.
            assert isinstance(event, ev.Staged)
            assert event.printer is None or event.printer.free
        if entered is State.DEPLOYING:
            # Nothing is staged (then stopped) while the printer is known to be busy.
            printer = getattr(event, "printer", None)
            assert printer is None or printer.free
            assert self.gate is not PrinterGate.WAIT or isinstance(event, ev.PrinterFree)
        if decision.reply.code == 410:
            # The package outlived its trust window: the job ends idle, PACKAGE_EXPIRED. Of
            # the commands only an install is answered so; a result that expires it while
            # waiting for the printer (WaitExpired, PrinterFree) has no caller to answer.
            job = decision.record.job
            assert decision.record.state is State.IDLE
            assert job is not None and job.error_code is ErrorCode.PACKAGE_EXPIRED
            assert hasattr(event, "job_id") or isinstance(event, ev.UpdateRequested)

    @rule(seconds=st.sampled_from([1.0, 3600.0, PACKAGE_TTL_S + 1, -7200.0]))
    def clock_moves(self, seconds: float) -> None:
        self.now += seconds

    @rule(facts=FACTS)
    def restart(self, facts: ev.DiskFacts) -> None:
        loaded = self.journal.load()
        assert loaded.record == self.machine.record and loaded.set_aside == ()
        self._resume(loaded.record, facts)

    @precondition(lambda self: self.machine.record.seq > 0)
    @rule(garbage=st.binary(max_size=64), facts=FACTS)
    def corrupt_journal_then_restart(self, garbage: bytes, facts: ev.DiskFacts) -> None:
        self.journal.path.write_bytes(garbage)
        loaded = self.journal.load()
        assert len(loaded.set_aside) == 1  # the bad file is kept for a human, not deleted
        if loaded.record is not None:
            assert loaded.record.seq < self.machine.record.seq
        self._resume(loaded.record, facts)

    def _resume(self, record: Record | None, facts: ev.DiskFacts) -> None:
        # With nothing valid left the engine rebuilds an idle record from the disk.
        record = record or Record(last_job_id=self._job_id())
        machine = UpdaterMachine(record, gate=self.gate)
        assert machine.state is record.state  # restoring runs no on_enter
        decision = machine.handle(ev.Resume(facts), self.now)
        assert decision.accepted
        assert machine.state is expected_after_resume(record, facts, self.now)
        self.machine = machine
        self.journal.save(machine.record)

    @invariant()
    def state_is_known_and_consistent(self) -> None:
        assert self.machine.state in set(State)
        assert self.machine.record.state is self.machine.state

    @invariant()
    def journal_equals_memory(self) -> None:
        assert decode(self.journal.path.read_bytes()) == self.machine.record

    @invariant()
    def no_step_is_resumed_past_the_limit(self) -> None:
        record = self.machine.record
        if record.state in STEP_STATES:
            assert record.interruptions < RESUME_LIMIT

    @invariant()
    def a_fleet_job_carries_its_action(self) -> None:
        job = self.machine.record.job
        if job is not None and job.fleet_action is not None:
            assert job.fleet_action in ("7", "8") and job.request is not None

    @invariant()
    def busy_states_have_a_job(self) -> None:
        if self.machine.state is not State.IDLE:
            assert self.machine.record.job is not None


TestUpdaterFuzz = UpdaterFuzz.TestCase
# ≥ 500 sequences in CI (profile "ci"), each up to 25 steps.
TestUpdaterFuzz.settings = settings(settings.default, stateful_step_count=25)
