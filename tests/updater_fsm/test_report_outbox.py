"""The device-api report outbox (``updater_fsm/core/report_outbox.py``): examples.

Pure: time is a number passed in, delivery outcomes are method calls. The two races fixed in
the aiohttp reporter before the policy moved here are reproduced first; the invariants over
random runs are in ``test_report_outbox_fuzz.py``.
"""

from __future__ import annotations

import pytest

from updater_fsm.core.report_outbox import OutgoingReport, ReportOutbox, worth_reporting
from updater_fsm.core.table import State

from .helpers import snap

DOWNLOADING = snap(State.DOWNLOADING)
FAILED = snap(State.FAILED, error="DOWNLOAD_FAILED: connection refused")


def take(outbox: ReportOutbox, now: float) -> OutgoingReport:
    report = outbox.next_report(now)
    assert report is not None
    return report


def deliver_all(outbox: ReportOutbox, now: float) -> list[str]:
    """device-api is back: deliver everything; the stages it receives, in order."""
    stages = []
    while (delay := outbox.delay_until_next(now)) is not None:
        now += delay
        report = take(outbox, now)
        outbox.delivered(report, now)
        stages.append(report.body["stage"])
    assert outbox.pending == 0
    return stages


# ---- the two races fixed in the reporter (commit 6defa68), at the pure level -------------


def test_a_refused_downloading_is_not_resent_after_failed() -> None:
    """'downloading' is in flight when 'failed' is queued, then refused: retrying it after
    'failed' would tell device-api the update went backwards."""
    outbox = ReportOutbox()
    outbox.offer(DOWNLOADING)
    downloading = take(outbox, 0.0)
    outbox.offer(FAILED)
    outbox.failed(downloading, 0.1, "device-api answered HTTP 503")
    assert outbox.coalesced == 1  # dropped, not retried
    assert deliver_all(outbox, 0.1) == ["failed"]


@pytest.mark.parametrize("refused_first", [True, False], ids=["refused-first", "failed-first"])
def test_pending_is_one_whichever_comes_first(refused_first: bool) -> None:
    """CI's flaky ``pending == 2``: whether the refusal of the in-flight 'downloading' or the
    'failed' snapshot comes first, only the terminal report is left."""
    outbox = ReportOutbox()
    outbox.offer(DOWNLOADING)
    downloading = take(outbox, 0.0)
    if refused_first:
        outbox.failed(downloading, 0.1, "HTTP 503")
        assert [r.body["stage"] for r in outbox.waiting()] == ["downloading"]  # still newest
        outbox.offer(FAILED)
    else:
        outbox.offer(FAILED)
        outbox.failed(downloading, 0.1, "HTTP 503")
    assert outbox.pending == 1
    assert [(r.body["stage"], r.must_deliver) for r in outbox.waiting()] == [("failed", True)]
    assert deliver_all(outbox, 0.1) == ["failed"]


# ---- coalescing and must-deliver -------------------------------------------------------


def test_ordinary_reports_coalesce_to_the_newest() -> None:
    outbox = ReportOutbox()
    for pct in range(0, 50, 5):
        outbox.offer(snap(State.DOWNLOADING, pct))
    assert [r.body["progress"] for r in outbox.waiting()] == [45]
    assert outbox.coalesced == 9 and outbox.pending == 1
    # While one is in flight a newer one waits in the slot; older ones collapse behind it.
    in_flight = take(outbox, 0.0)
    for pct in range(50, 100, 5):
        outbox.offer(snap(State.DOWNLOADING, pct))
    assert outbox.pending == 2 and outbox.coalesced == 9 + 9
    outbox.delivered(in_flight, 0.1)
    assert [r.body["progress"] for r in outbox.waiting()] == [95]


def test_terminal_reports_go_first_in_order_and_are_retried() -> None:
    outbox = ReportOutbox(min_backoff_s=1, max_backoff_s=8)
    outbox.offer(FAILED)
    outbox.kick(snap(State.IDLE, error="rolled back"), terminal=True)
    outbox.offer(snap(State.DOWNLOADING, version="2.0.0"))
    outbox.offer(snap(State.DOWNLOADING, 50, version="2.0.0"))  # replaces the 0 % one
    assert [(r.seq, r.must_deliver) for r in outbox.waiting()] == [(1, True), (2, True), (4, False)]
    now = 0.0
    for _ in range(5):  # device-api down: the head is retried, nothing is dropped
        report = take(outbox, now)
        assert report.body["stage"] == "failed"
        outbox.failed(report, now, "refused")
        now = outbox.retry_at or now
    assert outbox.pending == 3 and outbox.coalesced == 1
    assert deliver_all(outbox, now) == ["failed", "idle", "downloading"]


def test_a_terminal_report_drops_the_older_ordinary_one() -> None:
    outbox = ReportOutbox()
    outbox.offer(DOWNLOADING)
    outbox.offer(FAILED)
    assert outbox.coalesced == 1
    assert deliver_all(outbox, 0.0) == ["failed"]


def test_kick_terminal_of_the_waiting_report_promotes_it() -> None:
    """Same body as the ordinary report in the slot: it becomes must-deliver, same place."""
    outbox = ReportOutbox()
    idle = snap(State.IDLE, version=None)
    queued = outbox.offer(snap(State.DOWNLOADING))
    assert queued is not None
    outbox.offer(idle)
    promoted = outbox.kick(idle, terminal=True)
    assert promoted is not None and promoted.must_deliver and promoted.seq == 2
    assert outbox.waiting() == (promoted,) and outbox.coalesced == 1


def test_kick_terminal_of_the_report_in_flight_keeps_it_if_refused() -> None:
    """A manual rollback's ``Report(terminal=True)`` while its 'idle' report is being sent:
    should that attempt fail, it is retried even though a newer report is queued."""
    outbox = ReportOutbox()
    idle = snap(State.IDLE, version=None)
    outbox.offer(idle)
    in_flight = take(outbox, 0.0)
    assert not in_flight.must_deliver
    promoted = outbox.kick(idle, terminal=True)
    assert promoted is not None and promoted.seq == in_flight.seq and promoted.must_deliver
    outbox.offer(DOWNLOADING)
    outbox.failed(in_flight, 0.0, "refused")
    assert outbox.coalesced == 0
    assert deliver_all(outbox, 0.0) == ["idle", "downloading"]


def test_a_refused_ordinary_report_is_retried_while_it_is_the_newest() -> None:
    outbox = ReportOutbox(min_backoff_s=1, max_backoff_s=8)
    outbox.offer(DOWNLOADING)
    report = take(outbox, 0.0)
    outbox.failed(report, 0.0, "refused")
    assert outbox.next_report(0.5) is None  # backing off
    assert take(outbox, 1.0) == report


def test_duplicates_are_not_queued() -> None:
    outbox = ReportOutbox()
    assert outbox.offer(DOWNLOADING) is not None
    assert outbox.kick(DOWNLOADING, terminal=False) is None  # same as the one queued
    report = take(outbox, 0.0)
    assert outbox.kick(DOWNLOADING, terminal=False) is None  # same as the one in flight
    outbox.delivered(report, 0.0)
    assert outbox.kick(DOWNLOADING, terminal=False) is None  # just delivered, nothing pending
    assert outbox.offer(FAILED) is not None
    assert outbox.kick(FAILED, terminal=True) is None  # already waiting
    assert outbox.pending == 1


def test_the_cadence_starts_from_the_seen_snapshot() -> None:
    outbox = ReportOutbox()
    outbox.seen(snap(State.DOWNLOADING, 12))
    assert outbox.offer(snap(State.DOWNLOADING, 14)) is None
    assert outbox.offer(snap(State.DOWNLOADING, 15)) is not None
    assert not worth_reporting(snap(State.DOWNLOADING, 15), snap(State.DOWNLOADING, 19))


# ---- backoff ----------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_resets_after_a_delivery() -> None:
    outbox = ReportOutbox(min_backoff_s=0.5, max_backoff_s=4)
    outbox.offer(FAILED)
    now, delays = 100.0, []
    for _ in range(6):
        report = take(outbox, now)
        outbox.failed(report, now, "refused")
        delay = outbox.delay_until_next(now)
        assert delay is not None
        assert outbox.next_report(now + delay / 2) is None
        delays.append(delay)
        now += delay
    assert delays == [0.5, 1, 2, 4, 4, 4]
    outbox.delivered(take(outbox, now), now)
    assert outbox.last_error is None and outbox.retry_at is None
    assert outbox.delay_until_next(now) is None  # nothing left: wait for an offer
    outbox.offer(DOWNLOADING)
    assert outbox.delay_until_next(now) == 0.0
    outbox.failed(take(outbox, now), now, "refused again")
    assert outbox.delay_until_next(now) == 0.5 and outbox.last_error == "refused again"
    assert (outbox.sent, outbox.failed_attempts) == (1, 7)


def test_one_report_at_a_time() -> None:
    outbox = ReportOutbox()
    outbox.offer(FAILED)
    outbox.offer(DOWNLOADING)
    report = take(outbox, 0.0)
    assert outbox.next_report(0.0) is None and outbox.delay_until_next(0.0) is None
    with pytest.raises(ValueError, match="not the one in flight"):
        outbox.delivered(OutgoingReport(99, {}, False), 0.0)
    outbox.delivered(report, 0.0)
    assert take(outbox, 0.0).body["stage"] == "downloading"
