"""Follow the updater: ``GET /events`` (SSE), reconnecting, polling ``/progress`` as a fallback.

A small blocking client with one job, run in its own thread: call ``on_update(snapshot,
link)`` whenever the snapshot or the connection changes, forever. It speaks HTTP/1.0 over
a plain socket (one request per connection, the body runs to the end of the connection),
not aiohttp nor even ``http.client``: the screen runs beside the updater on a small device,
and aiohttp with asyncio, yarl and multidict cost it about 18 MB of RSS, ``http.client``
(which loads ``ssl``) 6 MB, for one connection at a time (``bench/screen.py``).

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
* Whatever the other end sends, the follower does not die and its memory stays bounded:
  a status line or header is read up to :data:`_MAX_LINE`, a ``/progress`` answer, a
  chunk and one event up to :data:`MAX_MESSAGE`, lines are split in linear time, and an
  answer that is too big, not JSON, too deep or of the wrong shape
  (:func:`screen.snapshot.read_snapshot`) shows :attr:`~screen.view.Link.UNREADABLE` and
  reconnects.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from screen.snapshot import Unreadable, read_snapshot
from screen.view import Link

API_PREFIX = "/api/v1.0"
Update = Callable[[Mapping[str, Any] | None, Link], None]
#: a status line or header longer than this is not the updater
_MAX_LINE = 64 * 1024
#: the largest ``/progress`` answer, chunk or event accepted (a real one is ~1 KB)
MAX_MESSAGE = 1024 * 1024


class Response:
    """One HTTP/1.0 answer being read: ``status``, ``headers`` (lower-case names), and
    the body through :meth:`lines` or :meth:`read`."""

    def __init__(self, sock: socket.socket, reader: io.BufferedReader) -> None:
        self._sock, self._reader = sock, reader
        status = self._line().split(None, 2)
        if len(status) < 2 or not status[0].startswith(b"HTTP/") or not status[1].isdigit():
            raise ValueError(f"not an HTTP status line: {status!r}")
        self.status = int(status[1])
        self.headers: dict[str, str] = {}
        while line := self._line().rstrip(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"

    def _line(self) -> bytes:
        line = self._reader.readline(_MAX_LINE)
        if not line:
            raise ConnectionError("the connection ended before the answer")
        return line

    def _chunks(self) -> Iterator[bytes]:
        """The body's pieces as they arrive (to the end of the connection, or of the last
        chunk should a server send chunks to an HTTP/1.0 request anyway)."""
        if not self._chunked:
            while piece := self._reader.read1(64 * 1024):
                yield piece
            return
        while size := self._chunk_size():
            while size > 0:
                piece = self._reader.read1(min(size, 64 * 1024))
                if not piece:
                    raise ConnectionError("the connection ended inside a chunk")
                size -= len(piece)
                yield piece
            self._line()

    def _chunk_size(self) -> int:
        field = self._line().split(b";")[0].strip()
        if not field or len(field) > 8 or not all(c in b"0123456789abcdefABCDEF" for c in field):
            raise Unreadable(f"not a chunk size: {field[:20]!r}")
        size = int(field, 16)
        if size > MAX_MESSAGE:
            raise Unreadable(f"a chunk of {size} bytes")
        return size

    def lines(self, limit: int = MAX_MESSAGE) -> Iterator[bytes]:
        """The body, line by line, as it arrives; :class:`Unreadable` for a line longer
        than ``limit``. Linear in the body's size however it is cut into pieces."""
        pending = bytearray()
        for piece in self._chunks():
            scanned = len(pending)  # no newline in what was there before
            pending += piece
            start = 0
            while (end := pending.find(b"\n", max(start, scanned))) >= 0:
                yield bytes(pending[start : end + 1])
                start = end + 1
            del pending[:start]
            if len(pending) > limit:
                raise Unreadable(f"a line longer than {limit} bytes")
        if pending:
            yield bytes(pending)

    def read(self, limit: int = MAX_MESSAGE) -> bytes:
        """The whole body; :class:`Unreadable` when it is longer than ``limit``."""
        body = bytearray()
        for piece in self._chunks():
            body += piece
            if len(body) > limit:
                raise Unreadable(f"an answer longer than {limit} bytes")
        return bytes(body)

    def close(self) -> None:
        self._reader.close()
        self._sock.close()


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
        connect_timeout_s: how long a connection may take to open.
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
        connect_timeout_s: float = 3.0,
    ) -> None:
        url = urllib.parse.urlsplit(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port
        self.prefix = url.path + API_PREFIX
        self._on_update = on_update
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.poll_s = poll_s
        self.retry_stream_s = retry_stream_s
        self.read_timeout_s = read_timeout_s
        self.connect_timeout_s = connect_timeout_s
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

    def run(self) -> None:
        """Follow forever (blocking: run it in a daemon thread). Never returns, never raises
        (but for what ends the interpreter)."""
        delay = self.backoff_s[0]
        while True:
            try:
                try:
                    self.mode = "events"
                    self._stream()
                except StreamUnavailable:
                    self.mode = "poll"
                    self._poll()
                    delay = self.backoff_s[0]
                    continue  # polled for a while: try the stream again, still live
                delay = self.backoff_s[0]  # the stream ended (the updater stopped)
                self._lost()
            except Unreadable as exc:  # it answers, but not something we can show
                self._unreadable(exc)
            except (OSError, ValueError):  # unreachable, gone, silent, or nonsense
                self._lost()
            except Exception as exc:  # too deep to parse (RecursionError), or a bug of ours
                self._unreadable(exc)
            time.sleep(delay)
            delay = min(self.backoff_s[1], delay * 2)

    def _unreadable(self, exc: BaseException) -> None:
        print(f"tope-updater screen: cannot read the updater: {exc!r:.300}", file=sys.stderr)
        self._publish(self.last, Link.UNREADABLE)

    def _get(self, path: str, accept: str) -> Response:
        """Send ``GET path`` on a new connection; the answer's head is read.

        Connecting may take ``connect_timeout_s``; each read ``read_timeout_s``.
        """
        address = (self._host, self._port or (443 if self._https else 80))
        sock = socket.create_connection(address, timeout=self.connect_timeout_s)
        try:
            if self._https:  # not for the updater on the device; ssl is costly to load
                import ssl

                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._host)
            sock.settimeout(self.read_timeout_s)
            host = self._host if ":" not in self._host else f"[{self._host}]"
            if self._port:
                host += f":{self._port}"
            head = [f"GET {path} HTTP/1.0", f"Host: {host}", f"Accept: {accept}"]
            head += [f"{k}: {v}" for k, v in self._headers.items()]
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            return Response(sock, sock.makefile("rb"))
        except BaseException:
            sock.close()
            raise

    def _stream(self) -> None:
        """Read the event stream until it ends; StreamUnavailable if it is not offered."""
        resp = self._get(self.prefix + "/events", "text/event-stream")
        try:
            kind = resp.headers.get("content-type", "")
            if resp.status != 200 or not kind.startswith("text/event-stream"):
                raise StreamUnavailable(f"HTTP {resp.status} {kind}")
            data: list[bytes] = []
            size = 0
            for raw in resp.lines():
                line = raw.rstrip(b"\r\n")
                if line.startswith(b"data:"):
                    data.append(line[5:].lstrip())
                    size += len(line)
                    if size > MAX_MESSAGE:
                        raise Unreadable(f"an event longer than {MAX_MESSAGE} bytes")
                elif not line and data:
                    snap = _parse(b"\n".join(data))
                    data, size = [], 0
                    self._publish(read_snapshot(snap), Link.LIVE)
        finally:
            resp.close()

    def _poll(self) -> None:
        """Poll ``/progress`` every ``poll_s``; return to try the stream again now and then.

        Raises the error that ends it (the updater went away).
        """
        until = time.monotonic() + self.retry_stream_s
        while time.monotonic() < until:
            resp = self._get(self.prefix + "/progress", "application/json")
            try:
                body = _parse(resp.read())
            finally:
                resp.close()
            if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
                raise Unreadable(f"no progress data in HTTP {resp.status}")
            self._publish(read_snapshot(body["data"]), Link.LIVE)
            time.sleep(self.poll_s)


def _parse(raw: bytes) -> object:
    """JSON text as a value; :class:`Unreadable` when it is not UTF-8 JSON (or is nested
    deeper than the parser goes)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise Unreadable(f"not JSON: {exc!s:.200}") from None
