"""Socket activation without a service manager of our own: ``sd_listen_fds`` semantics, and
the real ``tope-updater serve`` started by ``systemd-socket-activate`` (systemd's own tool:
it binds the port, and on the first connection execs the command with the listening socket
as descriptor 3, ``LISTEN_FDS=1`` and ``LISTEN_PID`` set to the same PID).

The full story — ``tope-updater.socket`` installed by install.sh under a real systemd, the
idle exit and re-activation, the port never free through a kill -9 — is
tests/e2e/test_socket_activation.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from http_shell.daemon.listen_fds import listen_fds

REPO = Path(__file__).resolve().parents[2]
ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.mark.parametrize(
    "env",
    [
        {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"},  # meant for another
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": "many"},
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": "0"},
        {"LISTEN_FDS": "1"},
    ],
)
def test_descriptors_not_meant_for_us_are_ignored_and_the_variables_removed(
    env: dict[str, str],
) -> None:
    env = {k: v.format(pid=os.getpid()) for k, v in env.items()} | {"PATH": "/bin"}
    assert listen_fds(env) == []
    assert env == {"PATH": "/bin"}  # no child inherits them


def progress(port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1.0/progress"
    with urllib.request.urlopen(url, timeout=10) as resp:
        data: dict[str, Any] = json.load(resp)["data"]
        return data


def activated_serve(
    tmp_path: Path, port: int, idle_exit_s: float, *extra_env: str
) -> subprocess.Popen[bytes]:
    """``serve --sandbox`` behind ``systemd-socket-activate`` on ``port`` (not started yet:
    the tool waits for the first connection); ``extra_env``: more ``NAME=VALUE``."""
    assert ACTIVATE is not None
    argv = [
        ACTIVATE,
        *("-l", f"127.0.0.1:{port}"),
        *("-E", f"PYTHONPATH={REPO}", "-E", "TOPE_UPDATER_DEVICE_API_URL=http://127.0.0.1:9"),
        *("-E", f"TOPE_UPDATER_IDLE_EXIT_S={idle_exit_s}"),
        *(arg for value in extra_env for arg in ("-E", value)),
        *(sys.executable, "-m", "http_shell.cli", "serve", "--sandbox", str(tmp_path / "sb")),
    ]
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=log)
    log.close()
    deadline = time.monotonic() + 10
    while True:  # the tool binds the port before it waits
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break  # this connection activates the updater; it is answered later
        assert time.monotonic() < deadline, "systemd-socket-activate never listened"
        time.sleep(0.02)
    return proc


def stop(proc: subprocess.Popen[bytes], tmp_path: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print((tmp_path / "serve.log").read_text(errors="replace")[-3000:])


@pytest.mark.skipif(ACTIVATE is None, reason="needs systemd-socket-activate")
def test_serve_takes_the_passed_socket_and_exits_when_idle(tmp_path: Path, serve_port: int) -> None:
    """The first connection starts the updater, which answers on the socket it was given
    (it never binds: the port is the tool's); polled, it stays; left alone for
    ``idle_exit_s`` it exits 0."""
    port = serve_port
    proc = activated_serve(tmp_path, port, idle_exit_s=1.0)
    try:
        started = time.monotonic()
        data = progress(port)  # waits in the queue until serve listens
        assert data["stage"] == "idle", data
        while time.monotonic() - started < 3.0:  # polled: never idle for 1 s
            assert progress(port)["stage"] == "idle"
            time.sleep(0.2)
        assert proc.poll() is None, "exited while a client was polling"
        quiet = time.monotonic()
        assert proc.wait(timeout=15) == 0
        waited = time.monotonic() - quiet
        assert 0.9 <= waited <= 6.0, waited
        log = (tmp_path / "serve.log").read_text(errors="replace")
        assert '"socket_activated": true' in log and '"event": "idle exit"' in log, log[-2000:]
    finally:
        stop(proc, tmp_path)


@pytest.mark.skipif(ACTIVATE is None, reason="needs systemd-socket-activate")
def test_an_open_event_stream_keeps_it_running(tmp_path: Path, serve_port: int) -> None:
    """An ``/events`` subscriber is something in progress: no idle exit while it reads,
    the exit once it went away (noticed at the stream's next heartbeat, every 15 s)."""
    port = serve_port
    proc = activated_serve(tmp_path, port, idle_exit_s=0.5)
    try:
        assert progress(port)["stage"] == "idle"
        url = f"http://127.0.0.1:{port}/api/v1.0/events"
        with urllib.request.urlopen(url, timeout=10) as stream:
            assert stream.readline().startswith(b"id: "), "no first event"
            time.sleep(3.0)  # six times idle_exit_s, no request meanwhile
            assert proc.poll() is None, "exited under an open event stream"
        closed = time.monotonic()
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - closed <= 15.0 + 5.0
    finally:
        stop(proc, tmp_path)


@pytest.mark.skipif(ACTIVATE is None, reason="needs systemd-socket-activate")
def test_a_fleet_device_with_nobody_to_wake_it_stays_resident(
    tmp_path: Path, serve_port: int
) -> None:
    """With ``ddi_url`` set the updater exits between polls only when a timer can start it
    again: as the main process of a systemd service (tests/fleet/test_fleet_wake.py).
    Under ``systemd-socket-activate`` nothing would start it for the next poll, so it stays
    (docs/DEPLOYMENT.md, "Fleets")."""
    port, dead = serve_port, _free_port()
    ddi = f"TOPE_UPDATER_DDI_URL=http://127.0.0.1:{dead}"
    proc = activated_serve(tmp_path, port, 0.5, ddi)
    try:
        assert progress(port)["stage"] == "idle"
        time.sleep(3.0)  # six times idle_exit_s, no request meanwhile
        assert proc.poll() is None, "a fleet device idled out"
        log = (tmp_path / "serve.log").read_text(errors="replace")
        assert '"socket_activated": true, "idle_exit_s": null' in log, log[-2000:]
        assert '"event": "fleet device stays resident"' in log, log[-2000:]
    finally:
        stop(proc, tmp_path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_that_bound_the_port_itself_never_idles_out(tmp_path: Path, serve_port: int) -> None:
    """No socket passed (``./dev.sh run``, the demo): nobody would start it again, so
    ``idle_exit_s`` does not apply and it stays until stopped."""
    port = serve_port
    env = {
        **os.environ,
        "TOPE_UPDATER_DEVICE_API_URL": "http://127.0.0.1:9",
        "TOPE_UPDATER_IDLE_EXIT_S": "0.5",
    }
    argv = [sys.executable, "-m", "http_shell.cli", "serve", "--sandbox", str(tmp_path / "sb")]
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [*argv, "--port", str(port)], cwd=REPO, env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                assert progress(port)["stage"] == "idle"
                break
            except OSError:
                assert time.monotonic() < deadline, "API never came up"
                time.sleep(0.05)
        time.sleep(3.0)  # six times idle_exit_s
        assert proc.poll() is None, "a self-bound updater exited when idle"
        assert progress(port)["stage"] == "idle"
    finally:
        stop(proc, tmp_path)
