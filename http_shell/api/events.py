"""``GET /api/v1.0/events``: the progress snapshot as a Server-Sent Events stream.

Each change is one ``event: progress`` whose ``data:`` line is the JSON of
:meth:`~updater_fsm.core.progress.Snapshot.data` (the ``/progress`` data object) and whose ``id:``
is the record's sequence number; the stream starts with the current snapshot. A comment
line (``: ping``) is sent when nothing happened for ``heartbeat_s`` so proxies and clients
can tell a quiet stream from a dead one. The stream ends when the client goes away or the
server shuts down (:func:`close_streams` from the app's ``on_shutdown``).

Each stream holds a socket (a file descriptor) and a subscription for as long as the client
wants, so at most ``limit`` of :class:`StreamSlots` are open at once (default
:data:`MAX_EVENT_STREAMS`); one more is answered at once with HTTP 503 and the envelope
code 503 ``TOO_MANY_CLIENTS: …`` instead of letting idle clients exhaust the process's
descriptors (1,030 idle streams used to stall the API and fail a running download with
EMFILE).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Coroutine
from typing import Any

import structlog
from aiohttp import web

from updater_fsm.control import ErrorCode, Snapshot, UpdaterControl

_log = structlog.get_logger(__name__)

#: Set on shutdown; every open stream watches it and ends.
SHUTDOWN: web.AppKey[asyncio.Event] = web.AppKey("sse_shutdown", asyncio.Event)
#: Event streams open at once, by default. Far more than the GUI, device-api and a few
#: ``--watch`` CLIs need; far fewer than the unit's descriptor limit.
MAX_EVENT_STREAMS = 32
#: Seconds a refused client is asked to wait (``Retry-After``).
RETRY_AFTER_S = 10


class StreamSlots:
    """How many event streams are open, out of ``limit``."""

    def __init__(self, limit: int = MAX_EVENT_STREAMS) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> bool:
        """Claim a slot; False when all ``limit`` are in use."""
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1


SLOTS: web.AppKey[StreamSlots] = web.AppKey("sse_slots", StreamSlots)


def too_many_clients(limit: int) -> web.Response:
    """The refusal of one stream too many: HTTP 503, envelope code 503."""
    return web.json_response(
        {
            "code": 503,
            "msg": f"{ErrorCode.TOO_MANY_CLIENTS.value}: {limit} event streams are open"
            " already (the limit); poll GET /progress or retry later",
            "data": None,
        },
        status=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def format_event(snap: Snapshot) -> bytes:
    """One SSE message for ``snap``."""
    data = json.dumps(snap.data(), separators=(",", ":"))
    return f"id: {snap.seq}\nevent: progress\ndata: {data}\n\n".encode()


async def close_streams(app: web.Application) -> None:
    """``on_shutdown`` hook: make every open stream end so the server can stop promptly."""
    app[SHUTDOWN].set()


async def stream_events(
    request: web.Request, engine: UpdaterControl, *, heartbeat_s: float
) -> web.StreamResponse:
    """Serve the SSE stream until the client disconnects or the app shuts down."""
    slots = request.app[SLOTS]
    if not slots.take():
        return too_many_clients(slots.limit)
    try:
        return await _stream(request, engine, heartbeat_s)
    finally:
        slots.give_back()


async def _stream(
    request: web.Request, engine: UpdaterControl, heartbeat_s: float
) -> web.StreamResponse:
    shutdown = request.app[SHUTDOWN]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # a reverse proxy must not hold events back
        }
    )
    # Subscribe before reading the current snapshot so no change can fall in between.
    subscription = engine.subscribe(maxsize=64)
    try:
        await response.prepare(request)
        last = engine.snapshot
        last_data = last.data()
        await response.write(format_event(last))
        while not shutdown.is_set():
            snap = await _next_or_none(subscription.get(), shutdown, heartbeat_s)
            if snap is None:
                if not shutdown.is_set():
                    await response.write(b": ping\n\n")
                continue
            data = snap.data()
            if data == last_data:
                continue  # only internal fields changed (e.g. seq): nothing to show
            last_data = data
            await response.write(format_event(snap))
    except (ConnectionResetError, ConnectionError):
        _log.debug("event stream client went away")
    finally:
        subscription.close()
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write_eof()
    return response


async def _next_or_none(
    get: Coroutine[Any, Any, Snapshot], shutdown: asyncio.Event, wait_s: float
) -> Snapshot | None:
    """The next snapshot, or None on timeout or shutdown."""
    getter = asyncio.ensure_future(get)
    stopper = asyncio.ensure_future(shutdown.wait())
    try:
        await asyncio.wait({getter, stopper}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (getter, stopper):
            if not task.done():
                task.cancel()  # cancelling Queue.get() loses no item
    if getter.done() and not getter.cancelled():
        return getter.result()
    return None
