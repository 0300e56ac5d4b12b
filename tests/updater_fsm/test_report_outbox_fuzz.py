"""Property-based tests of the device-api report outbox (``core/report_outbox.py``).

A hypothesis state machine plays the updater and device-api around one
:class:`ReportOutbox`: it offers snapshots (a plausible updater walking download → verify →
install → success/failed, cancels and new jobs included, plus arbitrary snapshots), kicks
(ordinary and terminal), moves time forward, hands reports out and has device-api accept or
refuse them at random or stay down for several attempts — offers and kicks also arrive
while a report is in flight. ``hypothesis.event`` counts the interesting paths (promotions,
refused reports kept or dropped, the backoff cap; ``--hypothesis-show-statistics``). A
model kept beside the outbox checks, after every step:

- **Never backwards**: every queued report has a ``seq``, one more than the report queued
  before it. Delivered ``seq`` numbers strictly increase, so a report is never delivered
  after one queued later; the waiting reports are in ``seq`` order, all newer than the last
  delivery.
- **Terminal reports are never dropped**: every must-deliver report is delivered or still
  pending; none is ever counted as coalesced; an ordinary report is delivered only when no
  must-deliver report queued before it is still waiting (they go first, in order).
- **One slot**: at most one ordinary report waits (the one in flight aside).
- **Nothing is retried once superseded**: an ordinary report is handed out only while it is
  the newest report queued.
- **Accounting**: every queued report is delivered, pending or dropped, and the dropped ones
  are exactly ``coalesced``; ``sent``/``failed_attempts``/``last_error``/``pending`` agree.
- **Backoff**: after the k-th failure in a row nothing is handed out for
  ``min(min_backoff · 2^(k-1), max_backoff)``; after a delivery it is ``min_backoff`` again;
  ``delay_until_next`` says exactly when the next report is available.
- **Eventually delivered**: once device-api accepts everything (the ``drain`` rule, and at
  the end of every run), every must-deliver report and the newest report are delivered.
"""

from __future__ import annotations

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from updater_fsm.core.progress import Snapshot
from updater_fsm.core.report_outbox import (
    TERMINAL_STAGES,
    OutgoingReport,
    ReportBody,
    ReportOutbox,
    worth_reporting,
)
from updater_fsm.core.table import State

from .helpers import snap

VERSIONS = ("1.2.3", "2.0.0", "2.0.1")
ERRORS = (
    "DOWNLOAD_FAILED: connection refused",
    "MD5_MISMATCH: expected 0, got 1",
    "CANCELLED: by request",
    "ROLLBACK_LEVEL_1_SUCCESS: v1.0.0 (cause: HEALTH_CHECK_FAILED: x)",
)
#: Where a plausible updater can go from each state (a new job starts in DOWNLOADING).
NEXT: dict[State, tuple[State, ...]] = {
    State.IDLE: (State.DOWNLOADING,),
    State.DOWNLOADING: (State.DOWNLOADING, State.VERIFYING, State.FAILED, State.IDLE),
    State.VERIFYING: (State.READY, State.FAILED),
    State.READY: (State.DEPLOYING, State.WAITING_IDLE, State.DOWNLOADING, State.IDLE),
    State.WAITING_IDLE: (State.DEPLOYING, State.READY, State.IDLE),
    State.DEPLOYING: (State.SWITCHING, State.FAILED, State.IDLE),
    State.SWITCHING: (State.HEALTH_CHECK, State.ROLLBACK_PREVIOUS),
    State.HEALTH_CHECK: (State.SUCCESS, State.ROLLBACK_PREVIOUS, State.UPDATER_STAGING),
    State.UPDATER_STAGING: (State.UPDATER_SWITCHING, State.FAILED),
    State.UPDATER_SWITCHING: (State.UPDATER_PROBATION, State.FAILED),
    State.UPDATER_PROBATION: (State.SUCCESS, State.FAILED),
    State.ROLLBACK_PREVIOUS: (State.FAILED, State.ROLLBACK_FACTORY),
    State.ROLLBACK_FACTORY: (State.FAILED,),
    State.SUCCESS: (State.IDLE, State.DOWNLOADING),
    State.FAILED: (State.IDLE, State.DOWNLOADING),
}
ANY_SNAPSHOT = st.builds(
    snap,
    st.sampled_from(list(State)),
    st.integers(0, 100),
    error=st.sampled_from([None, *ERRORS]),
    version=st.sampled_from([None, *VERSIONS]),
)


class ReportOutboxMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.outbox = ReportOutbox()
        self.now = 1000.0
        self.current = snap(State.IDLE, version=None)  # what the engine shows now
        self.cadence_ref: Snapshot | None = None  # the last snapshot the cadence passed
        self.queued: dict[int, OutgoingReport] = {}  # by seq, must_deliver kept up to date
        self.delivered: list[OutgoingReport] = []
        self.in_flight: OutgoingReport | None = None
        self.failures = 0
        self.failures_in_a_row = 0

    @initialize(
        min_backoff=st.sampled_from([0.02, 0.5, 1.0]),
        factor=st.sampled_from([1, 2, 8, 60]),
        start=st.sampled_from([None, snap(State.DOWNLOADING, 40), snap(State.SUCCESS)]),
    )
    def setup(self, min_backoff: float, factor: int, start: Snapshot | None) -> None:
        self.outbox = ReportOutbox(min_backoff_s=min_backoff, max_backoff_s=min_backoff * factor)
        if start is not None:  # the snapshot current when the reporter starts
            self.outbox.seen(start)
            self.current = self.cadence_ref = start

    # ---- the updater's side ---------------------------------------------------------------
    @rule(data=st.data())
    def updater_moves_on(self, data: st.DataObject) -> None:
        cur = self.current
        state = data.draw(st.sampled_from(NEXT[cur.state]), label="state")
        version = cur.version
        if state is State.DOWNLOADING and cur.state is not State.DOWNLOADING:
            version = data.draw(st.sampled_from(VERSIONS), label="version")  # a new job
        progress = 0
        if state is State.DOWNLOADING and cur.state is State.DOWNLOADING:
            progress = min(99, cur.progress + data.draw(st.integers(0, 30), label="step"))
        error = None
        if state is State.FAILED or (state is State.IDLE and cur.state is not State.SUCCESS):
            error = data.draw(st.sampled_from([None, *ERRORS]), label="error")
        self._offer(snap(state, progress, error=error, version=version))

    @rule(snapshot=ANY_SNAPSHOT)
    def anything_is_offered(self, snapshot: Snapshot) -> None:
        self._offer(snapshot)

    @rule(terminal=st.booleans())
    def kick(self, terminal: bool) -> None:
        report = self.outbox.kick(self.current, terminal=terminal)
        self._record(report, self.current.report(), must_deliver=terminal)

    def _offer(self, snapshot: Snapshot) -> None:
        self.current = snapshot
        worth = worth_reporting(self.cadence_ref, snapshot)
        if worth:
            self.cadence_ref = snapshot
        report = self.outbox.offer(snapshot)
        if not worth:
            assert report is None
            return
        self._record(report, snapshot.report(), must_deliver=snapshot.stage in TERMINAL_STAGES)

    def _record(self, report: OutgoingReport | None, body: ReportBody, must_deliver: bool) -> None:
        pending = self._pending_reports()
        if report is None:  # an identical report is already there
            if must_deliver:
                same = [r for r in pending if r.body == body and r.must_deliver]
                last = self.delivered[-1].body if self.delivered else None
                assert same or (not pending and body == last), "a terminal report was lost"
            return
        assert report.body == body and report.must_deliver == must_deliver
        newest = max(self.queued, default=0)
        if report.seq > newest:
            assert report.seq == newest + 1  # numbered in the order of queuing
        else:  # an ordinary report with the same body, promoted to must-deliver
            assert must_deliver and not self.queued[report.seq].must_deliver
            assert report.seq in {r.seq for r in pending}
            if self.in_flight is not None and self.in_flight.seq == report.seq:
                self.in_flight = report
                event("an ordinary report in flight promoted to must-deliver")
            else:
                event("the waiting ordinary report promoted to must-deliver")
        self.queued[report.seq] = report

    # ---- device-api's side and the clock ----------------------------------------------------
    @rule(dt=st.sampled_from([0.0, 0.01, 0.3, 1.0, 5.0, 100.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: self.in_flight is None)
    @rule()
    def sender_asks(self) -> None:
        waiting = self.outbox.waiting()
        retry_at = self.outbox.retry_at
        report = self.outbox.next_report(self.now)
        if report is None:
            assert not waiting or (retry_at is not None and self.now < retry_at)
            return
        assert waiting and report == waiting[0]
        assert retry_at is None or self.now >= retry_at
        if not report.must_deliver:
            assert report.seq == max(self.queued), "a superseded ordinary report is sent"
        self.in_flight = report

    @precondition(lambda self: self.in_flight is not None)
    @rule(accepted=st.booleans(), reason=st.sampled_from(["HTTP 503", "ClientOSError: x"]))
    def device_api_answers(self, accepted: bool, reason: str) -> None:
        report = self.in_flight
        assert report is not None
        self.in_flight = None
        if accepted:
            self._deliver(report)
            return
        backoff = self.outbox.backoff_s
        self.failures_in_a_row += 1
        assert backoff == min(
            self.outbox.min_backoff_s * 2 ** (self.failures_in_a_row - 1),
            self.outbox.max_backoff_s,
        )
        coalesced = self.outbox.coalesced
        self.outbox.failed(report, self.now, reason)
        self.failures += 1
        if self.outbox.coalesced > coalesced:
            event("a refused ordinary report dropped: something newer is queued")
        elif not report.must_deliver:
            event("a refused ordinary report kept: still the newest")
        if (
            backoff == self.outbox.max_backoff_s
            and self.outbox.max_backoff_s > self.outbox.min_backoff_s
        ):
            event("the backoff reached its cap")
        assert self.outbox.retry_at == self.now + backoff
        assert self.outbox.last_error == reason
        if self.outbox.pending:
            assert self.outbox.delay_until_next(self.now) == pytest.approx(backoff)
        assert self.outbox.backoff_s == min(backoff * 2, self.outbox.max_backoff_s)

    @rule(attempts=st.integers(1, 8))
    def device_api_stays_down(self, attempts: int) -> None:
        """Several refused attempts in a row, each as soon as the backoff allows."""
        for _ in range(attempts):
            if self.in_flight is None:
                delay = self.outbox.delay_until_next(self.now)
                if delay is None:
                    return
                self.now += delay
                self.sender_asks()
            self.device_api_answers(accepted=False, reason="ClientConnectorError: refused")

    def _deliver(self, report: OutgoingReport) -> None:
        self.outbox.delivered(report, self.now)
        if self.delivered:
            assert report.seq > self.delivered[-1].seq, "delivered backwards"
        if not report.must_deliver:
            older_terminal = [
                s
                for s, r in self.queued.items()
                if r.must_deliver and s < report.seq and s not in self._delivered_seqs()
            ]
            assert not older_terminal, "an ordinary report overtook a terminal one"
        self.delivered.append(report)
        self.failures_in_a_row = 0
        assert self.outbox.backoff_s == self.outbox.min_backoff_s
        assert self.outbox.retry_at is None and self.outbox.last_error is None

    @rule()
    def device_api_accepts_everything(self) -> None:
        self.drain()

    def drain(self) -> None:
        """device-api is back and accepts every report: everything must get through."""
        if self.in_flight is not None:
            report, self.in_flight = self.in_flight, None
            self._deliver(report)
        while (delay := self.outbox.delay_until_next(self.now)) is not None:
            self.now += delay
            report = self.outbox.next_report(self.now)
            assert report is not None
            self._deliver(report)
        assert self.outbox.pending == 0
        if any(r.must_deliver for r in self.queued.values()):
            event("a run with must-deliver reports, drained")
        delivered = self._delivered_seqs()
        assert all(s in delivered for s, r in self.queued.items() if r.must_deliver)
        if self.queued:
            assert max(self.queued) in delivered, "the newest report was not delivered"

    def teardown(self) -> None:
        self.drain()

    # ---- invariants -------------------------------------------------------------------------
    def _pending_reports(self) -> list[OutgoingReport]:
        flying = [] if self.in_flight is None else [self.in_flight]
        return [*flying, *self.outbox.waiting()]

    def _delivered_seqs(self) -> set[int]:
        return {r.seq for r in self.delivered}

    @invariant()
    def at_most_one_ordinary_report_waits(self) -> None:
        waiting = self.outbox.waiting()
        assert sum(not r.must_deliver for r in waiting) <= 1
        assert all(r.must_deliver for r in waiting[:-1])  # the slot goes last

    @invariant()
    def nothing_pending_is_older_than_a_delivery(self) -> None:
        seqs = [r.seq for r in self._pending_reports()]
        assert seqs == sorted(set(seqs))
        if self.delivered and seqs:
            assert seqs[0] > self.delivered[-1].seq

    @invariant()
    def terminal_reports_are_never_dropped(self) -> None:
        pending = {r.seq for r in self._pending_reports()}
        delivered = self._delivered_seqs()
        for seq, report in self.queued.items():
            if report.must_deliver:
                assert seq in pending or seq in delivered, f"terminal report {seq} dropped"

    @invariant()
    def the_books_balance(self) -> None:
        box = self.outbox
        pending = self._pending_reports()
        assert box.in_flight == self.in_flight
        assert box.pending == len(pending)
        for report in pending:
            assert self.queued[report.seq] == report
        delivered = self._delivered_seqs()
        dropped = set(self.queued) - delivered - {r.seq for r in pending}
        assert box.coalesced == len(dropped)
        assert (box.sent, box.failed_attempts) == (len(self.delivered), self.failures)

    @invariant()
    def delay_until_next_tells_when(self) -> None:
        delay = self.outbox.delay_until_next(self.now)
        retry_at = self.outbox.retry_at
        if self.in_flight is not None or not self.outbox.waiting():
            assert delay is None
        elif retry_at is None or self.now >= retry_at:
            assert delay == 0.0
        else:
            assert delay == retry_at - self.now
            assert delay <= self.outbox.max_backoff_s * (1 + 1e-9)


TestReportOutbox = ReportOutboxMachine.TestCase
# 500 runs in CI (profile "ci"), each up to 60 steps.
TestReportOutbox.settings = settings(settings.default, stateful_step_count=60)
