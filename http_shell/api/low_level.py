"""aiohttp's own refusals in the API's JSON envelope.

Before a request reaches the app (and its middlewares), aiohttp's parser may refuse it: a
request line that is not HTTP, a header line or a header block too long, a duplicate
``Host``, an impossible ``Content-Length``. aiohttp then answers ``text/plain`` (or HTML),
which no client of the API expects. :class:`EnvelopeAppRunner` serves the app with a
request handler whose refusals are the API's envelope — the same HTTP status, ``code``
equal to it, ``msg`` ``VALIDATION_ERROR: <what aiohttp said>`` (``INTERNAL_ERROR`` for a
500), ``data`` null — and still close the connection, as aiohttp does.

aiohttp offers no public hook for this: the runner builds its server as
:meth:`web.AppRunner._make_server` does and gives it this request handler class
(``tests/http_shell/test_edges.py`` fails should a new aiohttp change that path).

The same request handler bounds the connections (issue 22): each one costs a descriptor
and a few KB, and a client that connects and says nothing used to hold both for as long as
it liked (16,400 of them exhausted the unit's ``LimitNOFILE``: the API stopped answering).

* **Header deadline**: a connection that has not sent the headers of a request within
  :data:`HEADER_TIMEOUT_S` of connecting is closed (aiohttp itself only waits for a first
  request as long as its keep-alive timeout, 75 s by default).
* **Connection cap**: at most :func:`connection_cap` connections are open at once (far below
  the descriptor limit, so the download, the journal and ``post_cmds`` keep a reserve).
  One more evicts the oldest connection that has not sent a request yet, so a flood of
  silent connections cannot lock out a client that asks at once (a client with the token
  starting a download); when every open connection has sent a request the new one is
  closed at once. ``/events`` streams keep their own, smaller cap (:mod:`.events`).
* **A listener that survives EMFILE**: should descriptors run out anyway, CPython 3.11's
  selector loop, having hit EMFILE in ``accept()``, goes on looping: each wake-up logs the
  error up to ``backlog`` (100) times and schedules as many retries, which multiply (a
  flood at a 128-descriptor limit wrote 350 MB of log in seconds), and retries left over
  when the listener closes fail with ``Invalid file descriptor: -1``.
  :func:`guard_accept` gives the runner's loop an accept step that, out of descriptors,
  stops reading the listener, logs once, and resumes it once a second later; it also
  accepts at most :data:`ACCEPT_BURST` connections per wake-up, so a burst does not
  overshoot the cap by a whole backlog before the cap is applied.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import resource
from collections import OrderedDict
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from updater_fsm.control import RequestError, visible

_log = structlog.get_logger(__name__)

#: Seconds a new connection has to send the headers of its first request.
HEADER_TIMEOUT_S = 10.0
#: Connections open at once, at most (the GUI, device-api, ``--watch`` CLIs and a browser
#: need a few dozen), unless the descriptor limit is lower (:func:`connection_cap`).
MAX_CONNECTIONS = 512
#: Descriptors kept out of the connections' reach: the listener, the journal, a download
#: and its target, snapshot walks, ``post_cmds`` and their pipes, the notify socket.
FD_RESERVE = 128
#: The cap never goes below this, however low the descriptor limit.
MIN_CONNECTIONS = 16


#: Seconds the listener rests after ``accept()`` ran out of descriptors (asyncio's own).
ACCEPT_RETRY_S = 1.0
#: Connections accepted per wake-up of the listener, at most (asyncio: ``backlog``, 128 for
#: aiohttp). A connection is judged against the cap a few loop turns after its
#: ``accept()``, so a burst of 128 could overshoot the cap by as many descriptors (and
#: evict a client's connection before its request is read); the listener wakes again at
#: once while connections wait.
ACCEPT_BURST = 16
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def guard_accept(loop: asyncio.AbstractEventLoop) -> bool:
    """Give ``loop`` an accept step that survives running out of descriptors (see the
    module docstring); listeners created on ``loop`` afterwards use it.

    Returns False (and changes nothing) for a loop that is not asyncio's selector loop.
    """
    if not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        return False
    sel: Any = loop
    if not all(hasattr(sel, name) for name in ("_start_serving", "_accept_connection2")):
        return False

    def accept(
        protocol_factory: Any,
        sock: Any,
        sslcontext: Any = None,
        server: Any = None,
        backlog: int = 100,
        *timeouts: Any,
    ) -> None:
        for _ in range(min(backlog, ACCEPT_BURST)):
            try:
                conn, addr = sock.accept()
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                sel._remove_reader(sock.fileno())
                _log.warning(
                    "listener out of descriptors: resting",
                    error=os.strerror(exc.errno) if exc.errno else str(exc),
                    retry_s=ACCEPT_RETRY_S,
                )
                sel.call_later(
                    ACCEPT_RETRY_S,
                    resume,
                    (protocol_factory, sock, sslcontext, server, backlog, *timeouts),
                )
                return
            sel.create_task(
                sel._accept_connection2(
                    protocol_factory, conn, {"peername": addr}, sslcontext, server, *timeouts
                )
            )

    def resume(args: tuple[Any, ...]) -> None:
        sock, server = args[1], args[3]
        if sock.fileno() == -1 or (server is not None and not server.is_serving()):
            return  # the listener was closed meanwhile
        sel._start_serving(*args)

    sel._accept_connection = accept
    return True


def connection_cap(nofile: int | None = None) -> int:
    """How many connections may be open at once under the soft descriptor limit
    ``nofile`` (default: this process's ``RLIMIT_NOFILE``).

    :data:`MAX_CONNECTIONS`, or ``nofile - FD_RESERVE`` when that is lower (but at least
    :data:`MIN_CONNECTIONS`).
    """
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile == resource.RLIM_INFINITY:
            return MAX_CONNECTIONS
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, nofile - FD_RESERVE))


class _EnvelopeRequestHandler(RequestHandler):  # type: ignore[type-arg]
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = self._manager
        assert isinstance(server, _EnvelopeServer)
        server.admit(self, cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._request_count:  # the headers of a request are in (or refused)
            self._headers_in()

    def connection_lost(self, exc: BaseException | None) -> None:
        server = self._manager
        self._headers_in()
        super().connection_lost(exc)
        if isinstance(server, _EnvelopeServer):
            server.silent.pop(self, None)

    def _headers_in(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
            server = self._manager
            if isinstance(server, _EnvelopeServer):
                server.silent.pop(self, None)

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self._request_count == 0 and self.transport is not None:
            server = self._manager
            if isinstance(server, _EnvelopeServer):
                server.silent.pop(self, None)
                server.late += 1
            self.transport.abort()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logs, checks the writer
        code = RequestError.INTERNAL_ERROR if status >= 500 else RequestError.VALIDATION_ERROR
        said = message or getattr(exc, "message", None) or str(exc or "")
        detail = visible(" ".join(str(said).split()), 300) or "the request could not be parsed"
        body = {"code": status, "msg": f"{code.value}: {detail}", "data": None}
        response = web.Response(
            status=plain.status, text=json.dumps(body), content_type="application/json"
        )
        response.force_close()
        return response


class _EnvelopeServer(Server):  # type: ignore[type-arg]
    #: Seconds to the header deadline, and the cap (set by :class:`EnvelopeAppRunner`).
    header_timeout_s: float
    max_connections: int
    #: Open connections that have sent no request yet, oldest first.
    silent: OrderedDict[_EnvelopeRequestHandler, None]
    #: Connections closed at the header deadline, evicted, refused (``/healthz``-style
    #: counters for tests and benches).
    late: int
    evicted: int
    refused: int

    def __call__(self) -> RequestHandler:  # type: ignore[type-arg]
        return _EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)

    def admit(self, handler: _EnvelopeRequestHandler, transport: asyncio.Transport) -> None:
        """Arm the new connection's header deadline; above the cap, make room for it by
        closing the oldest silent connection, or close it at once when there is none."""
        if len(self._connections) > self.max_connections:
            if self.silent:
                oldest, _ = self.silent.popitem(last=False)
                if oldest.transport is not None:
                    oldest.transport.abort()
                self.evicted += 1
            else:
                self.refused += 1
                transport.abort()
                return
        self.silent[handler] = None
        handler._header_deadline = self._loop.call_later(
            self.header_timeout_s, handler._headers_late
        )


class EnvelopeAppRunner(web.AppRunner):
    """A :class:`web.AppRunner` whose low-level refusals are JSON envelopes and whose
    connections are bounded (see the module docstring).

    Args:
        header_timeout_s: seconds a new connection has to send its first request's headers.
        max_connections: connections open at once (default :func:`connection_cap`).
        kwargs: as for :class:`web.AppRunner`.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        max_connections: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._max_connections = connection_cap() if max_connections is None else max_connections

    async def _make_server(self) -> Server:  # type: ignore[type-arg]
        guard_accept(asyncio.get_running_loop())
        server: Any = await super()._make_server()
        server.__class__ = _EnvelopeServer
        server.header_timeout_s = self._header_timeout_s
        server.max_connections = self._max_connections
        server.silent = OrderedDict()
        server.late = server.evicted = server.refused = 0
        _log.debug(
            "connections bounded",
            max_connections=self._max_connections,
            header_timeout_s=self._header_timeout_s,
        )
        return server  # type: ignore[no-any-return]
