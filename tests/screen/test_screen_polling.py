"""``tope-updater screen`` follows the updater by polling ``GET /progress`` when ``/events``
is not offered.

A real ``tope-updater serve --sandbox`` sits behind a small aiohttp proxy (in this process)
that forwards everything except ``/api/v1.0/events``, which it answers ``503
TOO_MANY_CLIENTS`` with the API's JSON envelope — what the updater itself says when its
stream has too many clients. The screen, pointed at the proxy, must still show the whole
cycle (idle, the download, the install, success) without a "Reconnecting…" banner, by
polling ``/progress`` every 500 ms, and try the stream again now and then (every 10 s).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.screen.test_screen_xvfb import Screen, Updater, _download, _package
from tests.screen.xvfb import require_display_stack, xvfb
from tests.support.package_server import Behaviour, ThreadedPackageServer

pytestmark = pytest.mark.slow

API = "/api/v1.0"
_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class NoStreamProxy:
    """An HTTP proxy on 127.0.0.1 to ``upstream`` that refuses the event stream.

    ``seen`` counts the paths asked for (from the screen: ``/api/v1.0/progress`` and
    ``/api/v1.0/events``).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.seen: Counter[str] = Counter()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: object = None

    async def _handle(self, request: object) -> object:
        import aiohttp
        from aiohttp import web

        assert isinstance(request, web.Request)
        self.seen[request.path] += 1
        if request.path == f"{API}/events":
            return web.json_response(
                {"code": 503, "msg": "TOO_MANY_CLIENTS: the proxy offers no stream", "data": None},
                status=503,
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        body = await request.read()
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(
                    request.method,
                    self.upstream + request.path_qs,
                    headers=headers,
                    data=body or None,
                ) as resp,
            ):
                payload = await resp.read()
                kind = resp.headers.get("Content-Type", "application/octet-stream")
                return web.Response(
                    status=resp.status,
                    body=payload,
                    content_type=None,
                    headers={"Content-Type": kind},
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.Response(status=502, text=f"upstream: {exc!r}")

    async def _start(self) -> str:
        from aiohttp import web

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)  # type: ignore[arg-type]
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        from aiohttp import web

        if isinstance(self._runner, web.AppRunner):
            await self._runner.cleanup()

    def __enter__(self) -> NoStreamProxy:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def display() -> Iterator[str]:
    require_display_stack()
    with xvfb() as name:
        yield name


def _wait(pred: object, what: str, timeout: float = 60) -> None:
    assert callable(pred)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_polls_progress_when_the_stream_is_refused(display: str, tmp_path: Path) -> None:
    from screen.view import ACCENT, Outcome
    from tests.screen.test_screen_xvfb import check_frame

    sandbox = tmp_path / "sandbox"
    updater = Updater(sandbox)
    updater.start()
    root = (sandbox / "root").resolve()
    # the self-test takes 3 s: the install stays on screen for several polls
    good, good_data = _package(tmp_path, root, "1.1.0", "#!/bin/sh\nsleep 3\necho hello 1.1.0\n")
    screen: Screen | None = None
    try:
        with ThreadedPackageServer() as srv, NoStreamProxy(updater.url) as proxy:
            screen = Screen(display, proxy.url, (800, 480), "en", tmp_path / "s", close_after=60)
            screen.wait_frame(lambda f: f["state"] == "idle")
            assert proxy.seen[f"{API}/events"] >= 1, proxy.seen
            # about 4 s of download at 500 kB/s: several polls see it move
            _download(
                updater,
                srv,
                good.name,
                "1.1.0",
                good_data,
                Behaviour(rate_bps=500_000),
            )
            screen.wait_frame(
                lambda f: f["state"] == "downloading" and 0.05 < (f["fraction"] or 0) < 0.95
            )
            updater.wait_state("ready", "failed")
            assert updater.call("POST", "/update", {"version": "1.1.0"})["code"] == 200
            updater.wait_state("success", "failed")
            done = screen.wait_frame(lambda f: f["state"] == "success")
            assert done["title"] == "Updated to 1.1.0"
            check_frame(done, screen.dir, ACCENT[Outcome.SUCCESS])
            # the stream is tried again every 10 s while polling
            _wait(lambda: proxy.seen[f"{API}/events"] >= 2, "a second /events attempt", 40)
            assert screen.proc.poll() is None

            frames = screen.frames()
            states = [f["state"] for f in frames]
            for state in ("idle", "downloading", "success"):
                assert state in states, states
            # the install (3 s of self-test) is seen by at least one poll
            assert {"deploying", "switching", "health_check"} & set(states), states
            # in order: the first idle before the first downloading before success
            assert states.index("idle") < states.index("downloading") < states.index("success")
            downloading = [f["fraction"] for f in frames if f["state"] == "downloading"]
            assert len([x for x in downloading if x]) >= 2, downloading  # it moved
            assert downloading == sorted(downloading, key=lambda x: x or 0), downloading
            # refused, not lost: polling is a live link
            assert not [f for f in frames if f["banner"]], [f["banner"] for f in frames]
            # every 500 ms, so at least a few per second of the test (loosely: a loaded CI)
            elapsed = frames[-1]["time"] - frames[0]["time"]
            polls = proxy.seen[f"{API}/progress"]
            assert polls >= max(10, elapsed), (polls, elapsed, proxy.seen)
            events = proxy.seen[f"{API}/events"]
            assert events <= polls / 10, proxy.seen  # not one attempt per poll
    finally:
        if screen is not None:
            screen.stop()
        updater.stop()
