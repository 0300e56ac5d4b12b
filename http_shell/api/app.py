"""The aiohttp application: routes, error envelope, optional auth, startup and shutdown.

``create_app`` wires the handlers of :mod:`http_shell.api.routes` to an engine that the
caller built, started and will stop. Two middlewares make the contract's promise that
nothing is ever answered with an HTML error page or a traceback:

* :func:`envelope_errors` turns a bad body into code 400 (``VALIDATION_ERROR: …``, also for
  bodies over :data:`~http_shell.api.bodies.MAX_BODY_BYTES`), unknown paths and methods into
  a JSON body with the real HTTP 404/405, and any unexpected exception into code 500.
* :func:`bearer_auth` (only when ``config.api_token`` is set) answers mutating requests
  that lack ``Authorization: Bearer <token>`` with HTTP 401 and the envelope code 401,
  and ``GET /events`` too (a stream holds a connection for as long as the client wants);
  the other reads stay open so dashboards and device-api polling keep working.

Before those, :mod:`http_shell.api.guard` refuses foreign ``Host``/``Origin`` headers
(HTTP 403, ``FORBIDDEN: …``) and state-changing bodies not declared ``application/json``
(code 400). The order is: envelope errors ⊃ Host/Origin ⊃ token ⊃ content type ⊃ handler.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from http_shell.api import routes
from http_shell.api.bodies import MAX_BODY_BYTES, BodyError, envelope
from http_shell.api.events import MAX_EVENT_STREAMS, SHUTDOWN, SLOTS, StreamSlots, close_streams
from http_shell.api.guard import SAFE_METHODS, edge_guard, json_only, served_host_names
from http_shell.api.openapi import PREFIX, openapi_document
from http_shell.daemon.reporter import Reporter
from updater_fsm.config import Config
from updater_fsm.control import RequestError, UpdaterControl, redact_url
from updater_fsm.ops.snapshot_sizes import SnapshotSizes

if TYPE_CHECKING:  # the fleet client is imported only when ddi_url is set (issue 22)
    from fleet_ddi.poller import PollerStats

_log = structlog.get_logger(__name__)

#: Headers of aiohttp's HTTP errors worth keeping on the JSON replacement.
_KEEP_HEADERS = ("Allow", "WWW-Authenticate")


@web.middleware
async def envelope_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure with the JSON envelope (see the module docstring)."""
    try:
        return await handler(request)
    except BodyError as exc:
        return envelope(400, str(exc))
    except web.HTTPRequestEntityTooLarge:
        return envelope(
            400, f"{RequestError.VALIDATION_ERROR}: body is larger than {MAX_BODY_BYTES} bytes"
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: exc.headers[k] for k in _KEEP_HEADERS if k in exc.headers}
        return web.json_response(
            {"code": exc.status, "msg": exc.reason, "data": None},
            status=exc.status,
            headers=headers,
        )
    except (asyncio.CancelledError, ConnectionError):
        raise  # the client is gone or the server is stopping: nobody to answer
    except Exception as exc:
        _log.exception("request failed", method=request.method, path=request.path)
        return envelope(
            500, redact_url(f"{RequestError.INTERNAL_ERROR}: {type(exc).__name__}: {exc}")
        )


def bearer_auth(token: str, protected_reads: frozenset[str] = frozenset()) -> Middleware:
    """A middleware requiring ``Authorization: Bearer <token>`` on mutating requests and on
    the reads whose paths are in ``protected_reads``."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in SAFE_METHODS or request.path in protected_reads:
            given = request.headers.get("Authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, expected):
                return web.json_response(
                    {
                        "code": 401,
                        "msg": f"{RequestError.UNAUTHORIZED}: this endpoint needs"
                        " Authorization: Bearer <token>",
                        "data": None,
                    },
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="tope-updater"'},
                )
        return await handler(request)

    return check


def create_app(
    config: Config,
    engine: UpdaterControl,
    *,
    reporter: Reporter | None = None,
    fleet: PollerStats | None = None,
    sse_heartbeat_s: float = 15.0,
    max_event_streams: int = MAX_EVENT_STREAMS,
) -> web.Application:
    """The HTTP API application (contract §1) for an already built engine.

    Args:
        config: ``root`` (for ``/versions``), ``api_token``, and ``host`` with
            ``allowed_hosts`` (the accepted ``Host`` names) matter here; ``port`` does not.
        engine: the engine requests are submitted to. Starting and stopping it is the
            caller's job.
        reporter: the device-api reporter; its counters appear in ``/healthz`` and the app's
            cleanup stops it (stopping twice is harmless).
        fleet: the fleet poller's counters (``/healthz``), None without ``ddi_url``.
        sse_heartbeat_s: quiet time after which ``/events`` sends a ``: ping`` comment.
        max_event_streams: ``/events`` streams open at once; one more is HTTP 503.
    """
    middlewares: list[Middleware] = [envelope_errors, edge_guard(served_host_names(config))]
    if config.api_token:
        middlewares.append(bearer_auth(config.api_token, frozenset({f"{PREFIX}/events"})))
    middlewares.append(json_only)
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
    app[routes.ENGINE] = engine
    app[routes.CONFIG] = config
    app[routes.REPORTER] = reporter
    app[routes.FLEET] = fleet
    app[routes.HEARTBEAT_S] = sse_heartbeat_s
    app[routes.SIZES] = sizes = SnapshotSizes(config.root)
    app[routes.OPENAPI] = openapi_document(auth=bool(config.api_token))
    app[SHUTDOWN] = asyncio.Event()
    app[SLOTS] = StreamSlots(max_event_streams)
    app.add_routes(routes.routes(PREFIX))
    app.on_shutdown.append(close_streams)
    app.on_cleanup.append(_close_sizes(sizes))
    if reporter is not None:
        app.on_cleanup.append(_stop_reporter(reporter))
    return app


def _close_sizes(sizes: SnapshotSizes) -> Callable[[web.Application], Awaitable[None]]:
    async def close(app: web.Application) -> None:
        sizes.close()

    return close


def _stop_reporter(reporter: Reporter) -> Callable[[web.Application], Awaitable[None]]:
    async def stop(app: web.Application) -> None:
        await reporter.stop()

    return stop
