"""Contract §2: reports to a real (mock) device-api over loopback, driven by a real engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from http_shell.daemon.reporter import Reporter, worth_reporting
from tests.http_shell.conftest import ClientFactory, Rig, body, call
from tests.support.device_api import (
    REPORT_PATH,
    DeviceApi,
    device_api,
    free_port,
    start_device_api,
)
from updater_fsm.core import events as ev
from updater_fsm.core.errors import ErrorCode, Failure
from updater_fsm.core.manifest import ServiceUnit
from updater_fsm.core.progress import Snapshot, Transfer, build_snapshot
from updater_fsm.core.record import Job, Record
from updater_fsm.core.table import State

__all__ = ["device_api"]  # the fixture, imported for pytest

Reports = list[dict[str, Any]]


def fast_reporter(url: str) -> Reporter:
    """A reporter with short retry delays, so tests of outages stay quick."""
    return Reporter(url, min_backoff_s=0.02, max_backoff_s=0.1, request_timeout_s=1.0)


@pytest.fixture
async def reporter(rig: Rig, device_api: DeviceApi) -> AsyncIterator[Reporter]:
    rep = fast_reporter(device_api.url)
    rig.runner.reporter = rep
    rep.start(rig.engine)
    yield rep
    await rep.stop(flush_timeout_s=0)


def _stages(reports: Reports) -> list[tuple[str, int]]:
    return [(r["stage"], r["progress"]) for r in reports]


def _last_is(expected: tuple[str, int]) -> Callable[[Reports], bool]:
    return lambda reports: bool(reports) and _stages(reports)[-1] == expected


def _progress_is(pct: int) -> Callable[[Reports], bool]:
    return lambda reports: bool(reports) and reports[-1]["progress"] == pct


async def test_every_stage_and_state_change_is_reported(
    rig: Rig, reporter: Reporter, device_api: DeviceApi
) -> None:
    units = (ServiceUnit("device-api.service", 1),)
    steps: list[tuple[Any, tuple[str, int]]] = [
        (lambda: rig.to_downloading(), ("downloading", 0)),
        (lambda: rig.ok(ev.DownloadDone(rig.job_id, 1000, "0" * 32, "1" * 64)), ("verifying", 50)),
        (lambda: rig.ok(ev.Verified(rig.job_id)), ("toInstall", 100)),
        (lambda: rig.ok(ev.UpdateRequested("1.2.3")), ("installing", 10)),
        (lambda: rig.ok(ev.Staged(rig.job_id, units, rig.engine.links)), ("installing", 40)),
        (lambda: rig.ok(ev.Switched(rig.job_id)), ("installing", 70)),
        (lambda: rig.ok(ev.Healthy(rig.job_id)), ("success", 100)),
    ]
    for step, expected in steps:
        await step()
        got = await device_api.wait_for(_last_is(expected))
        assert _stages(got)[-1] == expected
    assert _stages(device_api.accepted) == [e for _, e in steps]
    success = device_api.accepted[-1]
    assert success["version"] == "v1.2.3" and success["error"] is None
    assert set(success) == {"stage", "progress", "message", "error", "version"}
    await _until(lambda: reporter.stats.sent == len(steps))
    assert reporter.stats.pending == 0


async def test_download_progress_is_reported_every_5_percent(
    rig: Rig, reporter: Reporter, device_api: DeviceApi
) -> None:
    await rig.to_downloading()
    await device_api.wait_for(lambda r: len(r) == 1)
    for pct in range(1, 101):
        rig.engine.update_transfer(Transfer(rig.job_id, pct * 10, 1000))
        if pct % 5 == 0 and pct < 100:
            await device_api.wait_for(_progress_is(pct))
    await rig.ok(ev.DownloadDone(rig.job_id, 1000, "0" * 32, "1" * 64))
    reports = await device_api.wait_for(lambda r: r[-1]["stage"] == "verifying")
    downloading = [r["progress"] for r in reports if r["stage"] == "downloading"]
    assert downloading == list(range(0, 100, 5))  # capped at 99 while downloading
    assert "MB" in reports[1]["message"]


def test_cadence_rule() -> None:
    base = build(0)
    assert worth_reporting(None, base)
    assert not worth_reporting(base, build(4))
    assert worth_reporting(base, build(5))
    assert worth_reporting(build(7), build(10))
    assert not worth_reporting(build(10), build(14))
    assert worth_reporting(build(10), attrs.evolve(build(10), error="DOWNLOAD_FAILED: x"))
    assert worth_reporting(build(10), attrs.evolve(build(10), version="9.9.9"))
    assert not worth_reporting(build(10), attrs.evolve(build(10), message="other", speed_bps=9))


def build(progress: int) -> Snapshot:
    """A downloading snapshot at ``progress`` % (of a 100-byte package)."""
    req = ev.DownloadRequest("1.2.3", "http://h/x.zip", "x.zip", 100, "0" * 32)
    record = Record(state=State.DOWNLOADING, job=Job(1, request=req))
    return build_snapshot(record, Transfer(1, progress, 100), ev.LinkVersions())


async def test_an_error_is_reported_at_once(
    rig: Rig, reporter: Reporter, device_api: DeviceApi
) -> None:
    await rig.to_failed()
    reports = await device_api.wait_for(lambda r: bool(r) and r[-1]["stage"] == "failed")
    failed = reports[-1]
    assert failed["error"] == "DOWNLOAD_FAILED: connection refused"
    assert failed["progress"] == 0 and failed["version"] == "v1.2.3"


async def test_reports_coalesce_to_the_newest(
    rig: Rig, reporter: Reporter, device_api: DeviceApi
) -> None:
    await rig.to_downloading()
    await device_api.wait_for(lambda r: len(r) == 1)
    # A burst faster than delivery keeps only the newest report.
    for pct in range(5, 50, 5):
        rig.engine.update_transfer(Transfer(rig.job_id, pct * 10, 1000))
    await device_api.wait_for(lambda r: r[-1]["progress"] == 45)
    # A slow device-api: what arrives while one report is in flight collapses behind it.
    device_api.delay_s = 0.2
    rig.engine.update_transfer(Transfer(rig.job_id, 500, 1000))
    await _until(lambda: device_api.arrived == 3)
    for pct in range(55, 100, 5):
        rig.engine.update_transfer(Transfer(rig.job_id, pct * 10, 1000))
    reports = await device_api.wait_for(lambda r: r[-1]["progress"] == 95, timeout=5)
    assert [r["progress"] for r in reports] == [0, 45, 50, 95]
    assert reporter.stats.coalesced == 8 + 8
    await _until(lambda: reporter.stats.sent == 4)
    assert reporter.stats.pending == 0


async def test_retries_while_device_api_answers_errors(
    rig: Rig, reporter: Reporter, device_api: DeviceApi
) -> None:
    device_api.status = 503
    await rig.to_failed()
    await _until(lambda: reporter.stats.failed_attempts >= 3)
    assert reporter.stats.pending == 1
    assert reporter.stats.last_error == "device-api answered HTTP 503"
    device_api.status = 200
    reports = await device_api.wait_for(lambda r: bool(r))
    assert [r["stage"] for r in reports] == ["failed"]
    await _until(lambda: reporter.stats.sent == 1)
    assert reporter.stats.last_error is None and reporter.stats.pending == 0


async def test_a_redirect_is_a_failed_delivery_and_is_not_followed(
    rig: Rig, reporter: Reporter, device_api: DeviceApi
) -> None:
    """A 3xx from device-api is not followed: the report's body never reaches the host or
    port it names, and the delivery is retried (before: followed and counted delivered)."""
    elsewhere = await start_device_api()
    try:
        device_api.redirect_to = f"{elsewhere.url}{REPORT_PATH}"
        await rig.to_failed()
        await _until(lambda: reporter.stats.failed_attempts >= 2)
        assert elsewhere.reports == [] and reporter.stats.sent == 0
        assert reporter.stats.last_error == (
            f"device-api answered HTTP 307 to {elsewhere.url}{REPORT_PATH} (not followed)"
        )
        device_api.redirect_to = None
        reports = await device_api.wait_for(lambda r: bool(r))
        assert [r["stage"] for r in reports] == ["failed"]
        assert elsewhere.reports == []
    finally:
        await elsewhere.stop()


async def test_a_failed_older_report_is_not_retried_after_a_newer_terminal_one(
    rig: Rig, reporter: Reporter, device_api: DeviceApi
) -> None:
    """The 'downloading' POST is in flight (slow, then refused) when 'failed' is queued.

    Retrying 'downloading' after 'failed' would tell device-api the update went backwards.
    """
    device_api.status = 503
    device_api.delay_s = 0.3
    await rig.to_downloading()
    await _until(lambda: device_api.arrived == 1)  # the downloading report is in flight
    await rig.ok(
        ev.DownloadFailed(rig.job_id, Failure(ErrorCode.DOWNLOAD_FAILED, "connection refused"))
    )
    await _until(lambda: reporter.stats.failed_attempts >= 1)
    assert reporter.stats.pending == 1  # only the terminal report is left
    device_api.delay_s = 0.0
    device_api.status = 200
    await _until(lambda: reporter.stats.sent == 1)
    await asyncio.sleep(0.2)  # a stale retry would arrive within the backoff
    assert [r["stage"] for r in device_api.accepted] == ["failed"]
    assert reporter.stats.pending == 0


async def test_terminal_report_survives_device_api_down_for_the_whole_run(rig: Rig) -> None:
    port = free_port()
    reporter = fast_reporter(f"http://127.0.0.1:{port}")
    rig.runner.reporter = reporter
    reporter.start(rig.engine)
    try:
        await rig.to_failed()
        # A newer, non-terminal report must not push the terminal one out.
        await rig.to_downloading(body("1.2.4", "tope-1.2.4.zip"))
        rig.engine.update_transfer(Transfer(rig.job_id, 500, 1000))
        await _until(lambda: reporter.stats.failed_attempts >= 3)
        assert reporter.stats.pending == 2
        api = await start_device_api(port)
        try:
            reports = await api.wait_for(lambda r: len(r) >= 2)
            assert [(r["stage"], r["version"]) for r in reports] == [
                ("failed", "v1.2.3"),
                ("downloading", "v1.2.4"),
            ]
            assert reports[0]["error"] == "DOWNLOAD_FAILED: connection refused"
            assert reports[1]["progress"] == 50  # the newest, not the first downloading one
        finally:
            await api.stop()
    finally:
        await reporter.stop(flush_timeout_s=0)


async def test_kick_terminal_is_never_dropped(rig: Rig) -> None:
    """A manual rollback ends in ``idle``; its Report(terminal=True) effect must get through."""
    port = free_port()
    reporter = fast_reporter(f"http://127.0.0.1:{port}")
    rig.runner.reporter = reporter
    reporter.start(rig.engine)
    try:
        await rig.ok(ev.RollbackRequested("previous", rig.engine.links))
        await rig.ok(ev.RollbackOk(rig.job_id))  # → idle with a Report(terminal=True) effect
        await rig.to_downloading()
        await _until(lambda: reporter.stats.failed_attempts >= 2)
        api = await start_device_api(port)
        try:
            reports = await api.wait_for(lambda r: len(r) >= 2)
            assert [r["stage"] for r in reports] == ["idle", "downloading"]
            assert reports[0]["message"] == "Rolled back to v1.0.0 (no units known: none restarted)"
        finally:
            await api.stop()
    finally:
        await reporter.stop(flush_timeout_s=0)


async def test_stop_flushes_pending_reports_and_is_idempotent(
    rig: Rig, device_api: DeviceApi
) -> None:
    reporter = fast_reporter(device_api.url)
    reporter.start(rig.engine)
    device_api.delay_s = 0.05
    await rig.to_failed()
    await _until(lambda: reporter.pending > 0 or reporter.stats.sent > 0)
    await reporter.stop(flush_timeout_s=2)
    assert [r["stage"] for r in device_api.accepted][-1] == "failed"
    await reporter.stop()
    assert reporter.stats.pending == 0


async def test_healthz_shows_reporter_counters_and_cleanup_stops_it(
    rig: Rig, device_api: DeviceApi, make_client: ClientFactory
) -> None:
    reporter = fast_reporter(device_api.url)
    reporter.start(rig.engine)
    client = await make_client(reporter=reporter)
    await call(client, "POST", "/download", json=body())
    await device_api.wait_for(lambda r: len(r) == 1)
    # device-api records a report before it answers; the reporter counts it on the answer.
    await _until(lambda: reporter.stats.sent == 1)
    data = (await call(client, "GET", "/healthz"))["data"]
    assert data["reporter"] == {
        "sent": 1,
        "failed_attempts": 0,
        "pending": 0,
        "coalesced": 0,
        "last_error": None,
    }
    await client.close()  # runs the app's cleanup: the reporter stops listening
    await rig.ok(ev.DownloadFailed(rig.job_id, Failure(ErrorCode.DOWNLOAD_FAILED, "x")))
    assert reporter.stats.pending == 0 and len(device_api.reports) == 1


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def _memory_kib(field: str) -> int:
    """``VmRSS``/``VmHWM`` of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


async def test_a_300_mb_answer_from_device_api_is_not_read(rig: Rig, device_api: DeviceApi) -> None:
    """device-api answers a report with 200 and a 300 MB body (streamed lazily by the real
    server): the reporter reads at most a few KiB, counts the delivery, and the process's
    peak RSS hardly moves (it went from 44 to 658 MB when the whole answer was read)."""
    device_api.huge_answer_bytes = 300 * 1024 * 1024
    # A generous timeout: a reporter that read the whole answer would have time to do so.
    rep = Reporter(device_api.url, min_backoff_s=0.02, max_backoff_s=0.1, request_timeout_s=60)
    rig.runner.reporter = rep
    rep.start(rig.engine)
    try:
        baseline = _memory_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
        await rig.to_downloading()
        await _until(lambda: rep.stats.sent + rep.stats.failed_attempts >= 1, timeout=30)
        peak = _memory_kib("VmHWM")
        stats = rep.stats
    finally:
        await rep.stop(flush_timeout_s=0)
    assert (stats.sent, stats.failed_attempts) == (1, 0), stats  # HTTP 200: delivered
    assert device_api.reports[0]["stage"] == "downloading"
    assert (peak - baseline) < 30 * 1024, f"peak RSS grew {(peak - baseline) // 1024} MB"
    assert device_api.answer_bytes_sent < 50 * 1024 * 1024, device_api.answer_bytes_sent
