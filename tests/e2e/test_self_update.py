"""The updater updates itself, under a real systemd, with real release bundles (issue 15).

The device runs what ``install.sh --bundle`` installs from a bundle built by
``systemd/bundle.py`` from this tree (updater 0.1.0): the shipped unit (``Type=notify``,
``Restart=always``, the hardening), the guard ``updater-guard.sh`` as ``ExecStartPre``, the
updater in the slot ``<prefix>/versions/0.1.0``. The new updaters are bundles built the same
way from a copy of this tree with another version in ``pyproject.toml`` (0.2.0), one of them
broken on purpose (0.3.0: ``http_shell/daemon.py`` raises at import, so ``serve`` dies at
every start). Packages are built by the installed ``tope-updater package build
--updater-bundle``, served over HTTP and installed through the API like device-api does.

**Needs PyPI** to build the bundles (once per session; skipped when unreachable).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable, Iterator
from http.client import HTTPException
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.e2e.test_bundle import ARCH, BUILD_TIMEOUT_S, pypi_reachable
from tests.e2e.test_deploy_systemd import (
    EXAMPLE_UNIT,
    INSTALL,
    SYSTEM_PYTHON,
    UNIT,
    Api,
    DeviceApiStub,
    Site,
    device_script,
    free_port,
    run,
    show,
    write_exe,
)
from tests.e2e.test_deploy_systemd import device_api as device_api  # the fixture
from tests.e2e.test_deploy_systemd import site as site  # the fixture
from tests.support.package_server import Behaviour, ThreadedPackageServer
from tests.support.systemd_sandbox import SystemdSandbox

pytestmark = pytest.mark.systemd

REPO = Path(__file__).resolve().parents[2]
BASE, NEW, BROKEN = "0.1.0", "0.2.0", "0.3.0"
BROKEN_LINE = 'raise RuntimeError("tope-updater 0.3.0 is broken on purpose (test_self_update)")\n'


@attrs.frozen
class Bundles:
    base: Path
    new: Path
    broken: Path


def build_bundle(tmp: Path, version: str, *, broken: bool = False) -> Path:
    """``tope-updater-<version>-<arch>.tar.gz`` by systemd/bundle.py, from a copy of this
    tree whose pyproject.toml says ``version`` (and whose ``serve`` dies when ``broken``)."""
    src = tmp / f"src-{version}"
    ignore = shutil.ignore_patterns(
        ".*", "build", "dist", "var", "tests", "bench", "*.egg-info", "__pycache__"
    )
    shutil.copytree(REPO, src, ignore=ignore)
    pyproject = src / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', text, count=1))
    if broken:
        daemon = src / "http_shell" / "daemon.py"
        head, sep, tail = daemon.read_text().partition("from __future__ import annotations\n")
        daemon.write_text(head + sep + BROKEN_LINE + tail)
    out = tmp / "out"
    proc = subprocess.run(
        [sys.executable, str(src / "systemd" / "bundle.py"), "--arch", ARCH, "-o", str(out)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"bundle.py exited {proc.returncode}\n{proc.stderr}"
    (summary,) = json.loads(proc.stdout)
    return Path(summary["bundle"])


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    if ARCH not in ("x86_64", "aarch64", "armv7l"):
        pytest.skip(f"bundles are built for x86_64, aarch64, armv7l; this machine is {ARCH}")
    if not pypi_reachable():
        pytest.skip("needs PyPI (pypi.org:443 unreachable): the bundles are built from it")
    tmp = tmp_path_factory.mktemp("self-update-bundles")
    return Bundles(
        base=build_bundle(tmp, BASE),
        new=build_bundle(tmp, NEW),
        broken=build_bundle(tmp, BROKEN, broken=True),
    )


@attrs.define
class Device:
    """One installed device: the site, its API, device-api's stub and the sandbox."""

    site: Site
    sandbox: SystemdSandbox
    api: Api
    device_api: DeviceApiStub
    port: int

    @property
    def prefix(self) -> Path:
        return self.site.prefix

    def healthz(self) -> dict[str, Any] | None:
        """``/healthz``'s data, or None while nothing listens (the updater restarts)."""
        try:
            data: dict[str, Any] = self.api.call("GET", "/healthz")["data"]
        except (urllib.error.URLError, ConnectionError, TimeoutError, HTTPException):
            return None
        return data

    def progress(self) -> dict[str, Any] | None:
        try:
            return self.api.progress()
        except (urllib.error.URLError, ConnectionError, TimeoutError, HTTPException):
            return None

    def wait(
        self, until: Callable[[dict[str, Any]], bool], what: str, timeout: float = 90.0
    ) -> dict[str, Any]:
        """Poll /progress (through updater restarts) until ``until(data)``."""
        deadline = time.monotonic() + timeout
        data: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            data = self.progress()
            if data is not None and until(data):
                return data
            time.sleep(0.1)
        raise AssertionError(f"not {what} after {timeout} s: {data}\n{self.api.log_tail()}")

    def seconds_between(self, first: str, then: str) -> float:
        """Seconds from the first log event ``first`` to the first ``then`` after it."""
        stamps: dict[str, float] = {}
        for line in self.site.log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            name = entry.get("event")
            if name in (first, then) and name not in stamps:
                stamp = datetime.datetime.fromisoformat(entry["timestamp"]).timestamp()
                if name == first or first in stamps:
                    stamps[name] = stamp
        assert first in stamps and then in stamps, (first, then, stamps)
        return stamps[then] - stamps[first]

    def links(self) -> tuple[str | None, str | None]:
        def read(name: str) -> str | None:
            path = self.prefix / name
            return os.readlink(path) if os.path.lexists(path) else None

        return read("current"), read("previous")

    def package(self, version: str, *, bundle: Path | None, healthy: bool = True) -> Path:
        """A package replacing bin/device-api (exits at once unless ``healthy``)."""
        src = self.site.base / f"pkg-{version}"
        script = device_script(version, self.site.status)
        if not healthy:
            script = f'#!/bin/sh\necho "v{version}: cannot start" >&2\nexit 1\n'
        write_exe(src / "bin" / "device-api", script)
        (src / "tope-package.toml").write_text(
            '[modules."bin/device-api"]\nprocess_name = "device-api"\nrestart_order = 1\n'
        )
        out = self.site.base / f"update-{version}.zip"
        argv = [str(self.site.updater), "package", "build", str(src), "--version", version]
        argv += ["-o", str(out), "--root", str(self.site.root), "--json"]
        if bundle is not None:
            argv += ["--updater-bundle", str(bundle)]
        built = json.loads(run(argv))
        assert built["updater"] == (None if bundle is None else bundle.name.split("-")[2])
        return out

    def install(self, pkg: Path, version: str, server: ThreadedPackageServer) -> None:
        """POST /download, wait for the verification, POST /update."""
        data = pkg.read_bytes()
        url = server.call(server.server.add_file, pkg.name, pkg, Behaviour())
        body = {
            "version": version,
            "package_url": url,
            "package_name": pkg.name,
            "package_size": len(data),
            "package_md5": hashlib.md5(data).hexdigest(),
            "package_sha256": hashlib.sha256(data).hexdigest(),
        }
        reply = self.api.call("POST", "/download", body)
        assert reply["code"] == 200, reply
        self.wait(lambda d: d["stage"] == "toInstall", f"v{version} verified", timeout=30)
        reply = self.api.call("POST", "/update", {"version": version})
        assert reply["code"] == 200, reply


@pytest.fixture
def device(
    bundles: Bundles, systemd_sandbox: SystemdSandbox, site: Site, device_api: DeviceApiStub
) -> Iterator[Device]:
    """install.sh --bundle (updater 0.1.0) + device-api.service on factory 1.0.0."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"needs {SYSTEM_PYTHON} (outside /root: the unit has ProtectHome=yes)")
    sandbox = systemd_sandbox
    port = free_port()
    factory = site.base / "factory"
    write_exe(factory / "bin" / "device-api", device_script("1.0.0", site.status))
    (factory / "services" / "device-api").mkdir(parents=True)  # the unit's WorkingDirectory
    sandbox.install_unit(
        "device-api.service",
        EXAMPLE_UNIT.read_text()
        .replace("/usr/local/bin/", f"{site.bin_links}/")
        .replace("/opt/tope/", f"{site.root}/"),
    )
    install = [
        str(INSTALL), "--bundle", str(bundles.base),
        *("--root", str(site.root), "--prefix", str(site.prefix)),
        *("--config-dir", str(site.config_dir), "--unit-dir", str(sandbox.unit_dir)),
        *("--bin-links", str(site.bin_links), "--from", str(factory), "--version", "1.0.0"),
        *("--port", str(port), "--device-api-url", device_api.url),
        *("--python", str(SYSTEM_PYTHON), "--systemctl", " ".join(sandbox.systemctl_prefix)),
        *("--unit", "device-api", "--no-enable", "--no-start"),
    ]  # fmt: skip
    run(install, timeout=300)
    with (site.config_dir / "config.toml").open("a") as fh:
        fh.write("settle_s = 1.0\n")
    sandbox.systemctl("start", UNIT, check=True)
    sandbox.systemctl("start", "device-api.service", check=True)
    dev = Device(site, sandbox, Api(port, site), device_api, port)
    health = dev.healthz()
    assert health is not None and health["updater_version"] == BASE, health
    assert dev.links() == (f"versions/{BASE}", None)
    yield dev


def test_a_good_self_update_then_the_next_update_runs_on_the_new_updater(
    device: Device, bundles: Bundles
) -> None:
    pkg = device.package("1.1.0", bundle=bundles.new)
    with ThreadedPackageServer() as server:
        device.install(pkg, "1.1.0", server)
        data = device.wait(lambda d: d["stage"] == "success", "self-updated", timeout=120)
        health = device.healthz()
        assert health is not None and health["updater_version"] == NEW, health
        took = device.seconds_between("updater.switching", "updater.confirmed")
        print(f"switching the updater -> new updater confirmed: {took:.1f} s")
        assert data["current_version"] == "1.1.0" and data["error"] is None, data
        assert device.links() == (f"versions/{NEW}", f"versions/{BASE}")
        assert not (device.prefix / "probation").exists()
        assert (device.prefix / "versions" / NEW / ".tope-slot-complete").is_file()
        assert show(device.sandbox, UNIT)["ActiveState"] == "active"

        # The next ordinary update (no updater in it) runs on the new updater.
        pkg = device.package("1.2.0", bundle=None)
        device.install(pkg, "1.2.0", server)
        data = device.wait(
            lambda d: d["stage"] == "success" and d["version"] == "1.2.0", "v1.2.0 installed"
        )
    assert data["current_version"] == "1.2.0", data
    health = device.healthz()
    assert health is not None and health["updater_version"] == NEW, health
    assert sorted(os.listdir(device.prefix / "versions")) == [BASE, NEW]
    log = device.site.log.read_text()
    assert "updater.confirmed" in log and "exiting to hand over to the new updater" in log
    terminal = [r for r in device.device_api.reports if r["stage"] == "success"]
    assert [r["version"] for r in terminal][-2:] == ["v1.1.0", "v1.2.0"], terminal


def test_a_broken_new_updater_is_put_back_and_reported_once(
    device: Device, bundles: Bundles
) -> None:
    pkg = device.package("1.1.0", bundle=bundles.broken)
    with ThreadedPackageServer() as server:
        device.install(pkg, "1.1.0", server)
        data = device.wait(lambda d: d["stage"] == "failed", "back on the old updater", 120)
    recovery_s = device.seconds_between("updater.switching", "updater.rolled_back")
    print(f"broken updater {BROKEN} -> old updater back and reporting: {recovery_s:.1f} s")
    assert recovery_s < 30, recovery_s  # the figure docs/DEPLOYMENT.md states, with margin
    expected = f"UPDATER_ROLLBACK: {BROKEN} failed to start (exited 3 times during probation"
    assert data["error"].startswith(expected), data
    assert expected in data["message"], data
    health = device.healthz()
    assert health is not None and health["updater_version"] == BASE, health
    assert device.links()[0] == f"versions/{BASE}"
    # The device's own new version stands: it was healthy before the updater switched.
    assert data["current_version"] == "1.1.0", data
    # Reported once: the guard's record is consumed, the failed slot collected.
    deadline = time.monotonic() + 10
    while (device.prefix / "updater-rollback").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (device.prefix / "updater-rollback").exists()
    assert sorted(os.listdir(device.prefix / "versions")) == [BASE]
    rollbacks = [r for r in device.device_api.reports if (r["error"] or "").startswith(expected)]
    assert len(rollbacks) == 1, device.device_api.reports
    # A restart of the old updater does not report it as a new failure of the updater.
    device.sandbox.systemctl("restart", UNIT, check=True)
    device.wait(lambda d: d["stage"] == "failed", "restarted")
    assert not (device.prefix / "updater-rollback").exists()


def test_a_device_that_fails_its_health_check_never_switches_the_updater(
    device: Device, bundles: Bundles
) -> None:
    pkg = device.package("1.1.0", bundle=bundles.new, healthy=False)
    with ThreadedPackageServer() as server:
        device.install(pkg, "1.1.0", server)
        data = device.wait(lambda d: d["stage"] == "failed", "rolled back", timeout=90)
    assert data["error"].startswith("ROLLBACK_LEVEL_1_SUCCESS"), data
    assert data["current_version"] == "1.0.0", data
    assert device.links() == (f"versions/{BASE}", None)
    assert sorted(os.listdir(device.prefix / "versions")) == [BASE]
    assert not (device.prefix / "probation").exists()
    health = device.healthz()
    assert health is not None and health["updater_version"] == BASE, health
