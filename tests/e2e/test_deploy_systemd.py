"""Ship it: ``systemd/install.sh`` → ``tope-updater.service`` under a real systemd → an OTA
update through the HTTP API → ``systemd/uninstall.sh``.

Everything is the shipped artefact: install.sh builds a real venv from this checkout with
``/usr/bin/python3`` (pip install, ~8 s), the unit file is the hardened one from
``systemd/`` (``Type=notify``, watchdog, ``ProtectSystem=strict`` …), the device service
is ``systemd/examples/device-api.service`` with its paths moved into the test's root, the
package is built by ``tope-updater package build``. The sandboxed systemd shares the
host's filesystem and network, so the test reaches the API on 127.0.0.1 and reads the
install root directly.

The install lives under ``/var/lib/tope-e2e-*``, not pytest's ``tmp_path``: the unit's
``PrivateTmp=yes`` hides the host's ``/tmp`` from the service (and ``ProtectHome=yes``
hides ``/root``), which is exactly what the shipped unit must be tested with.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.support.package_server import Behaviour, ThreadedPackageServer
from tests.support.systemd_sandbox import SystemdSandbox

pytestmark = pytest.mark.systemd

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "systemd" / "install.sh"
UNINSTALL = REPO / "systemd" / "uninstall.sh"
EXAMPLE_UNIT = REPO / "systemd" / "examples" / "device-api.service"
SYSTEM_PYTHON = Path("/usr/bin/python3")
UNIT = "tope-updater.service"
PAYLOAD_BYTES = 3 * 1024 * 1024  # random, so the ZIP is as big: ~3 s at the throttled rate
THROTTLE_BPS = 1_000_000
WATCHDOG_S = 3  # the test's drop-in: a missed ping would show up within the test


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
def device_api() -> Iterator[DeviceApiStub]:
    stub = DeviceApiStub()
    try:
        yield stub
    finally:
        stub.close()


def mount_options(sandbox: SystemdSandbox, pid: str) -> dict[str, str]:
    """Mount point → options of the (sandbox) process ``pid``, as it sees its mounts."""
    out = run([*sandbox.nsenter_prefix, "cat", f"/proc/{pid}/mountinfo"])
    mounts = {}
    for line in out.splitlines():
        fields = line.split(" ")
        mounts[fields[4]] = fields[5]  # later mounts shadow earlier ones
    return mounts


def test_install_serve_update_restart_and_uninstall(
    systemd_sandbox: SystemdSandbox, site: Site, device_api: DeviceApiStub
) -> None:
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"needs {SYSTEM_PYTHON} (outside /root: the unit has ProtectHome=yes)")
    sandbox = systemd_sandbox
    port = free_port()

    # ---- factory content and the device service (the shipped example unit) ----------------
    factory = site.base / "factory"
    write_exe(factory / "bin" / "device-api", device_script("1.0.0", site.status))
    (factory / "services" / "device-api").mkdir(parents=True)
    (factory / "services" / "device-api" / "settings.json").write_text("{}\n")
    example = EXAMPLE_UNIT.read_text()
    assert "ExecStart=/usr/local/bin/device-api" in example
    sandbox.install_unit(
        "device-api.service",
        example.replace("/usr/local/bin/", f"{site.bin_links}/").replace(
            "/opt/tope/", f"{site.root}/"
        ),
    )
    # A short watchdog: if pings did not arrive, systemd would kill the updater mid-test.
    dropin = sandbox.unit_dir / f"{UNIT}.d"
    dropin.mkdir()
    (dropin / "test.conf").write_text(f"[Service]\nWatchdogSec={WATCHDOG_S}\n")

    # ---- install.sh, twice: the second run must change nothing it should keep ---------------
    systemctl = " ".join(sandbox.systemctl_prefix)
    install = [
        str(INSTALL),
        *("--root", str(site.root), "--prefix", str(site.prefix)),
        *("--config-dir", str(site.config_dir), "--unit-dir", str(sandbox.unit_dir)),
        *("--bin-links", str(site.bin_links), "--from", str(factory), "--version", "1.0.0"),
        *("--port", str(port), "--device-api-url", device_api.url),
        *("--python", str(SYSTEM_PYTHON), "--systemctl", systemctl),
        *("--unit", "device-api"),
        "--no-enable",  # enable would write links into the host's /etc
    ]
    run([*install, "--no-start"])
    assert show(sandbox, UNIT)["ActiveState"] == "inactive"
    config = site.config_dir / "config.toml"
    assert f"port = {port}" in config.read_text()
    assert '\nunits = ["device-api"]\n' in config.read_text()
    with config.open("a") as fh:
        fh.write("settle_s = 1.0\n")  # a local edit install.sh must keep
    out = run(install)
    assert "config.toml (kept)" in out and "setup OK" in out, out
    assert config.read_text().endswith("settle_s = 1.0\n")
    # The Moonraker busy probe ships beside the venv, named (commented out) in the config.
    assert os.access(site.prefix / "busy-probe-moonraker.sh", os.X_OK)
    assert f'# busy_probe = "{site.prefix}/busy-probe-moonraker.sh' in config.read_text()
    # The progress display's unit, with this install's paths, known to systemd, not enabled.
    screen_unit = (sandbox.unit_dir / "tope-updater-screen.service").read_text()
    current_updater = site.prefix / "current" / "bin" / "tope-updater"
    assert f"ExecStart={current_updater} screen --config {config}" in screen_unit
    # The updater's own slot: current -> versions/<its version>, the guard before each start.
    version = importlib.metadata.version("tope-updater")
    assert os.readlink(site.prefix / "current") == f"versions/{version}"
    assert not (site.prefix / "previous").exists() and not (site.prefix / "venv").exists()
    assert (site.prefix / "versions" / version / ".tope-slot-complete").is_file()
    unit_text = (sandbox.unit_dir / UNIT).read_text()
    assert f"ExecStart={site.prefix}/current/bin/tope-updater serve" in unit_text
    assert f"ExecStartPre=+{site.prefix}/updater-guard.sh {site.prefix} {UNIT}" in unit_text
    assert os.access(site.prefix / "updater-guard.sh", os.X_OK)
    screen = show(sandbox, "tope-updater-screen.service")
    assert (screen["LoadState"], screen["ActiveState"]) == ("loaded", "inactive"), screen

    # Type=notify: "active" means READY=1 arrived, i.e. the API listens.
    props = show(sandbox, UNIT)
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert props["WatchdogUSec"] == f"{WATCHDOG_S}s", props
    updater_pid = props["MainPID"]
    link = site.bin_links / "device-api"
    assert os.readlink(link) == f"{site.root}/versions/current/bin/device-api"

    # The hardening is in force: / is read-only for the updater, its root is writable.
    mounts = mount_options(sandbox, updater_pid)
    assert "ro" in mounts["/"].split(","), mounts["/"]
    assert "rw" in mounts[str(site.root)].split(","), mounts.get(str(site.root))
    # …and so is its prefix: a self-update writes a slot there and moves `current`.
    assert "rw" in mounts[str(site.prefix)].split(","), mounts.get(str(site.prefix))
    status = run([*sandbox.nsenter_prefix, "cat", f"/proc/{updater_pid}/status"])
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2", fields
    assert not int(fields["CapBnd"], 16) & (1 << 19), fields["CapBnd"]  # no CAP_SYS_PTRACE

    sandbox.systemctl("start", "device-api.service", check=True)
    api = Api(port, site)
    data = api.progress()
    assert data["stage"] == "idle" and data["current_version"] == "1.0.0", data

    # ---- a package, built by the shipped CLI ------------------------------------------------
    src = site.base / "pkg-src"
    write_exe(src / "bin" / "device-api", device_script("1.1.0", site.status))
    (src / "lib").mkdir()
    (src / "lib" / "payload.bin").write_bytes(os.urandom(PAYLOAD_BYTES))
    (src / "tope-package.toml").write_text(
        '[modules."bin/device-api"]\nprocess_name = "device-api"\nrestart_order = 1\n'
    )
    pkg = site.base / "update-1.1.0.zip"
    build = [str(site.updater), "package", "build", str(src), "--version", "1.1.0"]
    built = json.loads(run([*build, "-o", str(pkg), "--root", str(site.root), "--json"]))

    with ThreadedPackageServer() as srv:
        url = srv.call(srv.server.add_file, pkg.name, pkg, Behaviour(rate_bps=THROTTLE_BPS))
        body = {k: built[k] for k in ("version", "package_name", "package_size", "package_md5")}
        body |= {"package_url": url, "package_sha256": built["package_sha256"]}
        reply = api.call("POST", "/download", body)
        assert reply["code"] == 200 and reply["data"]["status"] == "downloading", reply

        # ---- restart the service mid-download: it must resume with a Range request ---------
        api.wait(
            lambda d: d["stage"] == "downloading" and d["bytes_downloaded"] >= 1_500_000,
            "1.5 MB downloaded",
        )
        srv.call(srv.server.set_behaviour, pkg.name, Behaviour())  # full speed from now on
        sandbox.systemctl("restart", UNIT, check=True)  # returns after the new READY=1
        props = show(sandbox, UNIT)
        assert props["ActiveState"] == "active" and props["MainPID"] != updater_pid, props
        data = api.wait(lambda d: d["stage"] == "toInstall", "verified", timeout=20)
        requests = srv.server.requests(pkg.name)

    size = built["package_size"]
    assert len(requests) == 2, requests
    first, second = requests
    assert first.range is None and 0 < first.bytes_sent < size, first
    assert second.range is not None and second.range.startswith("bytes="), second
    resumed_at = int(second.range.removeprefix("bytes=").split("-")[0])
    assert resumed_at >= 1_000_000, second  # a durable checkpoint, not a restart from 0
    assert second.if_range is not None, second  # guarded: a changed file is never spliced
    assert second.status == 206 and second.bytes_sent == size - resumed_at, second

    # ---- install: stop/switch/start device-api from inside the hardened unit ---------------
    reply = api.call("POST", "/update", {"version": "1.1.0"})
    assert reply["code"] == 200 and reply["data"]["status"] == "installing", reply
    data = api.wait(lambda d: d["stage"] == "success", "installed", timeout=40)
    assert (data["current_version"], data["previous_version"], data["factory_version"]) == (
        "1.1.0", "1.0.0", "1.0.0",
    ), data  # fmt: skip
    device = show(sandbox, "device-api.service")
    assert device["ActiveState"] == "active", device
    assert site.status.read_text().split() == ["1.1.0", device["MainPID"]]
    assert link.resolve() == site.root / "versions" / "v1.1.0" / "bin" / "device-api"
    factory_mode = stat.S_IMODE((site.root / "versions" / "v1.0.0").stat().st_mode)
    assert factory_mode == 0o555
    # device-api heard it all, through both updater processes, ending with the outcome.
    stages = [r["stage"] for r in device_api.reports]
    assert {"downloading", "toInstall", "installing"} <= set(stages), stages
    deadline = time.monotonic() + 5
    while device_api.reports[-1]["stage"] != "success" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert device_api.reports[-1] == {
        "stage": "success", "progress": 100, "message": device_api.reports[-1]["message"],
        "error": None, "version": "v1.1.0",
    }, device_api.reports[-1]  # fmt: skip

    # The watchdog never fired (NRestarts counts automatic restarts, not ours).
    props = show(sandbox, UNIT)
    assert props["ActiveState"] == "active" and props["NRestarts"] == "0", props

    # ---- manual rollback with the journal gone: the configured `units` are restarted -------
    sandbox.systemctl("stop", UNIT, check=True)
    for name in ("journal.json", "journal.prev.json"):  # both: prev would be resumed
        journal = site.root / ".updater" / name
        journal.rename(journal.with_name(f"{name}.lost"))
    sandbox.systemctl("start", UNIT, check=True)
    api = Api(port, site)
    assert api.progress()["stage"] == "idle"
    reply = api.call("POST", "/rollback", {"target": "previous"})
    assert reply["code"] == 200 and reply["data"]["status"] == "rolling_back", reply
    data = api.wait(
        lambda d: d["stage"] == "idle" and d["current_version"] == "1.0.0", "rolled back"
    )
    assert data["error"] is None and data["previous_version"] == "1.1.0", data
    device = show(sandbox, "device-api.service")
    assert device["ActiveState"] == "active", device
    assert site.status.read_text().split() == ["1.0.0", device["MainPID"]]  # restarted

    # ---- uninstall: the updater goes, the device's versions stay ----------------------------
    out = run([
        str(UNINSTALL), "--root", str(site.root), "--prefix", str(site.prefix),
        "--config-dir", str(site.config_dir), "--unit-dir", str(sandbox.unit_dir),
        "--bin-links", str(site.bin_links), "--systemctl", systemctl, "--no-disable",
    ])  # fmt: skip
    props = show(sandbox, UNIT)
    assert props["LoadState"] == "not-found" and props["ActiveState"] == "inactive", props
    assert not (sandbox.unit_dir / "tope-updater-screen.service").exists()
    assert not site.prefix.exists() and not link.is_symlink(), out
    assert os.readlink(site.root / "versions" / "current") == "v1.0.0"
    assert os.readlink(site.root / "versions" / "previous") == "v1.1.0"
    assert os.readlink(site.root / "versions" / "factory") == "v1.0.0"
    assert config.exists()
