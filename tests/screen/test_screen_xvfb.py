"""``tope-updater screen`` under Xvfb, following a real ``tope-updater serve``.

One full cycle watched by three screens (800x480 and 1920x440 in English, 1920x1080 in
Chinese): idle, a throttled download that pauses at half, verifying, the install, success;
each screen closes by itself after its countdown. Then a broken package with two fresh
screens (English and Chinese, as the updater starts one when an install begins): "ready"
says what happens next; the updater is killed and restarted during the health check, the
screen shows "Reconnecting…" and continues to the rollback and its outcome (which update
failed, the cause in words and its code); the updater stops and the outcome stays without
a banner; a synthetic click on "Done" closes it at once.

Every frame the screens drew is saved (``--snapshot-dir``); the tests check the bar's fill
in the PNGs against the progress (within a few pixels) and that the text regions are drawn.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.screen.xvfb import click, require_display_stack, xtest_available, xvfb
from tests.support.package_server import Behaviour, ThreadedPackageServer
from tests.support.packages import make_package

pytestmark = pytest.mark.slow

SIZES = [((800, 480), "en"), ((1920, 440), "en"), ((1920, 1080), "zh-CN")]
PAYLOAD = 2 * 1024 * 1024
REPO = str(Path(__file__).resolve().parents[2])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Updater:
    """A real ``tope-updater serve --sandbox`` in a subprocess."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "TOPE_UPDATER_SETTLE_S": "1", "PYTHONPATH": REPO}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "http_shell.cli",
                "serve",
                "--sandbox",
                str(self.dir),
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.progress()
                return
            except OSError:
                time.sleep(0.1)
        pytest.fail("tope-updater serve did not answer")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(
            f"{self.url}/api/v1.0{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def progress(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = self.call("GET", "/progress")["data"]
        except urllib.error.HTTPError as exc:  # 500 while failed, with the data
            data = json.loads(exc.read())["data"]
        return data

    def wait_state(self, *states: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                snap = self.progress()
            except OSError:
                snap = {}
            if snap.get("state") in states:
                return snap
            time.sleep(0.05)
        pytest.fail(f"the updater never reached {states}: {snap}")


class Screen:
    """One ``tope-updater screen`` following the updater: ``--window WxH`` at ``size``, or
    full-screen (borderless, on the whole display) with ``window=False``."""

    def __init__(
        self,
        display: str,
        url: str,
        size: tuple[int, int],
        lang: str,
        directory: Path,
        close_after: float | None = None,
        *,
        window: bool = True,
        pos: tuple[int, int] = (0, 0),
    ) -> None:
        self.size, self.lang, self.dir = size, lang, directory
        env = {**os.environ, "DISPLAY": display, "SDL_VIDEODRIVER": "x11", "PYTHONPATH": REPO}
        env.pop("WAYLAND_DISPLAY", None)
        argv = [sys.executable, "-m", "http_shell.cli", "screen", "--url", url, "--lang", lang]
        if window:
            env["SDL_VIDEO_WINDOW_POS"] = f"{pos[0]},{pos[1]}"
            argv += ["--window", f"{size[0]}x{size[1]}"]
        if close_after is not None:
            argv += ["--close-after", str(close_after)]
        argv += ["--snapshot-dir", str(directory)]
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def frames(self) -> list[dict[str, Any]]:
        path = self.dir / "frames.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_frame(self, pred: Any, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for frame in self.frames():
                if pred(frame):
                    return frame
            time.sleep(0.05)
        pytest.fail(f"no such frame at {self.size}: {[f['title'] for f in self.frames()]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _package(tmp: Path, root: Path, version: str, script: str) -> tuple[Path, bytes]:
    path = make_package(
        tmp / f"hello-{version}.zip",
        version,
        {"bin/hello": (script.encode(), 0o755), "share/blob": os.urandom(PAYLOAD)},
        root=root,
        process_name="hello",
        health={"command": f"{root}/versions/current/bin/hello", "timeout_s": 5},
    )
    return path, path.read_bytes()


def _download(
    updater: Updater,
    srv: ThreadedPackageServer,
    name: str,
    version: str,
    data: bytes,
    behaviour: Behaviour,
) -> None:
    url = srv.call(srv.server.add, name, data, behaviour)
    answer = updater.call(
        "POST",
        "/download",
        {
            "version": version,
            "package_url": url,
            "package_name": name,
            "package_size": len(data),
            "package_md5": hashlib.md5(data).hexdigest(),
            "package_sha256": hashlib.sha256(data).hexdigest(),
        },
    )
    assert answer["code"] == 200, answer


@pytest.fixture
def display() -> Iterator[str]:
    require_display_stack()
    with xvfb() as name:
        yield name


# ---- reading the screenshots ------------------------------------------------------------
def _load(path: Path) -> Any:
    import pygame

    return pygame.image.load(str(path))


def bar_fill(frame: dict[str, Any], directory: Path, colour: tuple[int, int, int]) -> int:
    """Pixels of ``colour`` along the middle row of the bar in the frame's PNG."""
    from screen.render import layout

    image = _load(directory / frame["file"])
    bar = layout(*frame["size"]).bar
    y = bar.centery
    return sum(1 for x in range(bar.left, bar.right) if tuple(image.get_at((x, y)))[:3] == colour)


def ink(frame: dict[str, Any], directory: Path, rect: Any) -> int:
    """Pixels in ``rect`` that are not the background: something is drawn there."""
    from screen.view import BACKGROUND

    image = _load(directory / frame["file"])
    return sum(
        1
        for x in range(rect.left, rect.right, 2)
        for y in range(rect.top, rect.bottom, 2)
        if tuple(image.get_at((x, y)))[:3] != BACKGROUND
    )


def check_frame(frame: dict[str, Any], directory: Path, accent: tuple[int, int, int]) -> None:
    """The bar's fill matches the fraction within 3 px; title and percent are drawn."""
    import pygame

    from screen.render import layout

    lay = layout(*frame["size"])
    title = pygame.Rect(lay.margin, lay.title_y, lay.width - 2 * lay.margin, lay.title_size)
    assert ink(frame, directory, title) > 50, f"no title drawn in {frame['file']}"
    if frame["fraction"] is not None:
        expected = round(lay.bar.width * frame["fraction"])
        filled = bar_fill(frame, directory, accent)
        assert abs(filled - expected) <= 3, (frame, filled, expected)
        percent = pygame.Rect(lay.bar.right, lay.bar.top, lay.width - lay.bar.right, lay.bar.height)
        assert ink(frame, directory, percent) > 20, f"no percentage in {frame['file']}"


# ---- the tests ----------------------------------------------------------------------------
def test_full_cycle_then_broken_update_with_a_restart(display: str, tmp_path: Path) -> None:
    from screen.view import ACCENT, Outcome

    sandbox = tmp_path / "sandbox"
    updater = Updater(sandbox)
    updater.start()
    root = (sandbox / "root").resolve()
    # The good version's self-test takes 3 s, so the install is on screen long enough to be
    # drawn even on a loaded machine (the screen draws the latest snapshot, not every one).
    good, good_data = _package(tmp_path, root, "1.1.0", "#!/bin/sh\nsleep 3\necho hello 1.1.0\n")
    # the broken one's probe takes 2 s and fails: time to kill the updater meanwhile
    bad, bad_data = _package(tmp_path, root, "1.2.0", "#!/bin/sh\nsleep 2\nexit 1\n")
    screens: list[Screen] = []
    try:
        with ThreadedPackageServer() as srv:
            screens = [
                Screen(
                    display,
                    updater.url,
                    size,
                    lang,
                    tmp_path / f"a-{size[0]}x{size[1]}",
                    close_after=3,
                )
                for size, lang in SIZES
            ]
            for s in screens:
                s.wait_frame(lambda f: f["state"] == "idle")
            # about 1 MB/s, and a 2 s pause at exactly half: a known fraction on screen
            half = len(good_data) // 2
            _download(
                updater,
                srv,
                good.name,
                "1.1.0",
                good_data,
                Behaviour(rate_bps=1_000_000, stall_after=half, stall_s=2.0),
            )
            for s in screens:
                s.wait_frame(
                    lambda f: (
                        f["state"] == "downloading"
                        and f["fraction"] is not None
                        and abs(f["fraction"] - 0.5) < 0.03
                    )
                )
            updater.wait_state("ready", "failed")
            assert updater.call("POST", "/update", {"version": "1.1.0"})["code"] == 200
            updater.wait_state("success", "failed")
            for s in screens:
                done = s.wait_frame(lambda f: f["state"] == "success")
                assert done["title"] in ("Updated to 1.1.0", "已更新到 1.1.0")
                # it closes by itself after the 3 s countdown
                s.proc.wait(15)
                assert s.proc.returncode == 0
                closed_after = time.time() - done["time"]
                assert 2.5 < closed_after < 12, closed_after
                frames = s.frames()
                states = [f["state"] for f in frames]
                # transient states may be skipped (the screen draws the latest snapshot)
                for state in ("idle", "downloading", "success"):
                    assert state in states, (s.size, states)
                assert {"deploying", "switching", "health_check"} & set(states), states
                for f in frames:
                    if f["state"] == "downloading" and f["fraction"]:
                        check_frame(f, s.dir, ACCENT[Outcome.WORKING])
                    if f["state"] == "success":
                        check_frame(f, s.dir, ACCENT[Outcome.SUCCESS])
                assert any(
                    f["state"] == "downloading" and 0.05 < (f["fraction"] or 0) < 0.95
                    for f in frames
                )

            # the broken package, with one screen started as the install begins
            _download(updater, srv, bad.name, "1.2.0", bad_data, Behaviour())
            updater.wait_state("ready", "failed")
            screen = Screen(
                display, updater.url, (800, 480), "en", tmp_path / "b-800x480", close_after=60
            )
            # the same in Chinese, beside it (the click on "Done" below is for the first)
            zh = Screen(
                display,
                updater.url,
                (800, 480),
                "zh-CN",
                tmp_path / "b-800x480-zh",
                close_after=60,
                pos=(900, 0),
            )
            screens += [screen, zh]
            ready = screen.wait_frame(lambda f: f["state"] == "ready")
            # what happens next, not just "ready"
            assert ready["versions"] == "1.1.0 → 1.2.0", ready
            assert ready["detail"] == "The install begins when you start it from the printer's app"
            assert ready["note"] == "The printer then stops, installs 1.2.0 and restarts by itself"
            zh.wait_frame(lambda f: f["state"] == "ready")
            assert updater.call("POST", "/update", {"version": "1.2.0"})["code"] == 200
            updater.wait_state("health_check")
            screen.wait_frame(lambda f: f["state"] == "health_check")
            updater.kill()  # mid-install
            screen.wait_frame(lambda f: f["banner"] == "Reconnecting…")
            assert screen.proc.poll() is None
            updater.start()  # resumes the health check, fails it, rolls back
            failed = updater.wait_state("failed", timeout=90)
            assert failed["from_version"] == "1.1.0", failed
            end = screen.wait_frame(lambda f: f["state"] == "failed" and not f["banner"])
            assert end["title"] == (
                "The update failed; the printer was restored to 1.1.0 — it is safe to use"
            )
            # which update failed, why in words, and the code of the cause (not "…SUCCESS")
            assert end["versions"] == "1.1.0 → 1.2.0", end
            assert end["detail"] == (
                "Reason: the new version started but did not pass its health check"
            )
            assert end["note"] == "Code: HEALTH_CHECK_FAILED"
            zh_end = zh.wait_frame(lambda f: f["state"] == "failed")
            assert zh_end["note"] == "代码：HEALTH_CHECK_FAILED", zh_end  # noqa: RUF001
            states = [f["state"] for f in screen.frames()]
            assert "rollback_previous" in states, states
            check_frame(end, screen.dir, ACCENT[Outcome.SAFE])
            # the updater goes away (as it will when idle): the outcome stays, no banner
            updater.stop()
            time.sleep(1.5)
            for s, outcome in ((screen, end), (zh, zh_end)):
                after = [f for f in s.frames() if f["time"] >= outcome["time"]]
                assert after and all(f["banner"] is None for f in after), after
                assert s.proc.poll() is None
            if not xtest_available():
                pytest.skip("libXtst is not installed: cannot click 'Done'")
            from screen.render import layout

            time.sleep(0.5)
            button = layout(800, 480).button
            clicked = time.monotonic()
            click(display, button.centerx, button.centery)
            screen.proc.wait(5)
            assert screen.proc.returncode == 0
            assert time.monotonic() - clicked < 3
    finally:
        for s in screens:
            s.stop()
        updater.stop()
