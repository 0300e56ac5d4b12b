"""A real ``tope-updater serve`` at a lowered descriptor limit, flooded by a process that
holds idle connections (issue 22): the API keeps answering, a client with the token can
start a download, the watchdog is fed, and the listener works after the flood.

``serve`` runs with ``RLIMIT_NOFILE`` 256 (the unit has 16384; the flood is scaled down to
match): before the bounds, about 250 silent connections stopped the API, made every
watchdog ping fail with EMFILE, and left the listener logging ``accept()`` errors by the
hundred per millisecond. The flood comes from ``tests/support/idle_flood.py``, a process of
its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from http_shell.api.low_level import ACCEPT_RETRY_S, connection_cap
from tests.http_shell.conftest import body
from tests.support.memory_cgroup import memory_cgroup

REPO = Path(__file__).resolve().parents[2]
TOKEN = "flood-test-token"
#: Idle connections the flood opens: four times what the descriptor limit would allow.
FLOOD = 1000
#: ``/progress`` answers within this, every time, while the flood is held (the issue's
#: figure).
ANSWER_S = 1.0
#: While the flood is still connecting, the listen queue (aiohttp's backlog, 128) can be
#: full for a moment: the kernel drops a SYN then, and a client's connect is retried 1 s
#: later (seen once in ~360 requests on a 2-core machine at load 5). At most one retry.
CONNECTING_S = 2.5

#: Lowers the descriptor limit, then becomes ``tope-updater serve``.
_LIMITED = (
    "import os, resource, sys;"
    "n = int(sys.argv[1]);"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n));"
    "os.execv(sys.executable, [sys.executable, '-m', 'http_shell.cli', *sys.argv[2:]])"
)


class Serve:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1.0{path}"

    def call(self, method: str, path: str, data: Any = None, timeout: float = 5.0) -> Any:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        payload = None
        if data is not None:
            payload = json.dumps(data).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url(path), payload, headers, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.load(resp)

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    directory = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


def _start(tmp_path: Path, port: int, nofile: int, notify: tuple[socket.socket, str]) -> Serve:
    sock, path = notify
    env = {
        **os.environ,
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "1000000",  # a ping every 0.5 s
        "TOPE_UPDATER_API_TOKEN": TOKEN,
        "TOPE_UPDATER_DEVICE_API_URL": "http://127.0.0.1:9",
    }
    env.pop("WATCHDOG_PID", None)
    log = tmp_path / "serve.log"
    argv = ["serve", "--sandbox", str(tmp_path / "sb"), "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _LIMITED, str(nofile), *argv],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
        )
    sock.settimeout(30)
    while "READY=1" not in sock.recv(4096).decode().split("\n"):
        pass
    return Serve(proc, port, log)


def _stop(serve: Serve) -> None:
    if serve.proc.poll() is None:
        serve.proc.send_signal(signal.SIGTERM)
        try:
            serve.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            serve.proc.kill()
            serve.proc.wait()


class Pinger(threading.Thread):
    """Asks for ``/progress`` every 50 ms and records how long each answer took (a
    failure counts as infinity); counts the watchdog pings meanwhile."""

    def __init__(self, serve: Serve, notify: socket.socket) -> None:
        super().__init__(daemon=True)
        self.serve = serve
        self.notify = notify
        self.took: list[tuple[float, float]] = []  # (when asked, seconds to the answer)
        self.pings = 0
        self.halt = threading.Event()

    def run(self) -> None:
        self.notify.setblocking(False)
        while not self.halt.is_set():
            started = time.monotonic()
            try:
                env = self.serve.call("GET", "/progress", timeout=3 * ANSWER_S)
                took = time.monotonic() - started if env["code"] == 200 else 1e9
            except OSError:
                took = float("inf")
            self.took.append((started, took))
            while True:
                try:
                    self.pings += self.notify.recv(4096) == b"WATCHDOG=1"
                except BlockingIOError:
                    break
            self.halt.wait(0.05)


def _flood(serve: Serve, count: int) -> subprocess.Popen[str]:
    flood = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.idle_flood",
            "127.0.0.1",
            str(serve.port),
            str(count),
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert flood.stdout is not None
    line = flood.stdout.readline()
    assert line.startswith("holding "), line
    return flood


def _end_flood(flood: subprocess.Popen[str]) -> int:
    out, _ = flood.communicate("", timeout=30)
    assert flood.returncode == 0
    return int(out.split("closed by server ")[1])


def test_a_flood_of_idle_connections_at_the_descriptor_limit(
    tmp_path: Path, serve_port: int, notify_socket: tuple[socket.socket, str]
) -> None:
    nofile = 256
    serve = _start(tmp_path, serve_port, nofile, notify_socket)
    pinger = Pinger(serve, notify_socket[0])
    flood = None
    try:
        pinger.start()
        time.sleep(0.5)
        started = time.monotonic()
        flood = _flood(serve, FLOOD)
        holding = time.monotonic()
        peak_fds = serve.descriptors()
        env = serve.call("POST", "/download", body())  # a client with the token gets in
        assert env["code"] == 200, env
        assert serve.call("GET", "/progress")["data"]["state"] == "downloading"
        time.sleep(3.0)  # held: six watchdog pings' worth
        peak_fds = max(peak_fds, serve.descriptors())
        released = time.monotonic()
        closed = _end_flood(flood)
        held_s = time.monotonic() - started
        time.sleep(0.5)
        pinger.halt.set()
        pinger.join(10)
        after = serve.call("GET", "/progress")  # the listener works after the flood
        assert after["code"] == 200, after
        assert serve.call("POST", "/cancel")["code"] == 200
    finally:
        pinger.halt.set()
        if flood is not None and flood.poll() is None:
            flood.kill()
        _stop(serve)
    log = serve.log.read_text(errors="replace")
    connecting = [took for at, took in pinger.took if started <= at < holding]
    held = [took for at, took in pinger.took if holding <= at < released]
    print(
        f"{FLOOD} idle connections ({holding - started:.1f} s to connect, "
        f"{held_s:.1f} s in all) at RLIMIT_NOFILE {nofile}: "
        f"{closed} closed by the server, peak {peak_fds} descriptors; /progress: "
        f"{len(held)} answers while held, slowest {max(held) * 1000:.0f} ms; "
        f"{len(connecting)} while connecting, slowest {max(connecting, default=0) * 1000:.0f} ms; "
        f"{pinger.pings} watchdog pings"
    )
    assert serve.proc.returncode == 0, log[-3000:]
    assert max(held) < ANSWER_S, sorted(held)[-5:]
    assert max(connecting, default=0) < CONNECTING_S, sorted(connecting)[-5:]
    assert len(held) >= 20
    assert closed >= FLOOD - connection_cap(nofile), closed
    assert peak_fds < nofile
    assert pinger.pings >= held_s / 0.5 - 2, (pinger.pings, held_s)
    assert "Invalid file descriptor" not in log
    assert "out of system resource" not in log


def test_the_listener_recovers_after_running_out_of_descriptors(
    tmp_path: Path, serve_port: int, notify_socket: tuple[socket.socket, str]
) -> None:
    """At 40 descriptors the flood does hit EMFILE in ``accept()`` (connections are
    accepted a few loop turns before the cap judges them): the listener rests a second,
    logs that once per rest (before: a hundred errors per wake-up, multiplying), and
    answers again after the flood; the watchdog is fed throughout."""
    nofile = 40
    serve = _start(tmp_path, serve_port, nofile, notify_socket)
    pinger = Pinger(serve, notify_socket[0])
    try:
        pinger.start()
        started = time.monotonic()
        flood = _flood(serve, 300)
        time.sleep(2.0)
        _end_flood(flood)
        flood_s = time.monotonic() - started
        time.sleep(1.5)  # a rest of the listener, at most
        pinger.halt.set()
        pinger.join(10)
        for _ in range(3):
            assert serve.call("GET", "/progress", timeout=ANSWER_S)["code"] == 200
    finally:
        pinger.halt.set()
        _stop(serve)
    log = serve.log.read_text(errors="replace")
    rests = log.count("listener out of descriptors: resting")
    print(f"{rests} rests of the listener in {flood_s:.1f} s; {pinger.pings} watchdog pings")
    assert serve.proc.returncode == 0, log[-3000:]
    assert rests >= 1  # it did run out of descriptors
    assert rests <= flood_s / ACCEPT_RETRY_S + 2, (rests, flood_s)  # a second per rest
    assert "out of system resource" not in log  # asyncio's own handler never ran
    assert "Invalid file descriptor" not in log
    assert pinger.pings >= 4


def test_16400_idle_connections_under_the_units_limits(
    tmp_path: Path, serve_port: int, notify_socket: tuple[socket.socket, str]
) -> None:
    """The issue's own figures: 16,400 idle connections held against a real ``serve`` at
    the unit's ``LimitNOFILE=16384``, in a real memory cgroup of ``MemoryMax=128M`` (slow
    tier: the flood takes a minute or two to connect). No OOM kill, ``/progress`` within
    1 s while held, a download started with the token, the watchdog fed."""
    nofile, count = 16384, 16_400
    with memory_cgroup(128 * 1024 * 1024) as cgroup:
        serve = _start(tmp_path, serve_port, nofile, notify_socket)
        cgroup.add(serve.proc.pid)  # before the flood: its sockets are charged here
        pinger = Pinger(serve, notify_socket[0])
        flood = None
        try:
            pinger.start()
            flood = _flood(serve, count)
            holding = time.monotonic()
            env = serve.call("POST", "/download", body())
            assert env["code"] == 200, env
            time.sleep(5.0)
            peak_fds = serve.descriptors()
            released = time.monotonic()
            closed = _end_flood(flood)
            pinger.halt.set()
            pinger.join(10)
            assert serve.call("GET", "/progress")["code"] == 200
            peak, kills = cgroup.peak_bytes(), cgroup.oom_kills()
        finally:
            pinger.halt.set()
            if flood is not None and flood.poll() is None:
                flood.kill()
            _stop(serve)
    held = [took for at, took in pinger.took if holding <= at < released]
    print(
        f"{count} idle connections at RLIMIT_NOFILE {nofile} under MemoryMax=128M: "
        f"{closed} closed by the server, {peak_fds} descriptors, cgroup peak "
        f"{peak / 1e6:.1f} MB, {kills} OOM kills; /progress slowest "
        f"{max(held) * 1000:.0f} ms while held, {max(t for _, t in pinger.took) * 1000:.0f} "
        f"ms overall; {pinger.pings} watchdog pings"
    )
    assert serve.proc.returncode == 0
    assert kills == 0
    assert max(held) < ANSWER_S, sorted(held)[-5:]
    assert pinger.pings >= 6
