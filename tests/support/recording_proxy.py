"""A forwarding HTTP proxy in front of a real server that records every request it passes:
what the server sees of a device, with the time it arrived (the fleet wake-up's cadence).

The device is configured with the proxy's URL; each request is forwarded to the upstream
server as it came (method, path, headers, body) and the answer returned as the server gave
it, except that the upstream's own base URL in an answer's body is replaced by the proxy's
(hawkBit's artifact links), so the device's next requests come through here too.
Loopback only, port 0.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
)


@attrs.frozen
class Passed:
    """One request the proxy passed: when it arrived (``time.monotonic()``), what it asked,
    the upstream's status, and its body (feedback is JSON)."""

    at: float
    method: str
    path: str
    status: int
    body: bytes


class RecordingProxy:
    """``with RecordingProxy(upstream) as proxy:`` — ``proxy.url`` forwards to ``upstream``."""

    def __init__(self, upstream: str) -> None:
        parts = urllib.parse.urlsplit(upstream)
        assert parts.scheme == "http" and parts.hostname and parts.port, upstream
        self.upstream = upstream.rstrip("/")
        self._host, self._port = parts.hostname, parts.port
        self._lock = threading.Lock()
        self._passed: list[Passed] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                arrived = time.monotonic()
                length = int(self.headers.get("Content-Length", "0") or "0")
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn = http.client.HTTPConnection(proxy._host, proxy._port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    status, reply_headers = resp.status, resp.getheaders()
                finally:
                    conn.close()
                data = data.replace(proxy.upstream.encode(), proxy.url.encode())
                with proxy._lock:
                    proxy._passed.append(Passed(arrived, self.command, self.path, status, body))
                self.send_response(status)
                for name, value in reply_headers:
                    if name.lower() not in _HOP_BY_HOP | {"content-length"}:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def passed(self) -> list[Passed]:
        """Every request passed so far, in order of arrival."""
        with self._lock:
            return list(self._passed)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
