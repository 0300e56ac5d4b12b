"""A stand-in for device-api: a real aiohttp server on loopback that records reports.

``POST /api/v1.0/ota/report`` bodies are appended to :attr:`DeviceApi.reports` and answered
``{"code": 200, …}``, or with :attr:`DeviceApi.status` when a test makes it misbehave.
Use the ``device_api`` fixture (``from tests.support.device_api import device_api``), or
:func:`start_device_api` to bring one up later on a chosen port (device-api down, then up).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

REPORT_PATH = "/api/v1.0/ota/report"


class DeviceApi:
    """The running mock.

    Attributes:
        reports: every report body received (also those answered with an error status).
        status: HTTP status to answer with (200 = accept).
        delay_s: wait this long before answering (a slow device-api).
        arrived: requests received so far, counted before the delay (one may be in flight).
        huge_answer_bytes: when set, answer with a body of this many bytes, generated
            lazily in 64 KiB chunks (a misbehaving device-api; nothing is held in memory).
        answer_bytes_sent: body bytes of such huge answers actually written to the socket.
        redirect_to: when set, answer every report with ``307`` to this URL (a device-api
            that tries to send the updater's reports elsewhere).
    """

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self._ok: list[bool] = []
        self.status = 200
        self.delay_s = 0.0
        self.arrived = 0
        self.huge_answer_bytes: int | None = None
        self.answer_bytes_sent = 0
        self.redirect_to: str | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """Reports answered with 200 (what device-api actually took in)."""
        return [r for r, ok in zip(self.reports, self._ok, strict=True) if ok]

    async def _huge_answer(self, request: web.Request, size: int) -> web.StreamResponse:
        response = web.StreamResponse(
            status=self.status,
            headers={"Content-Type": "application/json", "Content-Length": str(size)},
        )
        await response.prepare(request)
        chunk = b" " * 65536
        try:
            while self.answer_bytes_sent < size:  # one huge answer per test
                piece = chunk[: size - self.answer_bytes_sent]
                await response.write(piece)
                self.answer_bytes_sent += len(piece)
        except (ConnectionError, RuntimeError):
            pass  # the client stopped reading and closed the connection: what we hope for
        return response

    async def _report(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.arrived += 1
        status = 307 if self.redirect_to else self.status
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.reports.append(body)
        self._ok.append(status == 200)
        async with self._changed:
            self._changed.notify_all()
        if self.redirect_to:
            raise web.HTTPTemporaryRedirect(self.redirect_to)
        if self.huge_answer_bytes is not None:
            return await self._huge_answer(request, self.huge_answer_bytes)
        return web.json_response({"code": status, "msg": "ok", "data": None}, status=status)

    async def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """Wait until ``predicate(accepted reports)`` holds; return the accepted reports."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self.accepted))
        return self.accepted

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post(REPORT_PATH, self._report)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{bound}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_device_api(port: int = 0) -> DeviceApi:
    """Start a mock device-api on ``port`` (0 = any free port)."""
    api = DeviceApi()
    await api.start(port)
    return api


@pytest.fixture
async def device_api() -> AsyncIterator[DeviceApi]:
    """A running mock device-api; stopped after the test."""
    api = await start_device_api()
    yield api
    await api.stop()
