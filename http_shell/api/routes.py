"""Route handlers of ``/api/v1.0`` (contract §1 and the extensions).

Handlers only translate: a validated body becomes an event for the engine, the engine's
decision becomes the response envelope. No handler touches the disk except ``/versions``
(which measures each snapshot once, on a thread of its own: ``ops/snapshot_sizes.py``) and
``/history`` (which reads the history file in a worker thread); ``/progress`` reads the
in-memory snapshot and nothing else, so it stays fast while a download saturates the link.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any

import attrs
from aiohttp import web

from http_shell.api import bodies as b
from http_shell.api.events import stream_events
from http_shell.daemon.reporter import Reporter
from updater_fsm import control, history
from updater_fsm.config import Config
from updater_fsm.control import Decision, Stage, State, UpdaterControl, units_named
from updater_fsm.ops import local_package
from updater_fsm.ops.rollback_floor import read_floor
from updater_fsm.ops.self_update import running_version
from updater_fsm.ops.snapshot_sizes import SnapshotSizes

if TYPE_CHECKING:  # the fleet client is imported only when ddi_url is set (issue 22)
    from fleet_ddi.poller import PollerStats

ENGINE: web.AppKey[UpdaterControl] = web.AppKey("engine", UpdaterControl)
CONFIG: web.AppKey[Config] = web.AppKey("config", Config)
REPORTER: web.AppKey[Reporter | None] = web.AppKey("reporter")
FLEET: web.AppKey[PollerStats | None] = web.AppKey("fleet")
SIZES: web.AppKey[SnapshotSizes] = web.AppKey("snapshot_sizes", SnapshotSizes)
OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi", dict)
HEARTBEAT_S: web.AppKey[float] = web.AppKey("sse_heartbeat_s", float)


def _answer(decision: Decision, data: dict[str, Any]) -> web.Response:
    """The envelope for an engine decision: ``data`` when it succeeded, else its rejection."""
    reply = decision.reply
    if reply.ok:
        return b.envelope(200, "success", data)
    return b.envelope(reply.code, reply.msg)


async def _json_body(request: web.Request, *, optional: bool = False) -> Any:
    """The request body as JSON (``{}`` for no body at all when ``optional``).

    Only a body of zero bytes counts as "no body": whitespace alone is not JSON, and is
    refused like any other malformed body (schemathesis found ``b"\\t"`` accepted as a
    rollback to previous).
    """
    raw = await request.read()
    if optional and not raw:
        return {}
    return b.parse_json(raw)


# ---- contract endpoints ------------------------------------------------------------------
async def post_download(request: web.Request) -> web.Response:
    """``POST /download``: validate, then ask the engine to start (or keep) the download."""
    download = b.validate_download(await _json_body(request))
    if local_package.is_file_url(download.package_url):
        await _judge_local_package(request.app[CONFIG], download.package_url)
    engine = request.app[ENGINE]
    decision = await engine.submit(control.DownloadRequested(download))
    return _answer(decision, {"status": "downloading", "state": decision.record.state.value})


async def _judge_local_package(config: Config, url: str) -> None:
    """A ``file://`` package is accepted only under ``local_package_dirs`` and only as a
    regular file no larger than a package may be: judged now, so the answer says so."""
    try:
        await asyncio.to_thread(
            local_package.judge,
            url,
            config.local_package_dirs,
            local_package.largest_file(config.max_package_bytes),
        )
    except local_package.LocalPackageRefused as exc:
        raise b.BodyError("package_url", str(exc)) from None


async def post_update(request: web.Request) -> web.Response:
    """``POST /update``: install the verified package of exactly this version."""
    version = b.validate_update(await _json_body(request))
    decision = await request.app[ENGINE].submit(control.UpdateRequested(version))
    return _answer(decision, {"status": "installing"})


async def get_progress(request: web.Request) -> web.Response:
    """``GET /progress``: the in-memory snapshot; code 500 when the update failed."""
    snap = request.app[ENGINE].snapshot
    if snap.stage is Stage.FAILED:
        return b.envelope(500, f"Update failed: {snap.error}", snap.data())
    return b.envelope(200, "success", snap.data())


# ---- extensions --------------------------------------------------------------------------
async def post_cancel(request: web.Request) -> web.Response:
    """``POST /cancel``: stop the download/verification/staging, drop the package."""
    decision = await request.app[ENGINE].submit(control.Cancel())
    return _answer(decision, {"status": "cancelled"})


async def post_rollback(request: web.Request) -> web.Response:
    """``POST /rollback`` ``{"target": "previous"|"factory"}`` (empty body: previous)."""
    target = b.validate_rollback(await _json_body(request, optional=True))
    engine = request.app[ENGINE]
    units = units_named(request.app[CONFIG].units)
    event = control.RollbackRequested(target, engine.links, units=units)
    decision = await engine.submit(event)
    return _answer(decision, {"status": "rolling_back", "target": target})


async def post_reset(request: web.Request) -> web.Response:
    """``POST /reset``: forget a finished job and go back to idle."""
    decision = await request.app[ENGINE].submit(control.Reset())
    return _answer(decision, {"status": "idle"})


async def get_versions(request: web.Request) -> web.Response:
    """``GET /versions``: what the links name and every installed snapshot with its size."""
    links = request.app[ENGINE].links
    named = {"current": links.current, "previous": links.previous, "factory": links.factory}
    installed = [
        {
            "version": snap.version,
            "size_bytes": snap.size_bytes,
            "links": [name for name, v in named.items() if v == snap.version],
        }
        for snap in await request.app[SIZES].installed()
    ]
    floor = await asyncio.to_thread(read_floor, request.app[CONFIG].state_path)
    data = {
        "current": links.current,
        "previous": links.previous,
        "factory": links.factory,
        "installed": installed,
        "rollback_floor": floor,
    }
    return b.envelope(200, "success", data)


async def get_history(request: web.Request) -> web.Response:
    """``GET /history``: the last jobs, newest first (``?limit=N``, 1..100)."""
    limit = b.validate_history_limit(request.query.getall("limit", []))
    state_dir = request.app[CONFIG].state_path
    entries = await asyncio.to_thread(history.read_history, state_dir, limit)
    return b.envelope(200, "success", {"entries": entries})


async def get_events(request: web.Request) -> web.StreamResponse:
    """``GET /events``: Server-Sent Events, see :mod:`http_shell.api.events`."""
    return await stream_events(request, request.app[ENGINE], heartbeat_s=request.app[HEARTBEAT_S])


@functools.lru_cache(maxsize=len(State))
def _chart(state: State) -> str:
    # Imported here: statecharts is a tooling package; the API must start without it.
    from statecharts.render import mermaid

    return mermaid(state)


async def get_statechart(request: web.Request) -> web.Response:
    """``GET /statechart``: Mermaid source with the current state highlighted."""
    state = request.app[ENGINE].snapshot.state
    text = await asyncio.to_thread(_chart, state)
    return web.Response(text=text, content_type="text/plain")


async def get_openapi(request: web.Request) -> web.Response:
    """``GET /openapi.json``."""
    return web.json_response(request.app[OPENAPI])


async def get_healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: liveness; the engine state, this updater's version (what a
    self-update's probation checks) and the reporter's counters."""
    snap = request.app[ENGINE].snapshot
    reporter = request.app[REPORTER]
    stats = None
    if reporter is not None:
        s = reporter.stats
        stats = {
            "sent": s.sent,
            "failed_attempts": s.failed_attempts,
            "pending": s.pending,
            "coalesced": s.coalesced,
            "last_error": s.last_error,
        }
    fleet = request.app.get(FLEET)
    data = {
        "state": snap.state.value,
        "stage": snap.stage.value,
        "updater_version": running_version(),
        "reporter": stats,
        "fleet": None if fleet is None else attrs.asdict(fleet),
    }
    return b.envelope(200, "ok", data)


def routes(prefix: str) -> list[web.RouteDef]:
    """Every route of the API under ``prefix``."""
    return [
        web.post(f"{prefix}/download", post_download),
        web.post(f"{prefix}/update", post_update),
        web.get(f"{prefix}/progress", get_progress),
        web.get(f"{prefix}/versions", get_versions),
        web.get(f"{prefix}/history", get_history),
        web.post(f"{prefix}/cancel", post_cancel),
        web.post(f"{prefix}/rollback", post_rollback),
        web.post(f"{prefix}/reset", post_reset),
        web.get(f"{prefix}/events", get_events, allow_head=False),
        web.get(f"{prefix}/statechart", get_statechart),
        web.get(f"{prefix}/openapi.json", get_openapi),
        web.get(f"{prefix}/healthz", get_healthz),
    ]
