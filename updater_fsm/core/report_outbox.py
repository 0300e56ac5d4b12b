"""The device-api report outbox: what to report, in which order, and when (contract §2).

Pure: no clock, no I/O, no tasks. The sender (``http_shell/daemon/reporter.py``) passes the
time in (``now``: seconds on any monotonic clock), asks :meth:`ReportOutbox.next_report` what
to POST, and tells the outbox how it went (:meth:`~ReportOutbox.delivered`,
:meth:`~ReportOutbox.failed`); every decision is made here and returned as a value.

The policy:

- **Cadence** (:func:`worth_reporting`): a snapshot is worth a report on a stage, state or
  job (version) change, on a new or changed error, and each time a download reaches a new
  multiple of :data:`PROGRESS_STEP` %. A report identical to one queued, in flight or (with
  nothing pending) last delivered is not queued twice.
- **Ordinary reports** share one slot that always holds the newest; the older one is
  obsolete and dropped (counted in :attr:`~ReportOutbox.coalesced`).
- **Must-deliver reports** — ``success``/``failed`` snapshots and
  :meth:`~ReportOutbox.kick` with ``terminal=True`` — wait in a FIFO that is always sent
  before the slot, and are never dropped: a refused one goes back to the head of the FIFO.
- **Never backwards.** Each queued report gets a sequence number, :attr:`OutgoingReport.seq`,
  one more than the report queued before it (a report's number never changes, also not when
  it is promoted to must-deliver or retried). *Backwards* means delivering a report with a
  lower ``seq`` than one delivered before it; the outbox never does. Hence a terminal report
  empties the slot (its older ordinary report could only go after it), and a refused
  ordinary report is retried only while it is still the newest report queued — once
  anything newer is queued it is dropped (a refused ``downloading`` must not follow
  ``failed``).
- **One at a time, with backoff.** While a report is in flight nothing else is handed out.
  After a failed attempt nothing is handed out for the backoff delay, which starts at
  ``min_backoff_s``, doubles after each failed attempt up to ``max_backoff_s``, and is back
  to ``min_backoff_s`` after a delivery. The retry sends whatever is first by then.
"""

from __future__ import annotations

import collections
from typing import Any

import attrs

from updater_fsm.core.outside_text import visible
from updater_fsm.core.progress import Snapshot
from updater_fsm.core.table import Stage

#: Download progress is reported each time it reaches a new multiple of this many percent.
PROGRESS_STEP = 5
#: Stages whose snapshots are must-deliver reports (the outcome of a job).
TERMINAL_STAGES = frozenset({Stage.SUCCESS, Stage.FAILED})

ReportBody = dict[str, Any]


@attrs.frozen
class _Key:
    """What a snapshot is compared on to decide whether it is worth a report."""

    stage: Stage
    state: str
    version: str | None
    error: str | None
    bucket: int


def _key(snap: Snapshot) -> _Key:
    bucket = snap.progress // PROGRESS_STEP if snap.stage is Stage.DOWNLOADING else 0
    return _Key(snap.stage, snap.state.value, snap.version, snap.error, bucket)


def worth_reporting(last: Snapshot | None, snap: Snapshot) -> bool:
    """The contract §2 cadence: does ``snap`` need a report, given the ``last`` reported one?

    True on a stage, state or job (version) change, on a new or changed error, and when a
    download's progress reaches a multiple of 5 % it had not reached before.
    """
    if last is None:
        return True
    old, new = _key(last), _key(snap)
    if (old.stage, old.state, old.version) != (new.stage, new.state, new.version):
        return True
    if new.error != old.error and new.error is not None:
        return True
    return new.bucket > old.bucket


@attrs.frozen
class OutgoingReport:
    """One report waiting for, or on its way to, device-api.

    Attributes:
        seq: its place in the order reports were queued (1, 2, 3, …); reports are delivered
            in increasing ``seq`` order.
        body: the JSON body of the POST (:meth:`Snapshot.report`).
        must_deliver: never dropped (a terminal outcome or ``kick(terminal=True)``).
    """

    seq: int
    body: ReportBody
    must_deliver: bool


class ReportOutbox:
    """The delivery policy of device-api reports, as a pure queue (see the module doc).

    Args:
        min_backoff_s: the delay after the first failed attempt (and after a delivery).
        max_backoff_s: the delay doubles after each failed attempt up to this.
    """

    def __init__(self, *, min_backoff_s: float = 0.5, max_backoff_s: float = 30.0) -> None:
        if not 0 < min_backoff_s <= max_backoff_s:
            raise ValueError("need 0 < min_backoff_s <= max_backoff_s")
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self._fifo: collections.deque[OutgoingReport] = collections.deque()  # must-deliver
        self._slot: OutgoingReport | None = None  # the newest ordinary report
        self._in_flight: OutgoingReport | None = None
        self._seq = 0
        self._last_offered: Snapshot | None = None  # the cadence's reference
        self._last_queued: ReportBody | None = None
        self._last_delivered: ReportBody | None = None
        self._backoff_s = min_backoff_s  # the delay the next failed attempt imposes
        self._retry_at: float | None = None
        self.sent = 0
        self.failed_attempts = 0
        self.coalesced = 0
        self.last_error: str | None = None

    # ---- inputs ----------------------------------------------------------------------------
    def seen(self, snapshot: Snapshot) -> None:
        """Take ``snapshot`` as already reported: the cadence compares the next offer to it."""
        self._last_offered = snapshot

    def offer(self, snapshot: Snapshot) -> OutgoingReport | None:
        """A new snapshot: queue a report for it if the cadence says so.

        ``success``/``failed`` snapshots are must-deliver. Returns the queued report, or None
        when the snapshot is not worth one (or an identical report is already there).
        """
        if not worth_reporting(self._last_offered, snapshot):
            return None
        self._last_offered = snapshot
        return self._queue(snapshot.report(), must_deliver=snapshot.stage in TERMINAL_STAGES)

    def kick(self, snapshot: Snapshot, *, terminal: bool) -> OutgoingReport | None:
        """Report ``snapshot`` regardless of the cadence; ``terminal`` = must-deliver.

        Returns the queued report — or the queued or in-flight ordinary report with the same
        body, now promoted to must-deliver — or None when an identical report is already
        queued, in flight, or (nothing pending) was the last delivered.
        """
        return self._queue(snapshot.report(), must_deliver=terminal)

    def _queue(self, body: ReportBody, *, must_deliver: bool) -> OutgoingReport | None:
        flying = self._in_flight
        if flying is not None and flying.body == body:
            if must_deliver and not flying.must_deliver:
                self._in_flight = attrs.evolve(flying, must_deliver=True)
                return self._in_flight  # should this attempt fail, it is not dropped
            return None
        if any(r.body == body for r in self._fifo):
            return None
        if must_deliver:
            if self._slot is not None:
                if self._slot.body == body:
                    report = attrs.evolve(self._slot, must_deliver=True)
                    self._slot = None
                    return self._append(report)
                self.coalesced += 1  # an older ordinary report is obsolete now
                self._slot = None
            elif not self.pending and body == self._last_delivered:
                return None
            return self._append(self._new(body, must_deliver=True))
        if body == self._last_queued:
            return None
        if not self.pending and body == self._last_delivered:
            return None
        if self._slot is not None:
            self.coalesced += 1
        self._slot = self._new(body, must_deliver=False)
        self._last_queued = body
        return self._slot

    def _new(self, body: ReportBody, *, must_deliver: bool) -> OutgoingReport:
        self._seq += 1
        return OutgoingReport(self._seq, body, must_deliver)

    def _append(self, report: OutgoingReport) -> OutgoingReport:
        self._fifo.append(report)
        self._last_queued = report.body
        return report

    # ---- the sender's side -----------------------------------------------------------------
    def next_report(self, now: float) -> OutgoingReport | None:
        """The report to POST now, which is in flight from here on; None = nothing to send now.

        Nothing while another report is in flight, nor during the backoff after a failed
        attempt (:meth:`delay_until_next` says how long); then the head of the must-deliver
        FIFO, else the slot.
        """
        if self._in_flight is not None or (self._retry_at is not None and now < self._retry_at):
            return None
        if self._fifo:
            self._in_flight = self._fifo.popleft()
        elif self._slot is not None:
            self._in_flight, self._slot = self._slot, None
        return self._in_flight

    def delay_until_next(self, now: float) -> float | None:
        """Seconds until :meth:`next_report` has something; None = wait for an offer or kick.

        Also None while a report is in flight (its outcome decides what comes next).
        """
        if self._in_flight is not None or (not self._fifo and self._slot is None):
            return None
        if self._retry_at is None or now >= self._retry_at:
            return 0.0
        return self._retry_at - now

    def delivered(self, report: OutgoingReport, now: float) -> None:
        """device-api accepted ``report`` (the one in flight): the backoff starts over.

        ``now`` is taken for symmetry with :meth:`failed`; a delivery needs no time.
        """
        self._settle(report)
        self.sent += 1
        self.last_error = None
        self._last_delivered = report.body
        self._backoff_s = self.min_backoff_s
        self._retry_at = None

    def failed(self, report: OutgoingReport, now: float, reason: str) -> None:
        """The attempt to deliver ``report`` failed (``reason`` shows in ``last_error``).

        Nothing is handed out for the current backoff delay, which then doubles (capped). A
        must-deliver report goes back to the head of its FIFO; an ordinary one is retried
        only if it is still the newest report queued, else it is dropped.
        """
        flying = self._settle(report)
        self.failed_attempts += 1
        self.last_error = visible(reason, 500)  # device-api's answer: outside text
        self._retry_at = now + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self.max_backoff_s)
        if flying.must_deliver:
            self._fifo.appendleft(flying)  # older than everything else pending
        elif self._slot is None and not self._fifo:
            self._slot = flying  # still the newest: retry it
        else:
            self.coalesced += 1  # something newer is queued: sending this later is backwards

    def _settle(self, report: OutgoingReport) -> OutgoingReport:
        flying = self._in_flight
        if flying is None or flying.seq != report.seq:
            raise ValueError(f"report {report.seq} is not the one in flight")
        self._in_flight = None
        return flying  # may have been promoted to must-deliver while in flight

    # ---- what it holds ---------------------------------------------------------------------
    @property
    def in_flight(self) -> OutgoingReport | None:
        """The report handed out by :meth:`next_report` and not settled yet."""
        return self._in_flight

    def waiting(self) -> tuple[OutgoingReport, ...]:
        """The reports not in flight, in the order they will be sent."""
        slot = () if self._slot is None else (self._slot,)
        return (*self._fifo, *slot)

    @property
    def pending(self) -> int:
        """Reports not delivered yet: waiting ones plus the one in flight."""
        return len(self._fifo) + (self._slot is not None) + (self._in_flight is not None)

    @property
    def backoff_s(self) -> float:
        """The delay the next failed attempt will impose."""
        return self._backoff_s

    @property
    def retry_at(self) -> float | None:
        """When the backoff after the last failed attempt ends (None: no backoff)."""
        return self._retry_at
