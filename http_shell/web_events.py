"""``GET /api/v1.0/events``: the progress snapshot as a Server-Sent Events stream.

Each change is one ``event: progress`` whose ``data:`` line is the JSON of
:meth:`~updater_fsm.core.progress.Snapshot.data` (the ``/progress`` data object) and whose ``id:``
is the record's sequence number; the stream starts with the current snapshot. A comment
line (``: ping``) is sent when nothing happened for ``heartbeat_s`` so proxies and clients
can tell a quiet stream from a dead one. The stream ends when the client goes away or the
server shuts down (:func:`close_streams` from the app's ``on_shutdown``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Coroutine
from typing import Any

import structlog
from aiohttp import web

from updater_fsm.control import Snapshot, UpdaterControl

_log = structlog.get_logger(__name__)

#: Set on shutdown; every open stream watches it and ends.
SHUTDOWN: web.AppKey[asyncio.Event] = web.AppKey("sse_shutdown", asyncio.Event)


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
