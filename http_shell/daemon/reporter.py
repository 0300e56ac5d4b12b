"""Progress reports to device-api (contract §2): the aiohttp sender around the policy.

What is worth a report, which report goes next, what is dropped and when to retry is
decided by the pure :class:`~updater_fsm.control.ReportOutbox` (``updater_fsm/core/
report_outbox.py``): the cadence (every stage or state change, every new multiple of 5 % of
download progress, any new error), ordinary reports coalescing in one newest-wins slot,
``success``/``failed`` outcomes and :meth:`Reporter.kick` with ``terminal=True`` waiting in a
FIFO that is delivered first and never dropped, never going backwards, and the exponential
backoff. This module only feeds it and carries out its answers: one task turns the engine's
snapshots into :meth:`~updater_fsm.control.ReportOutbox.offer` calls, another asks it what to
send, ``POST {device_api_url}/api/v1.0/ota/report`` one at a time, and tells it how that went
(only HTTP 200 counts) — device-api is often one of the services being restarted by the very
update being reported. Nothing here ever blocks the engine: snapshots arrive through a
bounded subscription and the engine never awaits the reporter.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import aiohttp
import attrs
import structlog

from updater_fsm.control import OutgoingReport, ReportOutbox, Snapshot, worth_reporting

if TYPE_CHECKING:
    from updater_fsm.control import Subscription, UpdaterControl

__all__ = ["MAX_ANSWER_BYTES", "REPORT_PATH", "Reporter", "ReporterStats", "worth_reporting"]

_log = structlog.get_logger(__name__)

REPORT_PATH = "/api/v1.0/ota/report"
#: Most of device-api's answer ever read: only its status counts, the body is ignored. A
#: bigger body is not drained either; the connection is closed instead (it cannot be reused).
MAX_ANSWER_BYTES = 4096


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
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._outbox = ReportOutbox(min_backoff_s=min_backoff_s, max_backoff_s=max_backoff_s)
        self._engine: UpdaterControl | None = None
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()  # something was queued
        self._idle = asyncio.Event()  # nothing pending, the sender waits for a report
        self._idle.set()
        self._stopping = asyncio.Event()

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
        self._outbox.seen(engine.snapshot)
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
        self._queued(self._outbox.kick(self._engine.snapshot, terminal=terminal))

    def consider(self, snap: Snapshot) -> None:
        """Queue a report for ``snap`` when the cadence says so (the watcher's decision)."""
        self._queued(self._outbox.offer(snap))

    def _queued(self, report: OutgoingReport | None) -> None:
        if report is not None:
            self._idle.clear()
            self._wake.set()

    # ---- outputs -------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """How many reports wait to be delivered (the one being sent included)."""
        return self._outbox.pending

    @property
    def stats(self) -> ReporterStats:
        """A copy of the counters."""
        box = self._outbox
        return ReporterStats(
            sent=box.sent,
            failed_attempts=box.failed_attempts,
            pending=box.pending,
            coalesced=box.coalesced,
            last_error=box.last_error,
        )

    # ---- tasks ---------------------------------------------------------------------------
    async def _watch(self, subscription: Subscription) -> None:
        async for snap in subscription:
            self.consider(snap)

    async def _deliver(self) -> None:
        """Send what the outbox says, when it says, and tell it how each attempt went."""
        loop = asyncio.get_running_loop()
        # Checking ``_stopping`` (not only relying on cancellation) matters: on Python 3.11
        # ``wait_for`` can swallow a cancel that races its inner wait, and the loop would spin.
        while not self._stopping.is_set():
            now = loop.time()
            report = self._outbox.next_report(now)
            if report is not None:
                error = await self._post(report)
                if error is None:
                    self._outbox.delivered(report, loop.time())
                else:
                    self._outbox.failed(report, loop.time(), error)
                    if self._outbox.failed_attempts % 20 == 1:
                        _log.warning("device-api report failed, will retry", error=error)
                continue
            delay = self._outbox.delay_until_next(now)
            if delay is None:  # nothing pending: sleep until something is queued
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            # Backing off after a failed attempt; the retry sends whatever is first by then.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()

    async def _post(self, report: OutgoingReport) -> str | None:
        """POST ``report``; None when device-api accepted it (HTTP 200), else why not."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        body = report.body
        try:
            # No redirects: a 3xx is a failed delivery, retried later, never the report's
            # body sent to whatever host or port device-api's answer names.
            async with self._session.post(
                self.url, json=body, timeout=self._timeout, allow_redirects=False
            ) as resp:
                # Bounded, never resp.read()/text()/json(): a misbehaving device-api could
                # answer with hundreds of MB (300 MB took the RSS from 44 to 658 MB).
                await resp.content.read(MAX_ANSWER_BYTES)
                if resp.status == 200:
                    _log.debug("reported", stage=body.get("stage"), progress=body.get("progress"))
                    return None
                if 300 <= resp.status < 400:
                    where = resp.headers.get("Location", "nowhere")
                    return f"device-api answered HTTP {resp.status} to {where} (not followed)"
                return f"device-api answered HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
