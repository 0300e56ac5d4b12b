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
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from updater_fsm.control import RequestError, visible


class _EnvelopeRequestHandler(RequestHandler):  # type: ignore[type-arg]
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
    def __call__(self) -> RequestHandler:  # type: ignore[type-arg]
        return _EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)


class EnvelopeAppRunner(web.AppRunner):
    """A :class:`web.AppRunner` whose low-level refusals are JSON envelopes."""

    async def _make_server(self) -> Server:  # type: ignore[type-arg]
        server: Any = await super()._make_server()
        server.__class__ = _EnvelopeServer
        return server  # type: ignore[no-any-return]
