"""Progress reports to device-api (contract §2).

The reporter listens to the engine's snapshots in its own task and decides what is worth
sending: every stage or state change, every new multiple of 5 % of download progress, and
any new error at once. A second task delivers them with
``POST {device_api_url}/api/v1.0/ota/report``, one at a time, retrying with exponential
backoff while device-api is unreachable or answers anything but HTTP 200 — device-api is
often one of the services being restarted by the very update being reported.

Pending reports never pile up: ordinary reports share one slot that always holds the newest
(older ones are obsolete), while reports that must not be lost — ``success``/``failed``
outcomes and those forced by :meth:`Reporter.kick` with ``terminal=True`` — wait in their
own FIFO and are always delivered first. Nothing here ever blocks the engine: snapshots
arrive through a bounded subscription and the engine never awaits the reporter.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import TYPE_CHECKING, Any

import aiohttp
import attrs
import structlog

from updater_fsm.control import Snapshot, Stage

if TYPE_CHECKING:
    from updater_fsm.control import Subscription, UpdaterControl

_log = structlog.get_logger(__name__)

REPORT_PATH = "/api/v1.0/ota/report"
#: Most of device-api's answer ever read: only its status counts, the body is ignored. A
#: bigger body is not drained either; the connection is closed instead (it cannot be reused).
MAX_ANSWER_BYTES = 4096
#: Download progress is reported each time it reaches a new multiple of this many percent.
PROGRESS_STEP = 5
_TERMINAL_STAGES = frozenset({Stage.SUCCESS, Stage.FAILED})

Report = dict[str, Any]


@attrs.frozen
class ReporterStats:
    """Counters for ``/healthz`` and tests.

    Attributes:
        sent: reports device-api accepted (HTTP 200).
        failed_attempts: POSTs that failed (unreachable, timeout or a non-200 answer).
        pending: reports waiting to be delivered (terminal ones plus the newest other one).
        coalesced: ordinary reports replaced by a newer one before they could be sent.
        last_error: why the last attempt failed (None after a success).
    """

    sent: int
    failed_attempts: int
    pending: int
    coalesced: int
    last_error: str | None


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


class Reporter:
    """Deliver progress reports to device-api without ever slowing the update.

    Args:
        device_api_url: base URL of device-api (``http://127.0.0.1:9080``).
        session: an aiohttp session to use (None = the reporter opens and closes its own).
        min_backoff_s: first retry delay after a failed attempt.
        max_backoff_s: the retry delay doubles up to this.
        request_timeout_s: total timeout of one POST.
    """

    def __init__(
        self,
        device_api_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        request_timeout_s: float = 5.0,
    ) -> None:
        self.url = device_api_url.rstrip("/") + REPORT_PATH
        self._session = session
        self._own_session = session is None
        self._min_backoff = min_backoff_s
        self._max_backoff = max_backoff_s
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._engine: UpdaterControl | None = None
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Ordinary reports: one slot, always the newest. Must-deliver reports: FIFO.
        self._latest: Report | None = None
        self._must: collections.deque[Report] = collections.deque()
        self._inflight: Report | None = None  # the ordinary report being sent right now
        self._inflight_must = False  # ...which kick(terminal=True) asked to never drop
        self._last_enqueued: Report | None = None
        self._last_sent: Report | None = None
        self._last_snapshot: Snapshot | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        self._sent = 0
        self._failed = 0
        self._coalesced = 0
        self._last_error: str | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self, engine: UpdaterControl) -> None:
        """Subscribe to ``engine``'s snapshots and start the watcher and sender tasks.

        Must be called from the running event loop. The snapshot current at this moment is
        not reported (nothing changed); a restarted updater re-reports a finished outcome
        through :meth:`kick`.
        """
        if self._tasks:
            return
        self._engine = engine
        self._last_snapshot = engine.snapshot
        self._subscription = engine.subscribe()
        self._tasks = [
            asyncio.create_task(self._watch(self._subscription), name="reporter-watch"),
            asyncio.create_task(self._deliver(), name="reporter-send"),
        ]

    async def stop(self, flush_timeout_s: float = 2.0) -> None:
        """Stop listening, give pending reports up to ``flush_timeout_s`` to go out, then stop.

        Safe to call more than once (the HTTP app's cleanup and the daemon both call it).
        """
        if self._subscription is not None:
            self._subscription.close()
        if not self._tasks:
            await self._close_session()
            return
        watcher, sender = self._tasks
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if self.pending and flush_timeout_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), flush_timeout_s)
        if self.pending:
            _log.warning("reporter stopped with undelivered reports", pending=self.pending)
        self._stopping.set()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        self._tasks = []
        await self._close_session()

    async def _close_session(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # ---- inputs --------------------------------------------------------------------------
    def kick(self, terminal: bool = False) -> None:
        """Report the engine's current snapshot now, regardless of the cadence.

        Called by the effect runner for a ``Report`` effect. ``terminal`` marks the report as
        one that must never be dropped (a finished outcome, a manual rollback's result).
        A report identical to one already queued or just delivered is not sent twice.
        """
        if self._engine is None:
            return
        self._enqueue(self._engine.snapshot.report(), must_deliver=terminal)

    def consider(self, snap: Snapshot) -> None:
        """Queue a report for ``snap`` when the cadence says so (the watcher's decision)."""
        if not worth_reporting(self._last_snapshot, snap):
            return
        self._last_snapshot = snap
        self._enqueue(snap.report(), must_deliver=snap.stage in _TERMINAL_STAGES)

    def _enqueue(self, report: Report, *, must_deliver: bool) -> None:
        if must_deliver:
            if report in self._must:
                return
            if report == self._inflight:
                # Being sent right now; should that attempt fail it must not be coalesced.
                self._inflight_must = True
                return
            if self._latest is not None:
                if report != self._latest:
                    self._coalesced += 1  # an older ordinary report is obsolete now
                self._latest = None
            elif not self.pending and report == self._last_sent:
                return
            self._must.append(report)
        else:
            if report in (self._last_enqueued, self._inflight) or report in self._must:
                return
            if not self.pending and report == self._last_sent:
                return
            if self._latest is not None:
                self._coalesced += 1
            self._latest = report
        self._last_enqueued = report
        self._idle.clear()
        self._wake.set()

    # ---- outputs -------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """How many reports wait to be delivered."""
        return len(self._must) + (self._latest is not None) + (self._inflight is not None)

    @property
    def stats(self) -> ReporterStats:
        """A copy of the counters."""
        return ReporterStats(
            sent=self._sent,
            failed_attempts=self._failed,
            pending=self.pending,
            coalesced=self._coalesced,
            last_error=self._last_error,
        )

    # ---- tasks ---------------------------------------------------------------------------
    async def _watch(self, subscription: Subscription) -> None:
        async for snap in subscription:
            self.consider(snap)

    def _take(self) -> tuple[Report, bool] | None:
        """The next report to send and whether it is a must-deliver one.

        A must-deliver report stays at the head of its FIFO until delivered; an ordinary one
        leaves the slot while in flight, so a newer one can take the slot meanwhile.
        """
        if self._must:
            return self._must[0], True
        if self._latest is not None:
            self._inflight, self._latest = self._latest, None
            self._inflight_must = False
            return self._inflight, False
        return None

    def _finish(self, report: Report, must: bool, delivered: bool) -> None:
        if must:
            if delivered:
                self._must.popleft()
        else:
            self._inflight = None
            if not delivered:
                if self._inflight_must:
                    self._must.appendleft(report)  # older than anything else pending
                elif self._latest is None and not self._must:
                    self._latest = report  # retry it
                else:
                    # Something newer is queued: retrying this one after it would tell
                    # device-api the update went backwards (e.g. 'downloading' after 'failed').
                    self._coalesced += 1
        if delivered:
            self._last_sent = report

    async def _deliver(self) -> None:
        backoff = self._min_backoff
        # Checking ``_stopping`` (not only relying on cancellation) matters: on Python 3.11
        # ``wait_for`` can swallow a cancel that races its inner wait, and the loop would spin.
        while not self._stopping.is_set():
            taken = self._take()
            if taken is None:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            report, must = taken
            delivered = await self._post(report)
            self._finish(report, must, delivered)
            if delivered:
                self._sent += 1
                self._last_error = None
                backoff = self._min_backoff
                continue
            self._failed += 1
            # Wait before retrying; the retry sends whatever is the newest by then.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._stopping.wait()
            backoff = min(backoff * 2, self._max_backoff)

    async def _post(self, report: Report) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(self.url, json=report, timeout=self._timeout) as resp:
                # Bounded, never resp.read()/text()/json(): a misbehaving device-api could
                # answer with hundreds of MB (300 MB took the RSS from 44 to 658 MB).
                await resp.content.read(MAX_ANSWER_BYTES)
                if resp.status == 200:
                    _log.debug(
                        "reported", stage=report.get("stage"), progress=report.get("progress")
                    )
                    return True
                self._last_error = f"device-api answered HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"
        if self._failed == 0 or self._failed % 20 == 0:
            _log.warning("device-api report failed, will retry", error=self._last_error)
        return False
