"""The shipped install under a real systemd, shared by the tests that deploy it: the paths
of one test installation, a device-api stub, a small API client and command helpers."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.support.systemd_sandbox import SystemdSandbox

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "systemd" / "install.sh"
UNINSTALL = REPO / "systemd" / "uninstall.sh"
EXAMPLE_UNIT = REPO / "systemd" / "examples" / "device-api.service"
SYSTEM_PYTHON = Path("/usr/bin/python3")
UNIT = "tope-updater.service"


@attrs.frozen
class Site:
    """Paths of one test installation (all below ``base``)."""

    base: Path

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def prefix(self) -> Path:
        return self.base / "prefix"

    @property
    def config_dir(self) -> Path:
        return self.base / "etc"

    @property
    def bin_links(self) -> Path:
        return self.base / "bin"

    @property
    def status(self) -> Path:
        return self.base / "device-api.status"

    @property
    def log(self) -> Path:
        return self.root / ".updater" / "logs" / "updater.log"

    @property
    def updater(self) -> Path:
        return self.prefix / "current" / "bin" / "tope-updater"


def device_script(version: str, status: Path) -> str:
    """The device service: report ``"<version> <pid>"``, then run (same PID) until stopped."""
    return (
        "#!/bin/sh\n"
        f'echo "{version} $$" > "{status}.tmp" && mv "{status}.tmp" "{status}"\n'
        "exec sleep 600\n"
    )


def write_exe(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run(argv: list[str], timeout: float = 120) -> str:
    """Run a command; fail the test with its output if it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv[0]} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def show(sandbox: SystemdSandbox, unit: str) -> dict[str, str]:
    props = "ActiveState,SubState,MainPID,NRestarts,LoadState,WatchdogUSec,Result"
    out = sandbox.systemctl("show", unit, "-p", props, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


class Api:
    """Minimal client of the updater's HTTP API (contract §1)."""

    def __init__(self, port: int, site: Site) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1.0"
        self.site = site

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.load(resp)

    def progress(self) -> dict[str, Any]:
        data: dict[str, Any] = self.call("GET", "/progress")["data"]
        return data

    def wait(self, until: Any, what: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll /progress until ``until(data)``; a ``failed`` stage fails the test at once."""
        deadline = time.monotonic() + timeout
        data: dict[str, Any] = {}
        while time.monotonic() < deadline:
            data = self.progress()
            if until(data):
                return data
            assert data["stage"] != "failed", f"{data}\n{self.log_tail()}"
            time.sleep(0.05)
        raise AssertionError(f"not {what} after {timeout} s: {data}\n{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return "\n".join(self.site.log.read_text(errors="replace").splitlines()[-40:])
        except OSError as exc:
            return f"(no updater log: {exc})"


class DeviceApiStub:
    """device-api as the updater sees it: ``POST /api/v1.0/ota/report`` answered
    ``{"code": 200}``; the bodies are kept (a thread-served stdlib HTTP server)."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path == "/api/v1.0/ota/report":
                    stub.reports.append(json.loads(body))
                reply = b'{"code": 200, "msg": "ok", "data": null}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    base = Path(tempfile.mkdtemp(prefix="tope-e2e-", dir="/var/lib"))
    try:
        yield Site(base)
    finally:
        for dirpath, dirnames, _ in os.walk(base):  # the factory snapshot is read-only
            for name in dirnames:
                path = Path(dirpath, name)
                if not path.is_symlink():
                    path.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def device_api() -> Iterator[DeviceApiStub]:
    stub = DeviceApiStub()
    try:
        yield stub
    finally:
        stub.close()


@attrs.define
class Poller:
    """device-api polling ``/progress`` every 200 ms, on a fresh connection each time."""

    port: int
    refused: list[str] = attrs.Factory(list)
    other_errors: list[str] = attrs.Factory(list)
    answers: int = 0
    slowest_s: float = 0.0
    _stop: threading.Event = attrs.Factory(threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)

    def _run(self) -> None:
        url = f"http://127.0.0.1:{self.port}/api/v1.0/progress"
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                with urllib.request.urlopen(url, timeout=60) as resp:
                    resp.read()
                self.answers += 1
                self.slowest_s = max(self.slowest_s, time.monotonic() - began)
            except urllib.error.URLError as exc:
                reason = exc.reason
                if isinstance(reason, ConnectionRefusedError):
                    self.refused.append(f"{time.monotonic():.2f} {reason}")
                else:
                    self.other_errors.append(f"{time.monotonic():.2f} {reason!r}")
            except OSError as exc:
                if isinstance(exc, ConnectionRefusedError):
                    self.refused.append(f"{time.monotonic():.2f} {exc}")
                else:
                    self.other_errors.append(f"{time.monotonic():.2f} {exc!r}")
            self._stop.wait(0.2)


def bind_fails(port: int) -> bool:
    """Whether another server could take the port now (it must not: EADDRINUSE).

    With ``SO_REUSEADDR``, as servers bind: the poller's closed connections linger in
    TIME_WAIT on the port, which alone would fail a plain bind; only a listener fails this.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE, exc
            return True
        return False
