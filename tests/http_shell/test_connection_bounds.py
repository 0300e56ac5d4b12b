"""Bounded connections (issue 22): the header deadline and the connection cap of the
runner ``serve`` uses (:mod:`http_shell.api.low_level`), on real loopback sockets.

The flood of a real ``serve`` process at a lowered descriptor limit is in
``tests/e2e/test_connection_flood.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from http_shell.api.app import create_app
from http_shell.api.low_level import (
    FD_RESERVE,
    MAX_CONNECTIONS,
    MIN_CONNECTIONS,
    EnvelopeAppRunner,
    connection_cap,
)
from tests.http_shell.conftest import Rig
from updater_fsm.config import Config

PROGRESS = b"GET /api/v1.0/progress HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.mark.parametrize(
    ("nofile", "cap"),
    [
        (16384, MAX_CONNECTIONS),
        (1024, MAX_CONNECTIONS),
        (256, 256 - FD_RESERVE),
        (64, MIN_CONNECTIONS),
    ],
)
def test_connection_cap_keeps_a_descriptor_reserve(nofile: int, cap: int) -> None:
    assert connection_cap(nofile) == cap


class Served:
    def __init__(self, runner: EnvelopeAppRunner, port: int) -> None:
        self.runner = runner
        self.port = port

    @property
    def server(self) -> Any:
        return self.runner.server


async def _serve(rig: Rig, **bounds: Any) -> AsyncIterator[Served]:
    runner = EnvelopeAppRunner(create_app(Config(root=rig.root), rig.engine), **bounds)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield Served(runner, runner.addresses[0][1])
    finally:
        await runner.cleanup()


@pytest.fixture
async def deadline_half_s(rig: Rig) -> AsyncIterator[Served]:
    async for served in _serve(rig, header_timeout_s=0.5):
        yield served


@pytest.fixture
async def cap_8(rig: Rig) -> AsyncIterator[Served]:
    async for served in _serve(rig, max_connections=8):
        yield served


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closed the connection (EOF or reset); fails after
    ``seconds``."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            assert await reader.read() == b""
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"connection still open after {seconds} s")
    return time.monotonic() - started


async def _answer(reader: asyncio.StreamReader) -> dict[str, Any]:
    """One response off a keep-alive connection: its JSON envelope."""
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    env: dict[str, Any] = json.loads(await reader.readexactly(length))
    return env


async def test_a_half_sent_request_line_is_closed_at_the_header_deadline(
    deadline_half_s: Served,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", deadline_half_s.port)
    writer.write(b"GET /api/v1.0/prog")
    await writer.drain()
    took = await _closed_within(reader, 5.0)
    writer.close()
    assert 0.3 < took < 2.0, took
    assert deadline_half_s.server.late == 1


async def test_a_silent_connection_is_closed_at_the_header_deadline(
    deadline_half_s: Served,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", deadline_half_s.port)
    await _closed_within(reader, 5.0)
    writer.close()


async def test_the_deadline_spares_a_connection_that_sent_its_request(
    deadline_half_s: Served,
) -> None:
    """Keep-alive after a first request is aiohttp's keep-alive timeout's business."""
    reader, writer = await asyncio.open_connection("127.0.0.1", deadline_half_s.port)
    try:
        writer.write(PROGRESS)
        assert (await _answer(reader))["code"] == 200
        await asyncio.sleep(1.0)  # twice the header deadline
        writer.write(PROGRESS)
        async with asyncio.timeout(5):
            assert (await _answer(reader))["code"] == 200
    finally:
        writer.close()
    assert deadline_half_s.server.late == 0


async def test_silent_connections_beyond_the_cap_make_room_for_a_client(cap_8: Served) -> None:
    """30 silent connections against a cap of 8: the oldest are evicted, the newest client
    (one that asks at once) is answered."""
    silent = [await asyncio.open_connection("127.0.0.1", cap_8.port) for _ in range(30)]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", cap_8.port)
        writer.write(PROGRESS)
        async with asyncio.timeout(5):
            assert (await _answer(reader))["code"] == 200
        writer.close()
        for r, _ in silent[:20]:  # the oldest: evicted
            await _closed_within(r, 5.0)
        assert cap_8.server.evicted >= 22
        assert len(cap_8.server.connections) <= 8 + 1
    finally:
        for _, w in silent:
            w.close()


async def test_beyond_a_cap_of_busy_connections_a_new_one_is_closed_at_once(
    cap_8: Served,
) -> None:
    """Connections that sent a request are never evicted: with 8 of them open, the 9th
    connection is closed at once."""
    busy = [await asyncio.open_connection("127.0.0.1", cap_8.port) for _ in range(8)]
    try:
        for reader, writer in busy:
            writer.write(PROGRESS)
            async with asyncio.timeout(5):
                assert (await _answer(reader))["code"] == 200
        reader, writer = await asyncio.open_connection("127.0.0.1", cap_8.port)
        assert await _closed_within(reader, 2.0) < 1.0
        writer.close()
        assert cap_8.server.refused == 1
        for reader, writer in busy:  # still served
            writer.write(PROGRESS)
            async with asyncio.timeout(5):
                assert (await _answer(reader))["code"] == 200
    finally:
        for _, w in busy:
            w.close()
