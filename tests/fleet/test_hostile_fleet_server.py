"""A real ``tope-updater serve`` polling a fleet server that misbehaves on purpose.

The server is a real aiohttp server on 127.0.0.1 speaking just enough DDI to be believed,
then answering 500s, HTML, truncated JSON, NaN, 50 MB, one byte a second, nothing for 30 s,
links to other schemes, redirects and links to another host (127.0.0.2), and deployments
this device cannot carry out. While each runs, a sampler asks the updater's ``/progress``
every few milliseconds and reads its VmRSS. After each, the server behaves again and the
poller must come back to it: a poller task that died would leave the updater answering
``/progress`` while never polling again, so recovery is the liveness check that counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web

from tests.crash import harness as h

TENANT = "DEFAULT"
CID = "hostile-1"
TOKEN = uuid.uuid4().hex
BASE_PATH = f"/{TENANT}/controller/v1/{CID}"
P99_MAX_S = 0.100
RSS_MAX_KB = 120 * 1024
#: What the 50 MB answer may add to the updater's RSS (the client reads at most 1 MiB).
RSS_GROWTH_MAX_KB = 32 * 1024


@attrs.frozen
class Seen:
    """One request the server received."""

    t: float
    mode: str
    method: str
    path: str
    auth: str | None
    body: bytes


class Server:
    """An aiohttp app in its own thread; ``handle`` is set by its owner."""

    def __init__(self, host: str, handle: Callable[[web.Request], Any]) -> None:
        self.host = host
        self._handle = handle
        self.seen: list[Seen] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.stop_event = asyncio.Event()
        self.port = self._run(self._start())
        self.origin = f"http://{host}:{self.port}"

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _start(self) -> int:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        port: int = self._runner.addresses[0][1]
        return port

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        with contextlib.suppress(Exception):
            self._run(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def base_body(links: dict[str, str], sleep: str = "00:00:00") -> dict[str, Any]:
    return {
        "config": {"polling": {"sleep": sleep}},
        "_links": {name: {"href": href} for name, href in links.items()},
    }


class HostileFleet:
    """The fleet server (127.0.0.1) and another host (127.0.0.2) it links or redirects to."""

    def __init__(self, package: bytes) -> None:
        self.mode = "ok"
        self.package = package
        #: action id -> deployment body offered while in ``ok`` (and ``chunked``) mode
        self.offers: dict[str, dict[str, Any]] = {}
        self.feedback: list[tuple[str, dict[str, Any]]] = []
        self.fleet = Server("127.0.0.1", self._fleet)
        self.other = Server("127.0.0.2", self._other)
        self.url = self.fleet.origin

    def close(self) -> None:
        self.fleet.close()
        self.other.close()

    def _record(self, server: Server, req: web.Request, body: bytes) -> None:
        server.seen.append(
            Seen(
                time.monotonic(),
                self.mode,
                req.method,
                req.path_qs,
                req.headers.get("Authorization"),
                body,
            )
        )

    def base_polls(self, mode: str, since: float = 0.0) -> int:
        return sum(
            1
            for s in self.fleet.seen
            if s.mode == mode and s.path == BASE_PATH and s.method == "GET" and s.t >= since
        )

    def open_offers(self) -> dict[str, str]:
        closed = {a for a, fb in self.feedback if fb["status"]["execution"] != "proceeding"}
        for action in self.offers:
            if action not in closed:
                return {"deploymentBase": f"{self.url}{BASE_PATH}/deploymentBase/{action}?c=-1"}
        return {}

    # ---- the fleet server's misbehaviours ----------------------------------------------
    async def _fleet(self, req: web.Request) -> web.StreamResponse:
        body = await req.read()
        self._record(self.fleet, req, body)
        path = req.path
        if path.endswith("/feedback") and req.method == "POST":
            action = path.split("/")[-2]
            self.feedback.append((action, json.loads(body)))
            return web.json_response({})
        if path == f"{BASE_PATH}/configData" and req.method == "PUT":
            return web.json_response({})  # the device's attributes, as hawkBit takes them
        if "/deploymentBase/" in path:
            offer = self.offers.get(path.rpartition("/")[2])
            return web.json_response(offer) if offer else web.Response(status=404)
        if "/cancelAction/" in path:  # a cancel that names no action to stop
            return web.json_response({"id": "8", "cancelAction": {"stopId": None}})
        if path.startswith("/artifact/"):
            # On the fleet server, the artifact moved elsewhere: the token must not follow.
            return web.Response(status=302, headers={"Location": f"{self.other.origin}/pkg.zip"})
        if path != BASE_PATH:
            return web.Response(status=404)
        return await getattr(self, f"_base_{self.mode}")(req)

    async def _base_ok(self, req: web.Request) -> web.StreamResponse:
        return web.json_response(base_body(self.open_offers()))

    async def _base_http500(self, req: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="java.lang.NullPointerException\n\tat ...")

    async def _base_html(self, req: web.Request) -> web.StreamResponse:
        return web.Response(text="<html><body>Sign in</body></html>", content_type="text/html")

    async def _base_truncated(self, req: web.Request) -> web.StreamResponse:
        return web.Response(text='{"config": {"polling": {"sle', content_type="application/json")

    async def _base_nan(self, req: web.Request) -> web.StreamResponse:
        text = '{"config": {"polling": {"sleep": "00:00:01"}}, "x": NaN, "y": 1e999}'
        return web.Response(text=text, content_type="application/json")

    async def _base_huge(self, req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 50 * 1024 * 1024
        await resp.prepare(req)
        chunk = b'{"a":' + b" " * (64 * 1024 - 5)
        with contextlib.suppress(ConnectionError, RuntimeError):
            for _ in range(50 * 16):
                await resp.write(chunk)
        return resp

    async def _trickle(self, req: web.Request, data: bytes, gap_s: float) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(req)
        with contextlib.suppress(ConnectionError, RuntimeError):
            for i in range(len(data)):
                await resp.write(data[i : i + 1])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.fleet.stop_event.wait(), gap_s)
                if self.fleet.stop_event.is_set() or req.transport is None:
                    break
        return resp

    async def _base_trickle(self, req: web.Request) -> web.StreamResponse:
        # A valid answer, one byte a second: it would take minutes to arrive.
        return await self._trickle(req, json.dumps(base_body({}, " " * 600)).encode(), 1.0)

    async def _base_chunked(self, req: web.Request) -> web.StreamResponse:
        # A slow but honest server: a valid answer in two writes 150 ms apart.
        data = json.dumps(base_body(self.open_offers())).encode()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(req)
        await resp.write(data[:20])
        await asyncio.sleep(0.15)
        await resp.write(data[20:])
        return resp

    async def _base_stall(self, req: web.Request) -> web.StreamResponse:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.fleet.stop_event.wait(), 30)
        return web.json_response(base_body({}))

    async def _base_scheme(self, req: web.Request) -> web.StreamResponse:
        return web.json_response(
            base_body(
                {
                    "deploymentBase": f"file:///etc{BASE_PATH}/deploymentBase/5",
                    "cancelAction": f"gopher://h{BASE_PATH}/cancelAction/6",
                }
            )
        )

    async def _base_port(self, req: web.Request) -> web.StreamResponse:
        return web.json_response(
            base_body({"deploymentBase": f"http://127.0.0.1:99999{BASE_PATH}/deploymentBase/5"})
        )

    async def _base_sleep(self, req: web.Request) -> web.StreamResponse:
        return web.json_response(base_body({}, sleep="99:99:99"))

    async def _base_redirect(self, req: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": f"{self.other.origin}{BASE_PATH}"})

    async def _base_elsewhere(self, req: web.Request) -> web.StreamResponse:
        return web.json_response(
            base_body({"deploymentBase": f"{self.other.origin}{BASE_PATH}/deploymentBase/9"})
        )

    async def _base_cancel_junk(self, req: web.Request) -> web.StreamResponse:
        return web.json_response(
            base_body({"cancelAction": f"{self.url}{BASE_PATH}/cancelAction/8"})
        )

    # ---- another host ------------------------------------------------------------------
    async def _other(self, req: web.Request) -> web.StreamResponse:
        self._record(self.other, req, await req.read())
        if req.path == "/pkg.zip":
            return web.Response(body=self.package, content_type="application/zip")
        return web.Response(status=401, text="who are you")


# ---- the fixture: one updater for the module -------------------------------------------


@attrs.define
class Env:
    fleet: HostileFleet
    rig: h.Rig
    proc: h.UpdaterProcess
    samples: list[tuple[float, float, str, int]]  # (t, latency s, mode, VmRSS kB)


def _rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with h.package_server() as pkg_server:
        base = tmp_path_factory.mktemp("hostile")
        rig = h.Rig(
            base,
            h.scenario("good"),
            pkg_server,
            env={
                "TOPE_UPDATER_DDI_CONTROLLER_ID": CID,
                "TOPE_UPDATER_DDI_TOKEN": TOKEN,
                "TOPE_UPDATER_DDI_POLL_MIN_S": "0.2",
                "TOPE_UPDATER_DDI_POLL_MAX_S": "1",
                "TOPE_UPDATER_READ_TIMEOUT_S": "2",
            },
        )
        fleet = HostileFleet((base / rig.package_name).read_bytes())
        rig.env["TOPE_UPDATER_DDI_URL"] = fleet.url
        samples: list[tuple[float, float, str, int]] = []
        stop = threading.Event()
        try:
            proc = rig.start()

            def sample() -> None:
                while not stop.is_set():
                    t0 = time.monotonic()
                    mode = fleet.mode
                    try:
                        with urllib.request.urlopen(f"{rig.url}/progress", timeout=5) as r:
                            r.read()
                        latency = time.monotonic() - t0
                    except OSError:
                        latency = float("inf")
                    samples.append((t0, latency, mode, _rss_kb(proc.popen.pid)))
                    stop.wait(0.01)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            yield Env(fleet, rig, proc, samples)
        finally:
            stop.set()
            fleet.close()
            rig.close()


def wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    return h.wait_until(pred, timeout, step=0.05)


#: ``/progress`` samples wanted per mode (p99 of fewer says little).
MIN_SAMPLES = 50


def run_phase(env: Env, mode: str, polls: int = 2, cap_s: float = 12.0, min_s: float = 1.0) -> None:
    """Misbehave as ``mode`` until ``polls`` polls came in (and for ``min_s`` at least, and
    until :data:`MIN_SAMPLES` ``/progress`` samples were taken: fewer per second on a loaded
    machine); then behave and see the poller come back within a few seconds, the updater
    alive throughout."""
    fleet = env.fleet
    start = time.monotonic()
    fleet.mode = mode

    def sampled() -> int:
        return sum(1 for t0, _, m, _ in list(env.samples) if m == mode and t0 >= start)

    try:
        assert wait_for(
            lambda: (
                fleet.base_polls(mode, start) >= polls
                and time.monotonic() - start > min_s
                and sampled() >= MIN_SAMPLES
            ),
            cap_s,
        ), (
            f"{mode}: only {fleet.base_polls(mode, start)} polls in {cap_s} s: the poller is "
            f"stuck\n{env.proc.log_tail()}"
        )
    finally:
        fleet.mode = "ok"
    back = time.monotonic()
    assert wait_for(lambda: fleet.base_polls("ok", back) >= 1, 6.0), (
        f"after {mode}: the poller never polled again\n{env.proc.log_tail()}"
    )
    assert env.proc.alive, env.proc.log_tail()
    assert env.rig.progress()["state"] == "idle"


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


MODES = [
    "http500",
    "html",
    "truncated",
    "nan",
    "huge",
    "trickle",
    "stall",
    "scheme",
    "port",
    "sleep",
    "cancel_junk",
]


def test_misbehaving_server_never_stops_the_updater(env: Env) -> None:
    for mode in MODES:
        run_phase(env, mode)
    by_mode: dict[str, list[float]] = {}
    for _, latency, mode, _ in env.samples:
        by_mode.setdefault(mode, []).append(latency)
    report = {
        m: (len(v), round(p99(v) * 1000, 1), round(max(v) * 1000, 1)) for m, v in by_mode.items()
    }
    print(f"/progress (samples, p99 ms, max ms) by mode: {report}")
    peak_rss = max(s[3] for s in env.samples)
    huge_rss = max(s[3] for s in env.samples if s[2] == "huge")
    low_rss = min(s[3] for s in env.samples if s[3] > 0)
    print(f"VmRSS low {low_rss} kB, peak {peak_rss} kB, during the 50 MB answer {huge_rss} kB")
    for mode in MODES:
        lat = by_mode.get(mode, [])
        assert len(lat) >= MIN_SAMPLES, f"{mode}: only {len(lat)} samples"
        assert p99(lat) < P99_MAX_S, f"{mode}: /progress p99 {p99(lat) * 1000:.0f} ms"
    assert 0 < peak_rss < RSS_MAX_KB
    assert huge_rss - low_rss < RSS_GROWTH_MAX_KB
    # Every poll carried the device's token to the fleet server.
    polls = [s for s in env.fleet.fleet.seen if s.path == BASE_PATH]
    assert polls and all(s.auth == f"TargetToken {TOKEN}" for s in polls)


def _deployment(action: str, rig: h.Rig, **changes: Any) -> dict[str, Any]:
    req = rig.request
    art = {
        "filename": f"update-{req['version']}.zip",
        "hashes": {
            "sha1": hashlib.sha1(b"x").hexdigest(),
            "md5": req["package_md5"],
            "sha256": req["package_sha256"],
        },
        "size": req["package_size"],
        "_links": {"download-http": {"href": "set below"}},
    }
    body: dict[str, Any] = {
        "id": action,
        "deployment": {
            "download": "forced",
            "update": "skip",
            "chunks": [{"part": "os", "version": req["version"], "artifacts": [art]}],
        },
    }
    for value in changes.values():
        value(body, art)
    return body


def _no_zip(body: dict[str, Any], art: dict[str, Any]) -> None:
    art["filename"] = "update.tar.gz"


def _two_zips(body: dict[str, Any], art: dict[str, Any]) -> None:
    chunks = body["deployment"]["chunks"]
    chunks.append(copy.deepcopy(chunks[0]))


def _bad_sha(body: dict[str, Any], art: dict[str, Any]) -> None:
    art["hashes"]["sha256"] = "not-a-digest"


INVALID = {
    "201": (_no_zip, "ok", "needs exactly one .zip artifact (the update package), found 0"),
    "202": (_two_zips, "ok", "found 2"),
    "203": (_bad_sha, "ok", "artifact.hashes.sha256"),
    # The same refusal, from a server that sends its answers in two parts.
    "204": (_no_zip, "chunked", "found 0"),
}


def feedback_for(fleet: HostileFleet, action: str) -> list[dict[str, Any]]:
    return [fb for a, fb in fleet.feedback if a == action]


@pytest.mark.parametrize("action", sorted(INVALID))
def test_invalid_deployment_is_closed_with_validation_error(env: Env, action: str) -> None:
    mutate, mode, why = INVALID[action]
    fleet = env.fleet
    body = _deployment(action, env.rig, change=mutate)
    body["deployment"]["chunks"][0]["artifacts"][0]["_links"]["download-http"]["href"] = (
        f"{fleet.url}/artifact/pkg.zip"
    )
    fleet.offers[action] = body
    fleet.mode = mode
    try:
        assert wait_for(lambda: bool(feedback_for(fleet, action)), 8.0), (
            f"no feedback for {action}\n{env.proc.log_tail()}"
        )
    finally:
        fleet.mode = "ok"
    (fb,) = feedback_for(fleet, action)
    assert fb["id"] == action
    assert fb["status"]["execution"] == "closed"
    assert fb["status"]["result"]["finished"] == "failure"
    details = fb["status"]["details"]
    assert details[0].startswith("VALIDATION_ERROR"), details
    assert why in details[0]
    assert details[1] == "running 1.0.0"
    time.sleep(0.6)  # a few more polls: the closed action is never answered twice
    assert len(feedback_for(fleet, action)) == 1
    assert env.rig.progress()["state"] == "idle"


def test_token_never_goes_to_another_host(env: Env) -> None:
    fleet = env.fleet
    run_phase(env, "redirect")
    run_phase(env, "elsewhere")
    # A download-only action whose artifact on the fleet server redirects to another host.
    action = "301"
    body = _deployment(action, env.rig)
    body["deployment"]["chunks"][0]["artifacts"][0]["_links"]["download-http"]["href"] = (
        f"{fleet.url}/artifact/pkg.zip"
    )
    fleet.offers[action] = body
    assert wait_for(lambda: bool(feedback_for(fleet, action)), 15.0), env.proc.log_tail()
    assert wait_for(
        lambda: any(
            fb["status"]["execution"] == "downloaded" for fb in feedback_for(fleet, action)
        ),
        15.0,
    ), (feedback_for(fleet, action), env.proc.log_tail())
    artifact = [s for s in fleet.fleet.seen if s.path.startswith("/artifact/")]
    assert artifact and all(s.auth == f"TargetToken {TOKEN}" for s in artifact)
    moved = [s for s in fleet.other.seen if s.path == "/pkg.zip"]
    assert moved, "the redirect was not followed"
    assert fleet.other.seen, "nothing reached the other host"
    leaked = [s for s in fleet.other.seen if s.auth is not None]
    assert not leaked, f"the device's token went to {fleet.other.origin}: {leaked[0].path}"
    assert env.proc.alive
