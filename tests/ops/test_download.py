"""download_package against a real (misbehaving) HTTP server and real files."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.support.package_server import Behaviour, PackageServer
from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.core.events import DownloadRequest
from updater_fsm.core.progress import Retry
from updater_fsm.ops import download
from updater_fsm.ops.download import (
    DownloadProgress,
    DownloadSettings,
    ResumePoint,
    discard_download,
    download_package,
    package_path,
    part_path,
)

SIZE = 1024 * 1024 + 123  # not a multiple of any buffer size
FAST = DownloadSettings(
    connect_timeout_s=2.0,
    read_timeout_s=2.0,
    max_attempts=4,
    backoff_base_s=0.01,
    backoff_max_s=0.05,
    checkpoint_bytes=64 * 1024,
    checkpoint_interval_s=0.05,
    chunk_size=32 * 1024,
    read_bufsize=32 * 1024,
)


def blob(size: int = SIZE, seed: int = 1) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]


def spec_for(url: str, data: bytes, name: str = "pkg.zip") -> DownloadRequest:
    return DownloadRequest(
        version="1.0.0",
        package_url=url,
        package_name=name,
        package_size=len(data),
        package_md5=hashlib.md5(data).hexdigest(),
        package_sha256=hashlib.sha256(data).hexdigest(),
    )


class Journal:
    """Collects checkpoints like the engine's journal would."""

    def __init__(self) -> None:
        self.points: list[ResumePoint] = []

    async def __call__(self, point: ResumePoint) -> None:
        self.points.append(point)

    @property
    def last(self) -> ResumePoint:
        return self.points[-1]


def assert_complete(tmp_path: Path, data: bytes, name: str = "pkg.zip") -> None:
    final = package_path(tmp_path, name)
    assert final.read_bytes() == data
    assert not part_path(tmp_path, name).exists()


async def test_happy_path_returns_digests_and_checkpoints(
    package_server: PackageServer, tmp_path: Path
) -> None:
    data = blob()
    spec = spec_for(package_server.add("pkg.zip", data), data)
    journal = Journal()
    result = await download_package(
        spec, tmp_path, resume=None, settings=FAST, on_checkpoint=journal
    )
    assert result.path == package_path(tmp_path, "pkg.zip")
    assert (result.size, result.md5, result.sha256) == (SIZE, spec.package_md5, spec.package_sha256)
    assert_complete(tmp_path, data)
    # First checkpoint right after the headers: offset 0, validators known.
    assert journal.points[0] == ResumePoint(
        0, package_server.etag("pkg.zip"), journal.points[0].last_modified
    )
    assert journal.points[0].last_modified is not None
    offsets = [p.offset for p in journal.points]
    assert offsets == sorted(offsets) and offsets[-1] == SIZE
    assert any(0 < o < SIZE for o in offsets)  # checkpointed along the way, not only at the end
    assert len(package_server.requests("pkg.zip")) == 1


async def test_follows_redirects(package_server: PackageServer, tmp_path: Path) -> None:
    data = blob(5000)
    package_server.add("pkg.zip", data)
    spec = spec_for(package_server.url("pkg.zip", redirects=2), data)
    result = await download_package(spec, tmp_path, resume=None, settings=FAST)
    assert result.md5 == spec.package_md5
    assert_complete(tmp_path, data)


async def test_resume_after_dropped_connection_skips_durable_bytes(
    package_server: PackageServer, tmp_path: Path
) -> None:
    data = blob()
    spec = spec_for(package_server.add("pkg.zip", data), data)
    package_server.script("pkg.zip", Behaviour(drop_after=600_000))
    journal = Journal()
    with pytest.raises(UpdaterError) as err:
        await download_package(
            spec,
            tmp_path,
            resume=None,
            settings=attrs.evolve(FAST, max_attempts=1),
            on_checkpoint=journal,
        )
    assert err.value.code is ErrorCode.INCOMPLETE_DOWNLOAD and err.value.retryable
    assert re.search(r" \N{EM DASH} 1 attempt over [0-9.]+ s$", err.value.detail)
    point = journal.last
    assert 0 < point.offset <= 600_000
    assert part_path(tmp_path, "pkg.zip").exists()

    # "Restart": a new call with what the journal holds.
    result = await download_package(spec, tmp_path, resume=point, settings=FAST)
    assert result.md5 == spec.package_md5 and result.sha256 == spec.package_sha256
    assert_complete(tmp_path, data)
    second = package_server.requests("pkg.zip")[1]
    assert second.status == 206
    assert second.range == f"bytes={point.offset}-"
    assert second.if_range == package_server.etag("pkg.zip")
    assert second.bytes_sent == SIZE - point.offset


async def test_resume_truncates_untrusted_tail(
    package_server: PackageServer, tmp_path: Path
) -> None:
    """Bytes after the journaled offset are garbage-proof: they are cut and re-fetched."""
    data = blob()
    spec = spec_for(package_server.add("pkg.zip", data), data)
    offset = 300_000
    part_path(tmp_path, "pkg.zip").write_bytes(data[:offset] + b"\0" * 50_000)
    point = ResumePoint(offset, package_server.etag("pkg.zip"))
    result = await download_package(spec, tmp_path, resume=point, settings=FAST)
    assert result.md5 == spec.package_md5
    assert_complete(tmp_path, data)
    (req,) = package_server.requests("pkg.zip")
    assert req.range == f"bytes={offset}-" and req.bytes_sent == SIZE - offset


async def test_cancel_is_prompt_keeps_part_and_resumes(
    package_server: PackageServer, tmp_path: Path
) -> None:
    data = blob()
    spec = spec_for(package_server.add("pkg.zip", data, Behaviour(rate_bps=2_000_000)), data)
    journal = Journal()
    far_enough = asyncio.Event()

    async def on_checkpoint(point: ResumePoint) -> None:
        await journal(point)
        if point.offset >= 200_000:
            far_enough.set()

    task = asyncio.create_task(
        download_package(spec, tmp_path, resume=None, settings=FAST, on_checkpoint=on_checkpoint)
    )
    await asyncio.wait_for(far_enough.wait(), 5)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < 0.5
    assert part_path(tmp_path, "pkg.zip").stat().st_size >= journal.last.offset
    assert not package_path(tmp_path, "pkg.zip").exists()

    package_server.set_behaviour("pkg.zip", Behaviour())
    point = journal.last
    result = await download_package(spec, tmp_path, resume=point, settings=FAST)
    assert result.md5 == spec.package_md5
    assert_complete(tmp_path, data)
    assert package_server.requests("pkg.zip")[-1].range == f"bytes={point.offset}-"
    assert package_server.requests("pkg.zip")[-1].bytes_sent == SIZE - point.offset


async def test_server_ignoring_range_restarts_cleanly(
    package_server: PackageServer, tmp_path: Path
) -> None:
    data = blob()
    spec = spec_for(package_server.add("pkg.zip", data, Behaviour(support_range=False)), data)
    part_path(tmp_path, "pkg.zip").write_bytes(data[:400_000])
    seen: list[DownloadProgress] = []
    result = await download_package(
        spec,
        tmp_path,
        resume=ResumePoint(400_000, package_server.etag("pkg.zip")),
        settings=FAST,
        on_progress=seen.append,
    )
    assert result.md5 == spec.package_md5 and result.sha256 == spec.package_sha256
    assert_complete(tmp_path, data)
    (req,) = package_server.requests("pkg.zip")
    assert req.status == 200 and req.bytes_sent == SIZE
    assert seen[0].bytes_done == 400_000 and 0 in [p.bytes_done for p in seen]


@pytest.mark.parametrize("honour_if_range", [True, False])
async def test_changed_file_restarts_from_zero_never_splices(
    package_server: PackageServer, tmp_path: Path, honour_if_range: bool
) -> None:
    old, new = blob(seed=1), blob(seed=2)
    url = package_server.add("pkg.zip", old, Behaviour(honour_if_range=honour_if_range))
    package_server.script("pkg.zip", Behaviour(drop_after=500_000))
    journal = Journal()
    one_try = attrs.evolve(FAST, max_attempts=1)
    with pytest.raises(UpdaterError):
        await download_package(
            spec_for(url, old), tmp_path, resume=None, settings=one_try, on_checkpoint=journal
        )
    assert journal.last.offset > 0
    package_server.replace("pkg.zip", new)  # re-published: new ETag / Last-Modified

    spec = spec_for(url, new)
    result = await download_package(spec, tmp_path, resume=journal.last, settings=FAST)
    assert result.md5 == spec.package_md5
    assert_complete(tmp_path, new)
    reqs = package_server.requests("pkg.zip")
    if honour_if_range:
        assert [r.status for r in reqs] == [200, 200]
    else:  # the server splices; the ETag on the 206 gives it away and we start over
        assert [r.status for r in reqs] == [200, 206, 200]
        assert reqs[2].range is None


async def test_416_on_resume_restarts_from_zero(
    package_server: PackageServer, tmp_path: Path
) -> None:
    data = blob()
    spec = spec_for(package_server.add("pkg.zip", data), data)
    package_server.script("pkg.zip", Behaviour(status=416))
    part_path(tmp_path, "pkg.zip").write_bytes(data[:1000])
    result = await download_package(
        spec, tmp_path, resume=ResumePoint(1000, package_server.etag("pkg.zip")), settings=FAST
    )
    assert result.md5 == spec.package_md5
    reqs = package_server.requests("pkg.zip")
    assert [(r.status, r.range) for r in reqs] == [(416, "bytes=1000-"), (200, None)]


async def test_drops_mid_stream_are_retried_with_range(
    package_server: PackageServer, tmp_path: Path
) -> None:
    data = blob()
    spec = spec_for(package_server.add("pkg.zip", data), data)
    package_server.script(
        "pkg.zip", Behaviour(drop_after=300_000), Behaviour(drop_after=300_000), Behaviour()
    )
    result = await download_package(spec, tmp_path, resume=None, settings=FAST)
    assert result.md5 == spec.package_md5 and result.sha256 == spec.package_sha256
    assert_complete(tmp_path, data)
    reqs = package_server.requests("pkg.zip")
    assert [r.status for r in reqs] == [200, 206, 206]
    # Every byte was sent exactly once.
    assert package_server.bytes_sent("pkg.zip") == SIZE


async def test_stall_times_out_and_retries(package_server: PackageServer, tmp_path: Path) -> None:
    data = blob()
    spec = spec_for(package_server.add("pkg.zip", data), data)
    package_server.script("pkg.zip", Behaviour(stall_after=200_000, stall_s=3.0))
    settings = attrs.evolve(FAST, read_timeout_s=0.3)
    t0 = time.monotonic()
    result = await download_package(spec, tmp_path, resume=None, settings=settings)
    assert time.monotonic() - t0 < 2.5
    assert result.md5 == spec.package_md5
    reqs = package_server.requests("pkg.zip")
    assert len(reqs) == 2 and reqs[1].range is not None and reqs[1].status == 206


@pytest.mark.parametrize("announced", [SIZE - 1, SIZE + 1])
async def test_wrong_content_length_fails_before_writing(
    package_server: PackageServer, tmp_path: Path, announced: int
) -> None:
    data = blob()
    spec = spec_for(package_server.add("pkg.zip", data, Behaviour(content_length=announced)), data)
    with pytest.raises(UpdaterError) as err:
        await download_package(spec, tmp_path, resume=None, settings=FAST)
    assert err.value.code is ErrorCode.PACKAGE_SIZE_MISMATCH
    assert err.value.detail == f"server announces {announced} bytes, expected {SIZE}"
    assert len(package_server.requests("pkg.zip")) == 1
    assert not part_path(tmp_path, "pkg.zip").exists()


async def test_server_file_of_other_size_on_resume(
    package_server: PackageServer, tmp_path: Path
) -> None:
    data = blob()
    spec = spec_for(package_server.add("pkg.zip", data + b"x"), data)
    part_path(tmp_path, "pkg.zip").write_bytes(data[:1000])
    with pytest.raises(UpdaterError) as err:
        await download_package(
            spec, tmp_path, resume=ResumePoint(1000, package_server.etag("pkg.zip")), settings=FAST
        )
    assert err.value.code is ErrorCode.PACKAGE_SIZE_MISMATCH
    assert f"announces {SIZE + 1} bytes" in err.value.detail


async def test_endless_body_is_cut_at_the_expected_size(
    package_server: PackageServer, tmp_path: Path
) -> None:
    data = blob()
    spec = spec_for(package_server.add("pkg.zip", data, Behaviour(endless=True)), data)
    with pytest.raises(UpdaterError) as err:
        await download_package(spec, tmp_path, resume=None, settings=FAST)
    assert err.value.code is ErrorCode.PACKAGE_SIZE_MISMATCH
    assert "more than the expected" in err.value.detail
    # The server logs a request when its handler ends: the endless one ends when its next
    # write finds the client gone, which under load can come after the client's error.
    for _ in range(100):
        if package_server.requests("pkg.zip"):
            break
        await asyncio.sleep(0.05)
    (req,) = package_server.requests("pkg.zip")
    # The client hung up: only what socket buffers absorbed went out beyond the size.
    assert req.bytes_sent < SIZE + 16 * 1024 * 1024
    assert not part_path(tmp_path, "pkg.zip").exists()


async def test_short_body_without_length_is_incomplete(
    package_server: PackageServer, tmp_path: Path
) -> None:
    data = blob()
    url = package_server.add("pkg.zip", data[:-10], Behaviour(omit_content_length=True))
    settings = attrs.evolve(FAST, max_attempts=1)
    with pytest.raises(UpdaterError) as err:
        await download_package(spec_for(url, data), tmp_path, resume=None, settings=settings)
    assert err.value.code is ErrorCode.INCOMPLETE_DOWNLOAD and err.value.retryable
    assert (
        err.value.detail.partition(" \N{EM DASH} ")[0]
        == f"connection closed after {SIZE - 10} of {SIZE} bytes"
    )


async def test_shorter_file_found_on_resume_is_size_mismatch(
    package_server: PackageServer, tmp_path: Path
) -> None:
    """Chunked and short, then 416 ``bytes */<smaller>`` on the retry: the sizes disagree."""
    data = blob()
    url = package_server.add("pkg.zip", data[:-10], Behaviour(omit_content_length=True))
    with pytest.raises(UpdaterError) as err:
        await download_package(spec_for(url, data), tmp_path, resume=None, settings=FAST)
    assert err.value.code is ErrorCode.PACKAGE_SIZE_MISMATCH
    assert [r.status for r in package_server.requests("pkg.zip")] == [200, 416]
    assert not part_path(tmp_path, "pkg.zip").exists()


async def test_404_fails_fast(package_server: PackageServer, tmp_path: Path) -> None:
    data = blob(100)
    package_server.add("pkg.zip", data, Behaviour(status=404))
    url = package_server.url("pkg.zip")
    with pytest.raises(UpdaterError) as err:
        await download_package(spec_for(url, data), tmp_path, resume=None, settings=FAST)
    assert str(err.value) == f"DOWNLOAD_FAILED: HTTP 404 Not Found for {url}"
    assert not err.value.retryable
    assert len(package_server.requests("pkg.zip")) == 1


async def test_500_then_200_succeeds(package_server: PackageServer, tmp_path: Path) -> None:
    data = blob()
    spec = spec_for(package_server.add("pkg.zip", data), data)
    package_server.script("pkg.zip", Behaviour(status=500), Behaviour(status=503))
    result = await download_package(spec, tmp_path, resume=None, settings=FAST)
    assert result.md5 == spec.package_md5
    assert [r.status for r in package_server.requests("pkg.zip")] == [500, 503, 200]


async def test_retry_budget_is_bounded(package_server: PackageServer, tmp_path: Path) -> None:
    data = blob(100)
    url = package_server.add("pkg.zip", data, Behaviour(status=502))
    with pytest.raises(UpdaterError) as err:
        await download_package(spec_for(url, data), tmp_path, resume=None, settings=FAST)
    assert err.value.code is ErrorCode.DOWNLOAD_FAILED and err.value.retryable
    assert re.fullmatch(
        rf"HTTP 502 Bad Gateway for {re.escape(url)} \N{{EM DASH}} 4 attempts over [0-9.]+ s",
        err.value.detail,
    ), err.value.detail
    assert len(package_server.requests("pkg.zip")) == FAST.max_attempts


async def test_429_honours_retry_after(package_server: PackageServer, tmp_path: Path) -> None:
    data = blob(1000)
    spec = spec_for(package_server.add("pkg.zip", data), data)
    package_server.script("pkg.zip", Behaviour(status=429, retry_after="1"))
    t0 = time.monotonic()
    await download_package(spec, tmp_path, resume=None, settings=FAST)
    assert time.monotonic() - t0 >= 1.0  # backoff alone would be <= 0.05 s
    assert [r.status for r in package_server.requests("pkg.zip")] == [429, 200]


async def test_disk_space_is_checked_before_any_request(
    package_server: PackageServer, tmp_path: Path
) -> None:
    url = package_server.add("pkg.zip", b"x")
    st = os.statvfs(tmp_path)
    huge = st.f_bavail * st.f_frsize  # needs twice that
    spec = DownloadRequest("1.0.0", url, "pkg.zip", huge, "0" * 32)
    with pytest.raises(UpdaterError) as err:
        await download_package(spec, tmp_path, resume=None, settings=FAST)
    assert err.value.code is ErrorCode.DISK_FULL
    assert err.value.detail.startswith("need ") and f" MB free in {tmp_path}, have " in str(err)
    assert package_server.requests("pkg.zip") == []


@contextlib.contextmanager
def tiny_fs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_enospc_mid_write_is_disk_full_and_keeps_part(
    package_server: PackageServer, tmp_path: Path
) -> None:
    data = blob(2 * 1024 * 1024)
    spec = spec_for(package_server.add("pkg.zip", data), data)
    with tiny_fs(tmp_path / "fs", "1m") as fs:
        # The up-front check is switched off to reach the write path.
        settings = attrs.evolve(FAST, disk_space_factor=0.0)
        settings = attrs.evolve(settings, disk_headroom_bytes=0)
        with pytest.raises(UpdaterError) as err:
            await download_package(spec, fs, resume=None, settings=settings)
        assert err.value.code is ErrorCode.DISK_FULL and "no space left" in err.value.detail
        assert part_path(fs, "pkg.zip").exists()


async def test_progress_is_monotonic_and_rate_limited(
    package_server: PackageServer, tmp_path: Path
) -> None:
    data = blob()
    spec = spec_for(package_server.add("pkg.zip", data, Behaviour(rate_bps=2_500_000)), data)
    seen: list[tuple[float, DownloadProgress]] = []
    settings = attrs.evolve(FAST, progress_interval_s=0.1)
    await download_package(
        spec,
        tmp_path,
        resume=None,
        settings=settings,
        on_progress=lambda p: seen.append((time.monotonic(), p)),
    )
    done = [p.bytes_done for _, p in seen]
    assert done == sorted(done) and done[-1] == SIZE and seen[-1][1].eta_s == 0
    assert all(p.total == SIZE for _, p in seen)
    # Rate limit: between the first and the final sample, never closer than the interval.
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(seen[:-1])]
    assert gaps and min(gaps) >= 0.099
    assert 3 <= len(seen) <= 0.45 / 0.1 + 4  # ~0.42 s of transfer
    speeds = [p.speed_bps for _, p in seen[2:]]
    assert all(1_000_000 < s < 5_000_000 for s in speeds)


async def test_finished_file_from_previous_run_is_returned(
    package_server: PackageServer, tmp_path: Path
) -> None:
    data = blob()
    spec = spec_for(package_server.add("pkg.zip", data), data)
    package_path(tmp_path, "pkg.zip").write_bytes(data)  # renamed, then the crash
    result = await download_package(spec, tmp_path, resume=ResumePoint(SIZE), settings=FAST)
    assert result.md5 == spec.package_md5 and result.sha256 == spec.package_sha256
    assert package_server.requests("pkg.zip") == []


async def test_fresh_download_discards_stale_files(
    package_server: PackageServer, tmp_path: Path
) -> None:
    data = blob()
    spec = spec_for(package_server.add("pkg.zip", data), data)
    part_path(tmp_path, "pkg.zip").write_bytes(b"stale" * 1000)
    package_path(tmp_path, "pkg.zip").write_bytes(b"old package")
    result = await download_package(spec, tmp_path, resume=None, settings=FAST)
    assert result.md5 == spec.package_md5
    assert_complete(tmp_path, data)
    assert package_server.requests("pkg.zip")[0].range is None


def test_discard_download_removes_both(tmp_path: Path) -> None:
    part_path(tmp_path, "p").write_bytes(b"1")
    package_path(tmp_path, "p").write_bytes(b"2")
    discard_download(tmp_path, "p")
    discard_download(tmp_path, "p")  # idempotent
    assert list(tmp_path.iterdir()) == []


def test_worker_threads_run_at_a_lower_priority_than_the_event_loop() -> None:
    """Hashing and writing must lose the CPU to the loop (and the printer's services)."""
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: list[int] = []

    def probe() -> None:
        download._yield_cpu_to_the_loop()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    worker = threading.Thread(target=probe)
    worker.start()
    worker.join()
    assert seen == [min(base + download.WORKER_NICENESS, 19)]
    # Only that thread: the caller's priority is unchanged.
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


async def test_nothing_listening_is_said_in_words_and_each_retry_is_reported(
    tmp_path: Path,
) -> None:
    """``cannot connect to 127.0.0.1:P: connection refused — 4 attempts over … s``; before
    each retry a progress sample carries it (``/progress`` shows it while it waits)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens on it
    data = blob(100)
    seen: list[DownloadProgress] = []
    with pytest.raises(UpdaterError) as err:
        await download_package(
            spec_for(f"http://127.0.0.1:{port}/pkg.zip", data),
            tmp_path,
            resume=None,
            settings=FAST,
            on_progress=seen.append,
        )
    refused = f"cannot connect to 127.0.0.1:{port}: connection refused"
    assert err.value.code is ErrorCode.DOWNLOAD_FAILED and err.value.retryable
    assert re.fullmatch(
        rf"{re.escape(refused)} \N{{EM DASH}} 4 attempts over [0-9.]+ s", err.value.detail
    ), err.value.detail
    retries = [p.retry for p in seen if p.retry is not None]
    assert [(r.reason, r.next_attempt, r.max_attempts) for r in retries] == [
        (refused, 2, 4),
        (refused, 3, 4),
        (refused, 4, 4),
    ]
    assert all(0 < r.delay_s <= FAST.backoff_max_s for r in retries)
    assert retries[0].words().startswith(f"{refused}; retrying in 0.0 s, attempt 2 of 4")


async def test_a_retry_is_shown_until_bytes_flow_again(
    package_server: PackageServer, tmp_path: Path
) -> None:
    data = blob()
    spec = spec_for(package_server.add("pkg.zip", data), data)
    package_server.script("pkg.zip", Behaviour(status=503))
    seen: list[DownloadProgress] = []
    await download_package(spec, tmp_path, resume=None, settings=FAST, on_progress=seen.append)
    retries = [p.retry for p in seen if p.retry is not None]
    assert len(retries) == 1 and "HTTP 503" in retries[0].reason
    assert retries[0] == Retry(retries[0].reason, retries[0].delay_s, 2, 4)
    assert seen[-1].bytes_done == SIZE and seen[-1].retry is None
