"""Follow the updater: ``GET /events`` (SSE), reconnecting, polling ``/progress`` as a fallback.

A small async client with one job: call ``on_update(snapshot, link)`` whenever the snapshot
or the connection changes, forever (until cancelled).

* The event stream is preferred: every ``event: progress`` carries the whole ``/progress``
  data object. The server sends a ``: ping`` comment when quiet, so a read timeout means a
  dead connection.
* When the stream ends or cannot be opened because the updater is down or restarting, the
  last snapshot stays and the link becomes :attr:`~screen.view.Link.RECONNECTING`; it tries
  again after a short backoff (an updater restarting mid-install is not an error).
* When the updater answers but the stream is unavailable (``503 TOO_MANY_CLIENTS``, a
  ``401`` because the token is missing, a proxy without streaming, an old updater without
  ``/events``), it polls ``GET /progress`` every ``poll_s`` (500 ms) and tries the stream
  again every ``retry_stream_s``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from screen.view import Link

API_PREFIX = "/api/v1.0"
Update = Callable[[Mapping[str, Any] | None, Link], None]


class StreamUnavailable(Exception):
    """The updater answered, but not with an event stream."""


class Follower:
    """Feed ``on_update`` with the updater's snapshots.

    Args:
        base_url: ``http://host:port`` of the updater (the host must be one it serves).
        on_update: called with the latest snapshot (None before the first) and the link.
        token: bearer token (``/events`` needs it when the updater has an ``api_token``).
        poll_s: the polling period when the stream is unavailable.
        retry_stream_s: while polling, how often to try the stream again.
        read_timeout_s: silence on the stream after which the connection counts as dead
            (the updater pings every 15 s).
        backoff_s: (first, longest) wait between attempts to reach an unreachable updater.
    """

    def __init__(
        self,
        base_url: str,
        on_update: Update,
        *,
        token: str | None = None,
        poll_s: float = 0.5,
        retry_stream_s: float = 10.0,
        read_timeout_s: float = 40.0,
        backoff_s: tuple[float, float] = (0.25, 2.0),
    ) -> None:
        self.base = base_url.rstrip("/") + API_PREFIX
        self._on_update = on_update
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.poll_s = poll_s
        self.retry_stream_s = retry_stream_s
        self.read_timeout_s = read_timeout_s
        self.backoff_s = backoff_s
        self.last: Mapping[str, Any] | None = None
        self.link = Link.CONNECTING
        #: how the last snapshot arrived: "events" or "poll" (for tests and the log)
        self.mode = "events"

    def _publish(self, snap: Mapping[str, Any] | None, link: Link) -> None:
        if snap == self.last and link is self.link:
            return
        self.last, self.link = snap, link
        self._on_update(snap, link)

    def _lost(self) -> None:
        self._publish(self.last, Link.RECONNECTING if self.last is not None else Link.CONNECTING)

    async def run(self) -> None:
        """Follow until cancelled."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=self.read_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers) as session:
            delay = self.backoff_s[0]
            while True:
                try:
                    try:
                        self.mode = "events"
                        await self._stream(session)
                    except StreamUnavailable:
                        self.mode = "poll"
                        await self._poll(session)
                        delay = self.backoff_s[0]
                        continue  # polled for a while: try the stream again, still live
                    delay = self.backoff_s[0]  # the stream ended (the updater stopped)
                except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
                    pass
                self._lost()
                await asyncio.sleep(delay)
                delay = min(self.backoff_s[1], delay * 2)

    async def _stream(self, session: aiohttp.ClientSession) -> None:
        """Read the event stream until it ends; StreamUnavailable if it is not offered."""
        async with session.get(self.base + "/events") as resp:
            kind = resp.headers.get("Content-Type", "")
            if resp.status != 200 or not kind.startswith("text/event-stream"):
                raise StreamUnavailable(f"HTTP {resp.status} {kind}")
            data: list[str] = []
            async for raw in resp.content:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line and data:
                    snap = json.loads("\n".join(data))
                    data = []
                    if isinstance(snap, dict):
                        self._publish(snap, Link.LIVE)

    async def _poll(self, session: aiohttp.ClientSession) -> None:
        """Poll ``/progress`` every ``poll_s``; return to try the stream again now and then.

        Raises the client error that ends it (the updater went away).
        """
        until = time.monotonic() + self.retry_stream_s
        while time.monotonic() < until:
            async with session.get(self.base + "/progress") as resp:
                body = await resp.json(content_type=None)
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, dict):
                raise ValueError(f"no progress data in HTTP {resp.status}")
            self._publish(data, Link.LIVE)
            await asyncio.sleep(self.poll_s)
