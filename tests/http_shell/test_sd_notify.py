"""sd_notify against real AF_UNIX datagram sockets, and the daemon's use of it.

Each test binds its own notify socket (a short path under /tmp, or an abstract name), as
systemd would, and reads what the code under test sends to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from http_shell.daemon import sd_notify

REPO = Path(__file__).resolve().parents[2]


class Listener:
    """A bound datagram socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env = {"NOTIFY_SOCKET": env_value}

    def recv(self, timeout: float = 5.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def recv_until(self, wanted: str, timeout: float = 15.0) -> list[str]:
        """Every message up to and including the first one containing ``wanted``."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                seen.append(self.recv(max(0.05, deadline - time.monotonic())))
            except TimeoutError:
                break
            if wanted in seen[-1].split("\n"):
                return seen
        raise AssertionError(f"no {wanted!r} within {timeout} s; got {seen}")


@pytest.fixture
def path_listener() -> Iterator[Listener]:
    # sun_path holds 108 bytes: pytest's tmp_path can be longer, so use a short dir.
    directory = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield Listener(sock, path)
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    name = f"tope-sdn-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield Listener(sock, "@" + name)
    finally:
        sock.close()


def test_notify_sends_to_a_path_socket(path_listener: Listener) -> None:
    assert sd_notify.notify("READY=1\nSTATUS=hello", env=path_listener.env) is True
    assert path_listener.recv() == "READY=1\nSTATUS=hello"


def test_notify_sends_to_an_abstract_socket(abstract_listener: Listener) -> None:
    assert sd_notify.notify("STOPPING=1", env=abstract_listener.env) is True
    assert abstract_listener.recv() == "STOPPING=1"


@pytest.mark.parametrize("value", [None, "", "relative/path", "vsock:2:1234", "@"])
def test_notify_without_a_usable_socket_is_a_no_op(value: str | None) -> None:
    env = {} if value is None else {"NOTIFY_SOCKET": value}
    assert sd_notify.notify("READY=1", env=env) is False


def test_notify_to_a_socket_nobody_listens_on_returns_false(tmp_path: Path) -> None:
    assert sd_notify.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_notify_reads_os_environ_by_default(
    path_listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_listener.env["NOTIFY_SOCKET"])
    assert sd_notify.notify("READY=1") is True
    assert path_listener.recv() == "READY=1"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another pid
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert sd_notify.watchdog_interval(env) == expected


async def test_watchdog_loop_pings_until_cancelled(path_listener: Listener) -> None:
    env = {**path_listener.env, "WATCHDOG_USEC": "40000"}  # 40 ms timeout -> 20 ms pings
    task = asyncio.create_task(sd_notify.watchdog_loop(env=env))
    got = await asyncio.to_thread(lambda: [path_listener.recv(2.0) for _ in range(3)])
    assert got == ["WATCHDOG=1"] * 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    path_listener.sock.setblocking(False)
    drained = 0
    while True:
        try:
            path_listener.sock.recv(4096)
        except BlockingIOError:
            break
        drained += 1
    assert drained <= 1  # at most a ping already in flight when cancelled; then silence


async def test_watchdog_loop_returns_at_once_without_a_watchdog() -> None:
    await asyncio.wait_for(sd_notify.watchdog_loop(env={"NOTIFY_SOCKET": "/x"}), 1.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_serve_sends_ready_watchdog_and_stopping(
    path_listener: Listener, tmp_path: Path, serve_port: int
) -> None:
    """The real ``tope-updater serve`` process: READY=1 once the API listens (it answers
    then), WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM, then exit 0."""
    port = serve_port
    env = {
        **os.environ,
        **path_listener.env,
        "WATCHDOG_USEC": "400000",
        "TOPE_UPDATER_DEVICE_API_URL": "http://127.0.0.1:9",
    }
    env.pop("WATCHDOG_PID", None)
    argv = [sys.executable, "-m", "http_shell.cli", "serve", "--sandbox", str(tmp_path)]
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [*argv, "--port", str(port)], cwd=REPO, env=env, stdout=log, stderr=log
        )
    try:
        before_ready = path_listener.recv_until("READY=1")
        assert all(m == "WATCHDOG=1" for m in before_ready[:-1]), before_ready
        assert f"STATUS=listening on 127.0.0.1:{port}" in before_ready[-1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # READY came after the listener was up
        assert path_listener.recv(2.0) == "WATCHDOG=1"
        assert path_listener.recv(2.0) == "WATCHDOG=1"
        proc.send_signal(signal.SIGTERM)
        path_listener.recv_until("STOPPING=1", timeout=10)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        print((tmp_path / "serve.log").read_text(errors="replace")[-3000:])


def test_sigterm_with_undeliverable_reports_exits_promptly(tmp_path: Path, serve_port: int) -> None:
    """device-api is down (it often is: it is being updated) and a report is pending when
    systemd stops the updater: the process must still exit well within TimeoutStopSec."""
    port, dead = serve_port, _free_port()
    env = {**os.environ, "TOPE_UPDATER_DEVICE_API_URL": f"http://127.0.0.1:{dead}"}
    argv = [sys.executable, "-m", "http_shell.cli", "serve", "--sandbox", str(tmp_path)]
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [*argv, "--port", str(port)], cwd=REPO, env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 15
        while True:  # wait for the API
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "API never came up"
                time.sleep(0.05)
        body = {
            "version": "1.1.0",
            "package_url": f"http://127.0.0.1:{dead}/pkg.zip",
            "package_name": "pkg.zip",
            "package_size": 1000,
            "package_md5": "0" * 32,
        }
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1.0/download",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.load(resp)["code"] == 200
        time.sleep(1.0)  # reports are queued and failing now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=8) == 0  # a 2 s report flush, then exit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_notify_keeps_one_socket_open(path_listener: Listener) -> None:
    """Pings cost no new descriptor: the socket opened by the first one is kept."""
    sd_notify.close_sockets()
    try:
        assert sd_notify.notify("WATCHDOG=1", env=path_listener.env) is True
        after_first = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            assert sd_notify.notify("WATCHDOG=1", env=path_listener.env) is True
        assert len(os.listdir("/proc/self/fd")) == after_first
        assert [path_listener.recv() for _ in range(21)] == ["WATCHDOG=1"] * 21
    finally:
        sd_notify.close_sockets()


def test_notify_reaches_a_socket_bound_anew(tmp_path: Path) -> None:
    """systemd re-executed binds its socket again: the kept socket is replaced."""
    directory = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(directory, "notify")
    env = {"NOTIFY_SOCKET": path}
    try:
        for _ in range(2):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.bind(path)
                sock.settimeout(5)
                assert sd_notify.notify("WATCHDOG=1", env=env) is True
                assert sock.recv(100) == b"WATCHDOG=1"
            os.unlink(path)
    finally:
        sd_notify.close_sockets()
        shutil.rmtree(directory, ignore_errors=True)


_OUT_OF_DESCRIPTORS = """
import os, resource, sys
from http_shell.daemon import sd_notify

resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
env = {"NOTIFY_SOCKET": sys.argv[1]}
assert sd_notify.notify("WATCHDOG=1", env=env)
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError as exc:
    assert exc.errno == 24, exc  # EMFILE: not one descriptor left
print(sd_notify.notify("WATCHDOG=1", env=env), flush=True)
"""


def test_notify_works_when_descriptors_run_out(path_listener: Listener) -> None:
    """A process at its descriptor limit still feeds the watchdog (before: EMFILE)."""
    out = subprocess.run(
        [sys.executable, "-c", _OUT_OF_DESCRIPTORS, path_listener.env["NOTIFY_SOCKET"]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.strip() == "True", out.stderr
    assert [path_listener.recv(), path_listener.recv()] == ["WATCHDOG=1"] * 2
