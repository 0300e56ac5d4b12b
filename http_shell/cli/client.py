"""A small client of the updater's HTTP API, used by the CLI commands and the demo.

Every call returns the parsed envelope ``{"code", "msg", "data"}``; :meth:`ApiClient.events`
follows ``GET /events`` (Server-Sent Events), which :mod:`http_shell.cli.watch` shows
(its ``watch_progress`` and ``render_line`` are importable from here too).

What the updater answers is read up to :data:`MAX_ANSWER_BYTES` (one event up to
:data:`MAX_EVENT_BYTES`).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

# Shown with the client's events (and imported from here by callers of this module).
from http_shell.cli.watch import render_line as render_line
from http_shell.cli.watch import watch_progress as watch_progress

API_PREFIX = "/api/v1.0"
#: Most of an answer ever read (a real one is a few KB): beyond it, an error, not memory.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
#: Most of one ``/events`` message read.
MAX_EVENT_BYTES = 1024 * 1024


class UnreadableAnswer(Exception):
    """The updater's answer (or event stream) is too large or not JSON."""


#: What talking to the updater can raise besides :class:`UnreadableAnswer`.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, aiohttp.ClientError)

#: What starts an updater that nothing answers for.
HOW_TO_START = (
    "is the updater running? start it with `tope-updater serve` (or `systemctl start"
    " tope-updater`), or point --url / TOPE_UPDATER_HOST/PORT at it"
)


def describe_connection_error(url: str, exc: BaseException) -> str:
    """One line, in words, for a failure to talk to the updater at ``url``.

    Nothing listening (refused, unreachable, no such host, no answer to the connect) says
    so and how to start the updater or point at it; a connection lost mid-answer says that.
    """
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"nothing answers at {url} ({_os_reason(exc.os_error)}): {HOW_TO_START}"
    connect_timeout = getattr(aiohttp, "ConnectionTimeoutError", ())  # aiohttp >= 3.10
    if isinstance(exc, connect_timeout):
        return f"nothing answers at {url} (no answer to connect within 5 s): {HOW_TO_START}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"the updater at {url} closed the connection before answering"
    if isinstance(exc, TimeoutError):
        return f"the updater at {url} stopped answering (no data for 60 s)"
    reason = _os_reason(exc) if isinstance(exc, OSError) else str(exc) or type(exc).__name__
    return f"lost the connection to the updater at {url}: {reason}"


def _os_reason(exc: OSError) -> str:
    """``connection refused``: an OS error's own words, lower-cased, without the errno."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name: {exc.strerror or exc}".rstrip(": ")
    # asyncio's "Connect call failed (addr)" keeps the errno; its words are the OS's.
    text = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else str(exc)
    text = text or type(exc).__name__
    return text[:1].lower() + text[1:]


class ApiClient:
    """Talk to one updater.

    Args:
        base_url: ``http://host:port`` of the updater.
        token: bearer token for mutating calls, when the updater requires one.
    """

    def __init__(self, base_url: str, *, token: str | None = None) -> None:
        self.base = base_url.rstrip("/") + API_PREFIX
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60),
            headers=self._headers,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with ApiClient(...)`"
        return self._session

    async def get(self, path: str) -> dict[str, Any]:
        async with self.session.get(self.base + path) as resp:
            return await _envelope(resp)

    async def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        async with self.session.post(self.base + path, json=body or {}) as resp:
            return await _envelope(resp)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Progress snapshots from ``GET /events`` as they happen."""
        async with self.session.get(self.base + "/events") as resp:
            data_lines: list[bytes] = []
            size = 0
            try:
                async for raw in resp.content:  # aiohttp bounds each line
                    line = raw.rstrip(b"\r\n")
                    if line.startswith(b"data:"):
                        data_lines.append(line[5:].lstrip())
                        size += len(line)
                        if size > MAX_EVENT_BYTES:
                            raise UnreadableAnswer(f"an event larger than {MAX_EVENT_BYTES} bytes")
                    elif not line and data_lines:
                        event = _json(b"\n".join(data_lines))
                        if not isinstance(event, dict):
                            raise UnreadableAnswer("an event that is not a JSON object")
                        yield event
                        data_lines, size = [], 0
            except ValueError as exc:  # a line beyond aiohttp's bound
                raise UnreadableAnswer(f"the event stream: {exc}") from None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise UnreadableAnswer(f"not JSON: {exc!s:.200}") from None


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None when it is longer than ``limit`` (the rest is never read)."""
    body = bytearray()
    while chunk := await resp.content.read(65536):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def _envelope(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    # An answer that cannot be read is never a success, whatever its HTTP status.
    code = resp.status if resp.status != 200 else 502
    raw = await _read_bounded(resp, MAX_ANSWER_BYTES)
    if raw is None:
        return {
            "code": code,
            "msg": f"HTTP {resp.status}: an answer larger than {MAX_ANSWER_BYTES} bytes (not read)",
            "data": None,
        }
    try:
        body = _json(raw)
    except UnreadableAnswer:
        body = None
    if not isinstance(body, dict) or "code" not in body:
        return {"code": code, "msg": f"HTTP {resp.status} {resp.reason}", "data": None}
    return body
