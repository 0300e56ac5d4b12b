"""``GET /events``: Server-Sent Events of the progress snapshot."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import ClientResponse

from http_shell.api.events import MAX_EVENT_STREAMS, SHUTDOWN
from tests.http_shell.conftest import API, ClientFactory, Rig, body, call
from updater_fsm.core.progress import Transfer


async def _message(resp: ClientResponse, timeout: float = 3.0) -> list[str]:
    """The lines of the next SSE message (up to the blank line)."""
    lines: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            raw = await resp.content.readline()
            assert raw, "stream ended"
            line = raw.decode().rstrip("\n")
            if not line:
                return lines
            lines.append(line)


def _data(lines: list[str]) -> dict[str, Any]:
    assert "event: progress" in lines, lines
    (data,) = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    parsed: dict[str, Any] = json.loads(data)
    return parsed


async def test_stream_starts_with_current_snapshot_then_follows_changes(
    make_client: ClientFactory, rig: Rig
) -> None:
    client = await make_client(sse_heartbeat_s=30.0)
    resp = await client.get(API + "/events")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    first = _data(await _message(resp))
    assert first == rig.engine.snapshot.data()
    assert first["stage"] == "idle"

    await call(client, "POST", "/download", json=body())
    second = _data(await _message(resp))
    assert (second["stage"], second["progress"]) == ("downloading", 0)

    rig.engine.update_transfer(Transfer(rig.job_id, 470, 1000, speed_bps=1e6))
    third = _data(await _message(resp))
    assert (third["progress"], third["bytes_downloaded"]) == (47, 470)
    resp.close()


async def test_heartbeat_and_shutdown_end_the_stream(make_client: ClientFactory) -> None:
    client = await make_client(sse_heartbeat_s=0.05)
    resp = await client.get(API + "/events")
    await _message(resp)
    assert await _message(resp) == [": ping"]
    await client.app.shutdown()  # runs the on_shutdown hooks, as the server's cleanup does
    assert client.app[SHUTDOWN].is_set()
    async with asyncio.timeout(3):
        rest = await resp.content.read()  # returns once the server ended the stream
    assert rest in (b"", b": ping\n\n")


async def test_client_going_away_unsubscribes(make_client: ClientFactory, rig: Rig) -> None:
    client = await make_client(sse_heartbeat_s=0.05)
    before = len(rig.engine._subscribers)
    resp = await client.get(API + "/events")
    await _message(resp)
    assert len(rig.engine._subscribers) == before + 1
    resp.close()
    async with asyncio.timeout(3):
        while len(rig.engine._subscribers) != before:
            await asyncio.sleep(0.02)


async def test_streams_beyond_the_cap_are_refused_promptly_and_the_rest_keeps_working(
    make_client: ClientFactory, rig: Rig
) -> None:
    """Idle clients holding streams open must not exhaust the updater's descriptors: the
    33rd stream and after are answered 503 at once, /progress stays fast, and the 32 open
    streams still get every change."""
    client = await make_client(sse_heartbeat_s=30.0)
    assert MAX_EVENT_STREAMS == 32
    streams = []
    for _ in range(MAX_EVENT_STREAMS):
        resp = await client.get(API + "/events")
        assert resp.status == 200
        await _message(resp)  # the first snapshot: the stream is really open
        streams.append(resp)
    for _ in range(8):
        started = time.perf_counter()
        extra = await client.get(API + "/events")
        assert time.perf_counter() - started < 1.0
        assert extra.status == 503
        assert extra.headers["Retry-After"] == "10"
        env = await extra.json()
        assert env["code"] == 503 and env["data"] is None
        assert env["msg"].startswith("TOO_MANY_CLIENTS: 32 event streams are open already")
    started = time.perf_counter()
    assert (await call(client, "GET", "/progress"))["code"] == 200
    assert time.perf_counter() - started < 0.5

    await call(client, "POST", "/download", json=body())
    for resp in streams:
        assert _data(await _message(resp))["stage"] == "downloading"

    streams.pop().close()  # a slot comes free once a client goes away
    async with asyncio.timeout(3):
        while True:
            again = await client.get(API + "/events")
            if again.status == 200:
                break
            again.release()
            await asyncio.sleep(0.02)
    assert _data(await _message(again))["stage"] == "downloading"
    for resp in (*streams, again):
        resp.close()


async def test_events_need_the_token_when_one_is_set(make_client: ClientFactory) -> None:
    client = await make_client(api_token="s3cret", sse_heartbeat_s=30.0)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        resp = await client.get(API + "/events", headers=headers)
        assert resp.status == 401
        assert (await resp.json())["msg"].startswith("UNAUTHORIZED: ")
    resp = await client.get(API + "/events", headers={"Authorization": "Bearer s3cret"})
    assert resp.status == 200
    assert _data(await _message(resp))["stage"] == "idle"
    resp.close()
    assert (await call(client, "GET", "/progress"))["code"] == 200  # polling stays open
    doc = await (await client.get(API + "/openapi.json")).json()
    assert doc["paths"]["/events"]["get"]["security"] == [{"bearerAuth": []}]
