"""Streaming, resumable, validated package download, hashed on the fly.

One call of :func:`download_package` fetches ``request.package_url`` into
``<dir>/<name>.part`` and, once complete, renames it durably to ``<dir>/<name>``. Along the way:

* the body is hashed (MD5 and SHA-256) and written in a dedicated worker thread fed through a
  bounded pipeline, so the event loop only moves buffers and stays responsive, no second
  hashing pass is needed, and memory stays bounded (about ``pipeline_depth * chunk_size``);
* every ``checkpoint_bytes`` / ``checkpoint_interval_s`` the ``.part`` is fsynced and the
  caller gets a :class:`ResumePoint` to journal; after a crash the caller passes it back and
  the download continues with ``Range`` + ``If-Range`` from that durable offset (the file is
  truncated to it first: later bytes were never promised to be on disk);
* a server that ignores the range or a changed file (``200`` instead of ``206``, a new ETag,
  ``416``) restarts cleanly from zero, so two different files are never spliced;
* status, announced length and streamed length are checked against
  ``request.package_size`` before and while writing; transient failures (resets, timeouts,
  5xx, 408, 429) retry with exponential backoff and jitter (honouring ``Retry-After``), each
  retry resuming where the last one stopped.

Digest comparison is not done here but in :mod:`updater_fsm.ops.verify`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import errno
import hashlib
import math
import os
import random
import socket
import ssl as ssl_module
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import structlog

from updater_fsm import durable, faults
from updater_fsm.core.download_response import Verdict, judge_response
from updater_fsm.core.errors import ErrorCode, UpdaterError, code_for_os_error
from updater_fsm.core.events import DownloadRequest, ResumePoint
from updater_fsm.core.progress import Retry, said_seconds
from updater_fsm.core.urls import redact_url
from updater_fsm.ops import local_package
from updater_fsm.ops.futures import mark_retrieved
from updater_fsm.ops.verify import hash_file
from updater_fsm.state_layout import package_path, part_path

_log = structlog.get_logger(__name__)

KiB = 1024
MiB = 1024 * KiB


@attrs.frozen
class DownloadSettings:
    """Tuning knobs; the defaults suit a device on a slow, flaky link.

    Attributes:
        connect_timeout_s: TCP/TLS connect timeout per attempt.
        read_timeout_s: longest silence while reading (a stalled server); there is never a
            total timeout, big packages take as long as they take.
        max_attempts: total requests per call (first try + retries) before giving up.
        backoff_base_s: first retry delay; doubles per retry, with jitter.
        backoff_max_s: cap of the exponential backoff.
        retry_after_max_s: cap of a server's ``Retry-After``.
        checkpoint_bytes: fsync + report a :class:`ResumePoint` at least every this many bytes.
        checkpoint_interval_s: ... and at least this often while data flows.
        progress_interval_s: minimum time between ``on_progress`` calls.
        speed_window_s: span of the moving average behind ``speed_bps``.
        chunk_size: bytes handed to the writer thread per step.
        pipeline_depth: chunks in flight to the writer thread (bounds memory).
        read_bufsize: aiohttp's socket read buffer (flow-control high-water mark).
        disk_space_factor: free space needed before starting, as a multiple of the package
            size still to fetch (room for the package and its staged extraction).
        disk_headroom_bytes: ... plus this much.
    """

    connect_timeout_s: float = 15.0
    read_timeout_s: float = 30.0
    max_attempts: int = 8
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 300.0
    checkpoint_bytes: int = 4 * MiB
    checkpoint_interval_s: float = 1.0
    progress_interval_s: float = 0.1
    speed_window_s: float = 5.0
    chunk_size: int = 512 * KiB
    pipeline_depth: int = 4
    read_bufsize: int = 512 * KiB
    disk_space_factor: float = 2.0
    disk_headroom_bytes: int = 16 * MiB


@attrs.frozen
class SourceAccess:
    """What a package source needs beyond the URL: request headers (a fleet server's
    ``Authorization``) and the TLS trust to check it with (None: the system's CAs); for a
    ``file://`` URL, the directories it may name (none: refused) and the largest file it
    may be (:mod:`updater_fsm.ops.local_package`)."""

    headers: tuple[tuple[str, str], ...] = ()
    ssl: ssl_module.SSLContext | None = None
    local_dirs: tuple[Path, ...] = ()
    local_max_bytes: int = 0


@attrs.frozen
class DownloadProgress:
    """A progress sample: bytes of the package on disk, of ``total``; speed and ETA."""

    bytes_done: int
    total: int
    speed_bps: float
    eta_s: float | None
    #: set while the download waits to try again (until bytes flow again)
    retry: Retry | None = None


@attrs.frozen
class DownloadResult:
    """The finished package: final path, size and digests (lower-case hex)."""

    path: Path
    size: int
    md5: str
    sha256: str


def discard_download(downloads_dir: Path, package_name: str) -> None:
    """Remove the ``.part`` and the finished package, durably (e.g. on a user cancel)."""
    durable.remove_file(part_path(downloads_dir, package_name))
    durable.remove_file(package_path(downloads_dir, package_name))


def _ignore_progress(progress: DownloadProgress) -> None:
    """Default ``on_progress``: nothing."""


async def _ignore_checkpoint(point: ResumePoint) -> None:
    """Default ``on_checkpoint``: nothing."""


# --------------------------------------------------------------------------------------------
# Writer thread: write + hash, in order, off the event loop.
# --------------------------------------------------------------------------------------------
#: How much lower than the process the hashing/writing threads run (Linux nice steps).
WORKER_NICENESS = 5


def _yield_cpu_to_the_loop() -> None:
    """Lower the calling worker thread's scheduling priority (Linux: per-thread nice).

    When the CPUs are saturated, the event loop (which answers /progress and feeds the
    threads) and the printer's own services should win over bulk hashing; on an idle CPU
    the nice value costs nothing. Best effort: where it is not allowed, nothing changes.
    """
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICENESS)


class _DiskWriteError(Exception):
    """An OSError from writing the ``.part`` (kept apart from network OSErrors)."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Sink:
    """The ``.part`` file plus running MD5/SHA-256, fed through one worker thread.

    Jobs run in submission order on a single thread, so bytes land and are hashed in stream
    order. At most ``depth`` jobs are in flight; :meth:`feed` waits for the oldest beyond that,
    which is what bounds memory. ``queued`` counts bytes handed over, ``durable`` bytes
    fsynced.
    """

    def __init__(self, path: Path, depth: int) -> None:
        self._path = path
        self._depth = depth
        self._pool = ThreadPoolExecutor(
            1, thread_name_prefix="download-sink", initializer=_yield_cpu_to_the_loop
        )
        # MD5 is the slowest step (no SIMD/SHA-NI help): a second thread runs it alongside
        # write + SHA-256 (hashlib releases the GIL), which is what lets us keep up with curl.
        self._md5_pool = ThreadPoolExecutor(
            1, thread_name_prefix="download-md5", initializer=_yield_cpu_to_the_loop
        )
        # Checkpoint fsyncs run here, beside the writes, so the stream never waits for the
        # disk (an fsync on eMMC can take 100 ms; a blocking one every 4 MiB halves speed).
        self._fsync_pool = ThreadPoolExecutor(1, thread_name_prefix="download-fsync")
        self.last_write: asyncio.Future[Any] | None = None
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._fd = -1
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha256 = hashlib.sha256()
        self._failed: _DiskWriteError | None = None
        self.queued = 0
        self.durable = 0

    def _run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # The _sync_* methods run on the worker thread only.
    def _sync_open(self, offset: int) -> int:
        """Open the .part, truncate it to ``offset`` (or 0 if shorter) and hash the prefix."""
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            size = os.fstat(self._fd).st_size
            if offset > size:
                offset = 0
            os.ftruncate(self._fd, offset)
            os.fsync(self._fd)
            durable.fsync_dir(self._path.parent)  # the .part's directory entry
            buf = bytearray(MiB)
            view = memoryview(buf)
            done = 0
            while done < offset:
                n = os.preadv(self._fd, [view[: min(MiB, offset - done)]], done)
                if n <= 0:
                    raise OSError(errno.EIO, f"short read re-hashing {self._path}")
                self._md5.update(view[:n])
                self._sha256.update(view[:n])
                done += n
            os.lseek(self._fd, offset, os.SEEK_SET)
        except OSError as exc:
            raise _DiskWriteError(exc) from exc
        return offset

    def _sync_write(self, chunks: list[bytes]) -> None:
        if self._failed is not None:
            # A previous job failed: write nothing more, and fail this job too. (Returning
            # quietly let a checkpoint that waited on a later job journal bytes that were
            # never written.)
            raise _DiskWriteError(self._failed.cause)
        try:
            views = [memoryview(c) for c in chunks]
            while views:
                n = os.writev(self._fd, views)
                while views and n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                if views and n:
                    views[0] = views[0][n:]
        except OSError as exc:
            self._failed = _DiskWriteError(exc)
            raise self._failed from exc
        for c in chunks:
            self._sha256.update(c)

    def _sync_md5(self, chunks: list[bytes]) -> None:
        for c in chunks:
            self._md5.update(c)

    def _sync_reset(self) -> None:
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
        except OSError as exc:
            raise _DiskWriteError(exc) from exc
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha256 = hashlib.sha256()

    def _sync_fsync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise _DiskWriteError(exc) from exc

    def _sync_close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # Event-loop side.
    async def open(self, offset: int) -> int:
        """Open the .part at ``offset`` (0 if the file is shorter); returns the offset used."""
        offset = int(await self._run(self._sync_open, offset))
        self.queued = self.durable = offset
        return offset

    async def feed(self, chunks: list[bytes], nbytes: int) -> None:
        """Queue ``chunks`` (``nbytes`` in total) for write + hash; waits if the pipe is full."""
        loop = asyncio.get_running_loop()
        self.last_write = asyncio.gather(
            loop.run_in_executor(self._pool, self._sync_write, chunks),
            loop.run_in_executor(self._md5_pool, self._sync_md5, chunks),
        )
        self._pending.append(self.last_write)
        self.queued += nbytes
        while len(self._pending) > self._depth:
            await self._pending.popleft()

    async def drain(self) -> None:
        """Wait until every queued chunk is written and hashed (re-raising write errors)."""
        while self._pending:
            await self._pending.popleft()

    async def sync(self) -> None:
        """Drain, then fsync: afterwards ``durable == queued``."""
        await self.drain()
        await self._run(self._sync_fsync)
        self.durable = self.queued

    async def sync_upto(self, target: int, write: asyncio.Future[Any]) -> None:
        """Make the first ``target`` bytes durable while later chunks keep flowing.

        ``write`` is the job that wrote byte ``target - 1``; jobs run in order, so once it is
        done every earlier byte is in the page cache and an fsync (through its own fd, which
        flushes the whole file) covers them.
        """
        await write
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._fsync_pool, durable.fsync_file, self._path
            )
        except OSError as exc:
            raise _DiskWriteError(exc) from exc
        self.durable = max(self.durable, target)

    async def reset(self) -> None:
        """Throw away everything: truncate to zero and restart the hashes."""
        await self.drain()
        await self._run(self._sync_reset)
        self.queued = self.durable = 0

    async def digests(self) -> tuple[str, str]:
        """MD5 and SHA-256 (hex) of everything queued so far."""
        await self.drain()
        return self._md5.hexdigest(), self._sha256.hexdigest()

    def close(self) -> None:
        """Close the file after any queued writes, without waiting (safe while cancelled)."""
        # Jobs queued after a failed write fail too; nobody awaits them any more.
        for job in self._pending:
            job.add_done_callback(mark_retrieved)
        self._pending.clear()
        self._pool.submit(self._sync_close)
        for pool in (self._pool, self._md5_pool, self._fsync_pool):
            pool.shutdown(wait=False)

    async def aclose(self) -> None:
        """Close the file and wait for it (normal completion)."""
        await self.drain()
        await self._run(self._sync_close)
        for pool in (self._pool, self._md5_pool, self._fsync_pool):
            pool.shutdown(wait=False)


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------
class _Meter:
    """Rate-limited progress with a moving-average speed over ``window_s``."""

    def __init__(
        self, total: int, settings: DownloadSettings, sink: Callable[[DownloadProgress], None]
    ) -> None:
        self._total = total
        self._interval = settings.progress_interval_s
        self._window = settings.speed_window_s
        self._sink = sink
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._last_emit = -math.inf
        self._retry: Retry | None = None
        self._retry_done = 0

    def retrying(self, done: int, retry: Retry) -> None:
        """Say that an attempt failed and when the next one starts (shown until bytes flow)."""
        self._retry, self._retry_done = retry, done
        self._samples.clear()  # the time spent waiting says nothing about the speed
        self._sink(DownloadProgress(done, self._total, 0.0, None, retry))

    def update(self, done: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_emit < self._interval:
            return
        samples = self._samples
        if samples and done < samples[-1][1]:
            samples.clear()  # restarted from zero: old samples say nothing about the speed
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= self._window:
            samples.popleft()
        t0, b0 = samples[0]
        speed = (done - b0) / (now - t0) if now > t0 else 0.0
        eta = (self._total - done) / speed if speed > 0 else None
        self._last_emit = now
        if self._retry is not None and done > self._retry_done:
            self._retry = None  # bytes flow again
        self._sink(
            DownloadProgress(
                bytes_done=done, total=self._total, speed_bps=speed, eta_s=eta, retry=self._retry
            )
        )


# --------------------------------------------------------------------------------------------
# Attempt outcomes
# --------------------------------------------------------------------------------------------
class _Transient(Exception):
    """This attempt failed in a way another attempt may fix."""

    def __init__(
        self, reason: str, *, retry_after: float | None = None, incomplete: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.incomplete = incomplete
        self.immediate = False


def _said(connect: aiohttp.ClientConnectorError) -> str:
    """Why a connection failed, in words: ``connection refused``, ``cannot resolve the host
    name``."""
    exc = connect.os_error
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the host name"
    if exc.errno is not None and exc.errno > 0:  # asyncio's "Connect call failed (addr)"
        text = os.strerror(exc.errno)
        return text[:1].lower() + text[1:]
    return str(exc) or type(exc).__name__


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _mb(n: int | float) -> str:
    return f"{n / 1e6:.1f}"


def _check_disk_space(
    directory: Path, request: DownloadRequest, have: int, s: DownloadSettings
) -> None:
    """Refuse to start unless the filesystem has room for the package and its staging."""
    need = math.ceil((request.package_size - have) * s.disk_space_factor) + s.disk_headroom_bytes
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise UpdaterError(
            ErrorCode.DISK_FULL,
            f"need {_mb(need)} MB free in {directory}, have {_mb(free)} MB",
            retryable=True,
        )


def _disk_error(exc: _DiskWriteError, part: Path) -> UpdaterError:
    if code_for_os_error(exc.cause.errno, ErrorCode.DOWNLOAD_FAILED) is ErrorCode.DISK_FULL:
        st = os.statvfs(part.parent)
        return UpdaterError(
            ErrorCode.DISK_FULL,
            f"no space left writing {part} (have {_mb(st.f_bavail * st.f_frsize)} MB)",
            retryable=True,
        )
    return UpdaterError(ErrorCode.DOWNLOAD_FAILED, f"cannot write {part}: {exc.cause}")


# --------------------------------------------------------------------------------------------
# The download
# --------------------------------------------------------------------------------------------
class _Download:
    """State of one :func:`download_package` call across its attempts."""

    def __init__(
        self,
        request: DownloadRequest,
        part: Path,
        settings: DownloadSettings,
        on_progress: Callable[[DownloadProgress], None],
        on_checkpoint: Callable[[ResumePoint], Awaitable[None]],
        etag: str | None,
        last_modified: str | None,
        access: SourceAccess,
    ) -> None:
        self.request = request
        self.access = access
        self.part = part
        self.s = settings
        self.on_checkpoint = on_checkpoint
        self.etag = etag
        self.last_modified = last_modified
        self.sink = _Sink(part, settings.pipeline_depth)
        self.meter = _Meter(request.package_size, settings, on_progress)
        self.log = _log.bind(package=request.package_name, url=redact_url(request.package_url))
        self._last_ckpt_time = time.monotonic()
        self._reported: ResumePoint | None = None
        self._bg: asyncio.Task[None] | None = None

    async def settle(self) -> None:
        """Wait for a background checkpoint in flight (re-raising its failure)."""
        task, self._bg = self._bg, None
        if task is not None:
            await task

    def abandon(self) -> None:
        """Stop a background checkpoint (the call is failing or being cancelled)."""
        task, self._bg = self._bg, None
        if task is None:
            return
        if task.done():
            if not task.cancelled():
                task.exception()  # retrieved: the error being raised matters more
        else:
            task.cancel()

    def checkpoint_in_background(self) -> bool:
        """Start a checkpoint of everything queued without stopping the stream.

        Returns False (try again later) while the previous one is still running.
        """
        if self._bg is not None:
            if not self._bg.done():
                return False
            task, self._bg = self._bg, None
            task.result()  # surfaces a failed fsync / journal write
        write = self.sink.last_write
        if write is None:
            return False
        point = ResumePoint(self.sink.queued, self.etag, self.last_modified)
        self._bg = asyncio.create_task(self._background_checkpoint(point, write))
        self._last_ckpt_time = time.monotonic()
        return True

    async def _background_checkpoint(self, point: ResumePoint, write: asyncio.Future[Any]) -> None:
        await self.sink.sync_upto(point.offset, write)
        if point != self._reported:
            faults.crash_point("download:checkpoint")
            await self.on_checkpoint(point)
            self._reported = point

    async def checkpoint(self, *, force: bool = False) -> None:
        """Make everything queued durable and hand the journal a new resume point."""
        await self.settle()
        await self.sink.sync()
        point = ResumePoint(self.sink.durable, self.etag, self.last_modified)
        self._last_ckpt_time = time.monotonic()
        if point == self._reported and not force:
            return
        faults.crash_point("download:checkpoint")
        await self.on_checkpoint(point)
        self._reported = point

    def _validator(self) -> str | None:
        """The If-Range value: a strong ETag, else Last-Modified (weak ETags are not allowed)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    async def restart_from_zero(self, why: str) -> None:
        self.log.warning("download.restart", reason=why, discarded_bytes=self.sink.queued)
        await self.settle()  # its resume point belongs to the bytes being thrown away
        await self.sink.reset()
        self.meter.update(0, force=True)

    async def attempt(self, session: aiohttp.ClientSession) -> None:
        """One request; returns when the body ended (complete or not). Raises on failure."""
        offset = self.sink.queued
        if local_package.is_file_url(self.request.package_url):
            await self._copy_local(offset)
            return
        headers = {**dict(self.access.headers), "Accept-Encoding": "identity"}
        if offset:
            validator = self._validator()
            if validator is None:
                # Without a validator a changed file would be spliced undetected.
                await self.restart_from_zero("no ETag/Last-Modified to validate a resume")
                offset = 0
            else:
                headers["Range"] = f"bytes={offset}-"
                headers["If-Range"] = validator
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None,
            sock_connect=self.s.connect_timeout_s,
            sock_read=self.s.read_timeout_s,
        )
        async with session.get(
            self.request.package_url,
            headers=headers,
            timeout=timeout,
            allow_redirects=True,
            auto_decompress=False,
            read_bufsize=self.s.read_bufsize,
            ssl=self.access.ssl if self.access.ssl is not None else True,
        ) as resp:
            await self._accept(resp, offset)
            await self._stream(resp)

    async def _copy_local(self, offset: int) -> None:
        """Copy a package file of this device (a ``file://`` URL) from ``offset`` on, with
        the same checkpoints and progress as a download; the file's identity (device, inode,
        size, mtime) plays the ETag's part for a resumed copy."""
        try:
            fd, path, st = await asyncio.to_thread(
                local_package.open_package_file,
                self.request.package_url,
                self.access.local_dirs,
                self.access.local_max_bytes,
            )
        except local_package.LocalPackageRefused as exc:
            raise UpdaterError(ErrorCode.DOWNLOAD_FAILED, f"package_url {exc}") from None
        try:
            size = self.request.package_size
            if st.st_size != size:
                raise UpdaterError(
                    ErrorCode.PACKAGE_SIZE_MISMATCH,
                    f"{path} is {st.st_size} bytes, the request said {size}",
                )
            validator = local_package.validator(st)
            if offset and validator != self.etag:
                await self.restart_from_zero(f"{path} changed since its copy began")
                offset = 0
            elif offset:
                self.log.info("download.resumed", offset=offset)
            self.etag, self.last_modified = validator, None
            await self.checkpoint(force=True)
            await self._copy_from(fd, path, offset, size)
        finally:
            os.close(fd)

    async def _copy_from(self, fd: int, path: Path, offset: int, size: int) -> None:
        s, sink = self.s, self.sink
        position, since_ckpt = offset, 0
        while position < size:
            try:
                data = await asyncio.to_thread(
                    os.pread, fd, min(s.chunk_size, size - position), position
                )
            except OSError as exc:  # a stick pulled out: EIO, ENODEV
                raise _Transient(f"cannot read {path}: {exc.strerror}") from None
            if not data:
                raise _Transient(f"{path} ended after {position} of {size} bytes", incomplete=True)
            await sink.feed([data], len(data))
            position += len(data)
            since_ckpt += len(data)
            now = time.monotonic()
            if (
                since_ckpt >= s.checkpoint_bytes
                or now - self._last_ckpt_time >= s.checkpoint_interval_s
            ) and self.checkpoint_in_background():
                since_ckpt = 0
            self.meter.update(sink.queued)

    async def _accept(self, resp: aiohttp.ClientResponse, offset: int) -> None:
        """Act on the response's judgement before a byte is written; set validators."""
        judged = judge_response(
            resp.status,
            resp.headers,
            offset=offset,
            size=self.request.package_size,
            etag=self.etag,
            last_modified=self.last_modified,
            # for error details: shown in /progress and the log
            url=redact_url(self.request.package_url),
            status_text=str(resp.reason),
        )
        if judged.discard is not None:
            await self.restart_from_zero(judged.discard)
        if judged.verdict is Verdict.FATAL:
            raise UpdaterError(judged.code, judged.reason)
        if judged.verdict is Verdict.TRANSIENT:
            exc = _Transient(judged.reason, retry_after=_parse_retry_after(judged.retry_after))
            exc.immediate = judged.immediate
            raise exc
        self.etag, self.last_modified = judged.etag, judged.last_modified
        if offset and resp.status == 206:
            self.log.info("download.resumed", offset=offset)
        # The validators must be durable before bytes that depend on them are.
        await self.checkpoint(force=True)

    async def _stream(self, resp: aiohttp.ClientResponse) -> None:
        """Copy the body into the sink with size guard, checkpoints and progress."""
        s, sink, size = self.s, self.sink, self.request.package_size
        batch: list[bytes] = []
        batch_len = 0
        since_ckpt = 0
        content = resp.content
        try:
            while True:
                # readchunk hands over each received buffer as is; readany would join them (a copy).
                data, end_of_http_chunk = await content.readchunk()
                if not data:
                    if end_of_http_chunk:
                        continue
                    break
                n = len(data)
                if sink.queued + batch_len + n > size:
                    raise UpdaterError(
                        ErrorCode.PACKAGE_SIZE_MISMATCH,
                        f"server sent more than the expected {size} bytes",
                    )
                batch.append(data)
                batch_len += n
                if batch_len >= s.chunk_size:
                    await sink.feed(batch, batch_len)
                    since_ckpt += batch_len
                    batch, batch_len = [], 0
                    now = time.monotonic()
                    if (
                        since_ckpt >= s.checkpoint_bytes
                        or now - self._last_ckpt_time >= s.checkpoint_interval_s
                    ) and self.checkpoint_in_background():
                        since_ckpt = 0
                    self.meter.update(sink.queued)
        except (aiohttp.ClientError, OSError, TimeoutError):
            # Bytes that arrived before the connection broke are good (TCP kept them in
            # order, the validator was accepted): keep them for the retry. Dropping the
            # pending batch lost up to chunk_size per failure, so a link breaking more often
            # than that never got anywhere.
            if batch:
                await sink.feed(batch, batch_len)
                self.meter.update(sink.queued)
            raise
        if batch:
            await sink.feed(batch, batch_len)
        self.meter.update(sink.queued)

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Attempt until the .part holds the package's size or the retry budget is spent."""
        attempts = 0
        started = time.monotonic()
        while self.sink.queued < self.request.package_size:
            attempts += 1
            try:
                await self.attempt(session)
                if self.sink.queued >= self.request.package_size:
                    break
                raise _Transient(
                    f"connection closed after {self.sink.queued} of"
                    f" {self.request.package_size} bytes",
                    incomplete=True,
                )
            except _Transient as exc:
                failure = exc
            except aiohttp.ClientPayloadError as exc:
                failure = _Transient(f"truncated response body: {exc}", incomplete=True)
            except (aiohttp.InvalidURL, aiohttp.TooManyRedirects) as exc:
                raise UpdaterError(
                    ErrorCode.DOWNLOAD_FAILED, f"{type(exc).__name__}: {exc}"
                ) from exc
            except TimeoutError:
                failure = _Transient("timed out (connect or read)")
            except aiohttp.ClientSSLError as exc:  # TLS: its own words are the useful ones
                failure = _Transient(f"{type(exc).__name__}: {exc}")
            except aiohttp.ClientConnectorError as exc:
                failure = _Transient(f"cannot connect to {exc.host}:{exc.port}: {_said(exc)}")
            except (aiohttp.ClientError, OSError) as exc:
                failure = _Transient(f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc))
            # Keep what arrived: durable now, so a crash during the backoff loses nothing.
            await self.checkpoint()
            if attempts >= self.s.max_attempts:
                self.log.warning("download.gave_up", attempts=attempts, reason=failure.reason)
                code = (
                    ErrorCode.INCOMPLETE_DOWNLOAD
                    if failure.incomplete
                    else ErrorCode.DOWNLOAD_FAILED
                )
                spent = said_seconds(time.monotonic() - started)
                tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
                raise UpdaterError(
                    code, f"{failure.reason} \N{EM DASH} {tries} over {spent}", retryable=True
                )
            delay = 0.0 if failure.immediate else self._backoff(attempts, failure.retry_after)
            self.meter.retrying(
                self.sink.queued, Retry(failure.reason, delay, attempts + 1, self.s.max_attempts)
            )
            self.log.info(
                "download.retry",
                attempt=attempts,
                reason=failure.reason,
                delay_s=round(delay, 3),
                offset=self.sink.queued,
            )
            await asyncio.sleep(delay)

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        """Exponential backoff with "equal jitter", raised to the server's Retry-After."""
        cap = min(self.s.backoff_max_s, self.s.backoff_base_s * 2.0 ** (attempts - 1))
        delay = cap / 2 + random.uniform(0, cap / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.s.retry_after_max_s))
        return delay


async def download_package(
    request: DownloadRequest,
    downloads_dir: Path,
    *,
    resume: ResumePoint | None,
    settings: DownloadSettings = DownloadSettings(),
    on_progress: Callable[[DownloadProgress], None] = _ignore_progress,
    on_checkpoint: Callable[[ResumePoint], Awaitable[None]] = _ignore_checkpoint,
    session: aiohttp.ClientSession | None = None,
    access: SourceAccess = SourceAccess(),
) -> DownloadResult:
    """Download ``request.package_url`` to ``package_path(downloads_dir, request.package_name)``.

    Args:
        request: URL, file name and expected size (digests are checked by verify, not here).
        downloads_dir: directory for the ``.part`` and the final file (created if missing).
        resume: the last :class:`ResumePoint` the caller journaled for this same package, or
            None for a fresh download (any stale ``.part``/final file is then discarded). The
            ``.part`` is truncated to ``resume.offset``; a shorter ``.part`` restarts from 0.
        settings: timeouts, retry budget, checkpoint and buffer sizes.
        on_progress: called at most every ``progress_interval_s`` and once at the end.
            ``bytes_done`` only grows, except after a restart from zero (changed file).
        on_checkpoint: awaited with each new durable :class:`ResumePoint` (journal it); also
            once right after the response headers, so the validators are durable.
        session: an aiohttp session to use (not closed); None creates a private one.
        access: headers and TLS trust the package server needs (a fleet server's token).

    Returns:
        The final path, size, MD5 and SHA-256 of what was written.

    Raises:
        UpdaterError: ``DOWNLOAD_FAILED`` (fatal HTTP status, or the retry budget spent:
            ``retryable=True``), ``INCOMPLETE_DOWNLOAD`` (body kept ending short; retryable),
            ``PACKAGE_SIZE_MISMATCH`` (server size differs from ``request.package_size``; the
            ``.part`` is removed), ``DISK_FULL`` (before starting, or ENOSPC while writing; the
            ``.part`` is kept for a resume).
        asyncio.CancelledError: promptly; the ``.part`` is kept (see :func:`discard_download`).
    """
    part = part_path(downloads_dir, request.package_name)
    final = package_path(downloads_dir, request.package_name)
    log = _log.bind(package=request.package_name, url=redact_url(request.package_url))
    await asyncio.to_thread(downloads_dir.mkdir, parents=True, exist_ok=True)

    if await asyncio.to_thread(final.exists):
        # A previous run of this same job finished the rename but died before the caller
        # recorded it: the package is complete (verify re-checks its digests).
        if (
            resume is not None
            and (await asyncio.to_thread(final.stat)).st_size == request.package_size
        ):
            log.info("download.already_complete", path=str(final))
            digests = await hash_file(final)
            return DownloadResult(final, digests.size, digests.md5, digests.sha256)
        await asyncio.to_thread(durable.remove_file, final)

    want = resume.offset if resume is not None and 0 < resume.offset <= request.package_size else 0
    etag = resume.etag if resume is not None and want else None
    last_modified = resume.last_modified if resume is not None and want else None
    job = _Download(
        request, part, settings, on_progress, on_checkpoint, etag, last_modified, access
    )
    try:
        try:
            offset = await job.sink.open(want)
        except _DiskWriteError as exc:
            raise _disk_error(exc, part) from exc
        if offset != want:
            log.warning("download.resume_lost", wanted=want, part_size_short=True)
            job.etag = job.last_modified = None
        _check_disk_space(downloads_dir, request, offset, settings)
        log.info("download.start", offset=offset, size=request.package_size)
        job.meter.update(offset, force=True)

        own_session = session is None
        http = session or aiohttp.ClientSession(auto_decompress=False)
        try:
            await job.run(http)
        finally:
            if own_session:
                await http.close()

        md5, sha256 = await job.sink.digests()
        await job.checkpoint()
        await job.sink.aclose()
    except _DiskWriteError as exc:
        job.abandon()
        job.sink.close()
        raise _disk_error(exc, part) from exc
    except UpdaterError as exc:
        job.abandon()
        job.sink.close()
        if exc.code is ErrorCode.PACKAGE_SIZE_MISMATCH:
            # The server is serving something else: nothing here is worth resuming.
            await asyncio.to_thread(durable.remove_file, part)
        raise
    except BaseException:
        job.abandon()
        job.sink.close()  # cancellation included: the .part stays for a resume
        raise

    faults.crash_point("download:before_rename")
    await asyncio.to_thread(_publish, part, final)
    faults.crash_point("download:after_rename")
    job.meter.update(request.package_size, force=True)
    log.info("download.done", path=str(final), size=request.package_size, md5=md5)
    return DownloadResult(final, request.package_size, md5, sha256)


def _publish(part: Path, final: Path) -> None:
    """Rename the finished .part to its final name and make the rename durable."""
    os.replace(part, final)
    durable.fsync_dir(final.parent)
