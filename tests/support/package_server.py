"""A real, deliberately misbehaving HTTP package server for tests, crash tests and benches.

It is an aiohttp server on ``127.0.0.1`` (random port by default) that serves registered
blobs and can be told, per file or per request, to behave badly: ignore ``Range``, ignore
``If-Range``, drop the connection after N bytes, stall, announce a wrong ``Content-Length``,
send more bytes than announced or never stop, change the file between attempts, answer an
error status (404/500/429 with ``Retry-After``/416…), or redirect. Every request is logged
with the ``Range`` / ``If-Range`` headers seen, the status and the body bytes sent, so a test
can prove that bytes already on disk were not fetched again.

Three ways to use it:

* pytest: ask for the ``package_server`` fixture (an already started :class:`PackageServer`)::

      url = package_server.add("pkg.zip", data)

* inside an existing event loop: ``async with PackageServer() as srv: ...``;
* from synchronous code or another process: :class:`ThreadedPackageServer` (runs its own
  loop in a daemon thread), or ``python -m tests.support.package_server FILE... --port P``.

Per-request scripts: ``srv.script(name, Behaviour(status=500), Behaviour())`` makes the next
request answer 500 and the one after behave normally; once the script is used up, the file's
default behaviour (given to :meth:`PackageServer.add` or :meth:`PackageServer.set_behaviour`)
applies again.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import email.utils
import mmap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType

import attrs
import pytest_asyncio
from aiohttp import web

_SEND_CHUNK = 256 * 1024


@attrs.frozen(kw_only=True)
class Behaviour:
    """How the server answers one request for a file (all defaults = a correct server).

    Attributes:
        status: answer this status with a short text body instead of the file (e.g. 404,
            500, 429, 416). 3xx is not special-cased; use :meth:`PackageServer.url` with
            ``redirects`` for redirects.
        retry_after: value of a ``Retry-After`` header to add (with ``status``).
        support_range: honour ``Range`` (else always answer 200 with the whole file).
        honour_if_range: honour ``If-Range`` (else serve the range even if the validator is
            stale, i.e. the server splices — only for negative tests).
        send_validators: send ``ETag`` and ``Last-Modified``.
        content_length: announce this ``Content-Length`` instead of the true one (the body
            is still the true one, cut short if the announced value is smaller).
        omit_content_length: send the body chunked, without ``Content-Length``.
        drop_after: abort the connection after sending this many body bytes.
        stall_after: after this many body bytes, stop sending for ``stall_s`` seconds.
        stall_s: see ``stall_after``.
        extra_bytes: after the announced body, write this many junk bytes to the socket.
        endless: ignore the file size and send junk (chunked) until the client hangs up.
        rate_bps: throttle the body to about this many bytes per second.
        replace_with: replace the file's content (new ETag/Last-Modified) before answering.
    """

    status: int | None = None
    retry_after: str | None = None
    support_range: bool = True
    honour_if_range: bool = True
    send_validators: bool = True
    content_length: int | None = None
    omit_content_length: bool = False
    drop_after: int | None = None
    stall_after: int | None = None
    stall_s: float = 0.0
    extra_bytes: int = 0
    endless: bool = False
    rate_bps: float | None = None
    replace_with: bytes | None = None


@attrs.frozen
class RequestRecord:
    """One request as the server saw and answered it."""

    name: str
    method: str
    range: str | None
    if_range: str | None
    status: int
    bytes_sent: int


@attrs.define
class _File:
    data: bytes | mmap.mmap
    etag: str
    last_modified: str
    behaviour: Behaviour
    script: collections.deque[Behaviour] = attrs.field(factory=collections.deque)


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse a single ``bytes=`` range into ``(start, end_inclusive)``; None if unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if not first:
            length = int(last)
            return (max(0, size - length), size - 1) if length > 0 and size else None
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


class PackageServer:
    """Serves registered blobs over HTTP on 127.0.0.1 with scriptable misbehaviour.

    Args:
        host: address to bind.
        port: port to bind; 0 picks a free one.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._files: dict[str, _File] = {}
        self._generation = 0
        self.log: list[RequestRecord] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind and start serving; sets :attr:`base_url`."""
        app = web.Application()
        app.router.add_route("*", "/files/{name}", self._handle_file)
        app.router.add_get("/redirect/{hops}/{name}", self._handle_redirect)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://{self._host}:{port}"

    async def close(self) -> None:
        """Stop serving and release mapped files."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for f in self._files.values():
            if isinstance(f.data, mmap.mmap):
                with contextlib.suppress(BufferError):
                    f.data.close()

    async def __aenter__(self) -> PackageServer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- content ---------------------------------------------------------------------------
    def add(self, name: str, data: bytes, behaviour: Behaviour | None = None) -> str:
        """Serve ``data`` as ``name``; returns its URL. Re-adding replaces it (new ETag)."""
        self._store(name, data, behaviour)
        return self.url(name)

    def add_file(self, name: str, path: Path, behaviour: Behaviour | None = None) -> str:
        """Serve the file at ``path`` (memory-mapped, so big files cost no RAM); returns URL."""
        with path.open("rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self._store(name, mapped, behaviour)
        return self.url(name)

    def replace(self, name: str, data: bytes) -> None:
        """Change a file's content, as a re-published package would: new ETag/Last-Modified."""
        self._store(name, data, self._files[name].behaviour)

    def _store(self, name: str, data: bytes | mmap.mmap, behaviour: Behaviour | None) -> None:
        self._generation += 1
        old = self._files.get(name)
        # Last-Modified has one-second resolution: make every generation distinct.
        ts = time.time() + self._generation
        self._files[name] = _File(
            data=data,
            etag=f'"{name}-g{self._generation}"',
            last_modified=_http_date(ts),
            behaviour=behaviour or (old.behaviour if old else Behaviour()),
            script=old.script if old else collections.deque(),
        )

    def set_behaviour(self, name: str, behaviour: Behaviour) -> None:
        """Set the default behaviour of ``name`` (used once its script is empty)."""
        self._files[name].behaviour = behaviour

    def script(self, name: str, *steps: Behaviour) -> None:
        """Queue one-shot behaviours: the next ``len(steps)`` requests use them in order."""
        self._files[name].script.extend(steps)

    def url(self, name: str, *, redirects: int = 0) -> str:
        """The URL of ``name``; with ``redirects`` > 0, one that 302-redirects that often."""
        if redirects:
            return f"{self.base_url}/redirect/{redirects}/{name}"
        return f"{self.base_url}/files/{name}"

    def etag(self, name: str) -> str:
        """The current ETag of ``name``."""
        return self._files[name].etag

    # -- stats -----------------------------------------------------------------------------
    def requests(self, name: str) -> list[RequestRecord]:
        """All requests for ``name`` so far, oldest first (redirect hops not included)."""
        return [r for r in self.log if r.name == name]

    def bytes_sent(self, name: str) -> int:
        """Total body bytes sent for ``name`` over all requests."""
        return sum(r.bytes_sent for r in self.requests(name))

    # -- handlers --------------------------------------------------------------------------
    async def _handle_redirect(self, request: web.Request) -> web.StreamResponse:
        hops = int(request.match_info["hops"])
        name = request.match_info["name"]
        raise web.HTTPFound(self.url(name, redirects=hops - 1))

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        rng = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        f = self._files.get(name)
        if f is None:
            self.log.append(RequestRecord(name, request.method, rng, if_range, 404, 0))
            return web.Response(status=404, text="not found")
        b = f.script.popleft() if f.script else f.behaviour
        if b.replace_with is not None:
            self._store(name, b.replace_with, None)
            f = self._files[name]
        record = _Recorder(self, name, request.method, rng, if_range)
        try:
            return await self._answer(request, f, b, record)
        finally:
            record.commit()

    async def _answer(
        self, request: web.Request, f: _File, b: Behaviour, rec: _Recorder
    ) -> web.StreamResponse:
        if b.status is not None:
            extra = {"Retry-After": b.retry_after} if b.retry_after else {}
            rec.status = b.status
            return web.Response(status=b.status, text=f"status {b.status}", headers=extra)
        size = len(f.data)
        start, end, status = 0, size - 1, 200
        headers: dict[str, str] = {"Accept-Ranges": "bytes" if b.support_range else "none"}
        if b.send_validators:
            headers["ETag"] = f.etag
            headers["Last-Modified"] = f.last_modified
        rng = rec.range
        validator_ok = rec.if_range is None or rec.if_range in (f.etag, f.last_modified)
        if rng and b.support_range and (validator_ok or not b.honour_if_range):
            parsed = _parse_range(rng, size)
            if parsed is None:
                rec.status = 416
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        body_len = end - start + 1
        resp = web.StreamResponse(status=status, headers=headers)
        if b.endless or b.omit_content_length:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = b.content_length if b.content_length is not None else body_len
            body_len = min(body_len, resp.content_length)
        rec.status = status
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        await self._send_body(request, resp, f, b, start, body_len, rec)
        return resp

    async def _send_body(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        f: _File,
        b: Behaviour,
        start: int,
        body_len: int,
        rec: _Recorder,
    ) -> None:
        view = memoryview(f.data)
        sent = 0
        stalled = False
        t0 = time.monotonic()
        while b.endless or sent < body_len:
            n = _SEND_CHUNK if b.endless else min(_SEND_CHUNK, body_len - sent)
            if b.drop_after is not None:
                n = min(n, b.drop_after - sent)
            if b.stall_after is not None and not stalled:
                if sent >= b.stall_after:
                    stalled = True
                    await asyncio.sleep(b.stall_s)
                    continue
                n = min(n, b.stall_after - sent)
            if n <= 0:  # drop_after reached
                break
            if b.endless:
                chunk: bytes | memoryview = b"\xa5" * n
            else:
                chunk = view[start + sent : start + sent + n]
            await resp.write(chunk)
            sent += n
            rec.bytes_sent = sent
            if b.rate_bps:
                ahead = sent / b.rate_bps - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        transport = request.transport
        if b.drop_after is not None and sent >= b.drop_after and transport is not None:
            transport.abort()  # a reset mid-body: the client sees a truncated payload
            return
        if b.extra_bytes and transport is not None:
            transport.write(b"\x5a" * b.extra_bytes)
            rec.bytes_sent = sent + b.extra_bytes
        await resp.write_eof()


class _Recorder:
    """Accumulates one request's outcome and appends it to the server log exactly once."""

    def __init__(
        self, srv: PackageServer, name: str, method: str, rng: str | None, if_range: str | None
    ) -> None:
        self._srv = srv
        self.name = name
        self.method = method
        self.range = rng
        self.if_range = if_range
        self.status = 0
        self.bytes_sent = 0

    def commit(self) -> None:
        self._srv.log.append(
            RequestRecord(
                self.name, self.method, self.range, self.if_range, self.status, self.bytes_sent
            )
        )


class ThreadedPackageServer:
    """A :class:`PackageServer` running its own event loop in a daemon thread.

    For synchronous callers (crash-test harness, benches). ``server`` is the inner
    :class:`PackageServer`; call its ``add``/``script``/``replace`` via :meth:`call` so they run
    on the server's loop (plain attribute reads such as ``log`` are fine from any thread).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = PackageServer(host, port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> ThreadedPackageServer:
        """Start the thread and the server; returns self."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self

    def call(self, fn: object, *args: object) -> object:
        """Run ``fn(*args)`` on the server's loop and return its result."""
        assert callable(fn)

        async def run() -> object:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def stop(self) -> None:
        """Stop the server and its thread."""
        asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> ThreadedPackageServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@pytest_asyncio.fixture
async def package_server() -> AsyncIterator[PackageServer]:
    """A started :class:`PackageServer` on 127.0.0.1 (random port), closed after the test."""
    async with PackageServer() as srv:
        yield srv


@contextlib.contextmanager
def serving(files: dict[str, bytes]) -> Iterator[ThreadedPackageServer]:
    """Sync helper: serve ``files`` from a background thread for the ``with`` block."""
    with ThreadedPackageServer() as srv:
        for name, data in files.items():
            srv.call(srv.server.add, name, data)
        yield srv


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.support.package_server FILE... [--port P] [--rate BPS]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate", type=float, default=None, help="throttle, bytes/s")
    args = parser.parse_args(argv)

    async def run() -> None:
        async with PackageServer(args.host, args.port) as srv:
            for path in args.files:
                print(srv.add_file(path.name, path, Behaviour(rate_bps=args.rate)), flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
