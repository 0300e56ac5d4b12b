"""Self-update rigs for the real-systemd tests: release bundles of "new" updaters built by
systemd/bundle.py from a copy of this tree with another version (one of them broken on
purpose), and a :class:`Device`: install.sh --bundle under the sandbox's systemd, with
device-api.service, driven through the HTTP API as device-api drives it.

The ``updater_bundles`` fixture (session: three bundle builds, ~10 s each with a warm pip
cache) **needs PyPI**; it skips when pypi.org cannot be reached.
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
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.e2e.deploy_site import (
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
    write_exe,
)
from tests.e2e.test_bundle import ARCH, BUILD_TIMEOUT_S, pypi_reachable
from tests.support.package_server import Behaviour, ThreadedPackageServer
from tests.support.systemd_sandbox import SystemdSandbox

REPO = Path(__file__).resolve().parents[2]
BASE, NEW, BROKEN, HANGING = "0.1.0", "0.2.0", "0.3.0", "0.4.0"
BROKEN_LINE = 'raise RuntimeError("tope-updater 0.3.0 is broken on purpose (tests)")\n'


@attrs.frozen
class Bundles:
    base: Path
    new: Path
    broken: Path
    hanging: Path


#: Patched into updater_fsm/runner/self_update.py of the "hanging" updater: it starts, serves,
#: pings the watchdog, but never confirms its probation.
HANG = (
    'crash_point("updater:probation_begun")',
    "await asyncio.Event().wait()  # never confirms (tests/support/self_update.py)",
)


def build_bundle(
    tmp: Path,
    version: str,
    *,
    broken: bool = False,
    hangs: bool = False,
    arch: str = ARCH,
    wheel_cache: Path | None = None,
) -> Path:
    """``tope-updater-<version>-<arch>.tar.gz`` by systemd/bundle.py, from a copy of this
    tree whose pyproject.toml says ``version`` (and whose ``serve`` dies when ``broken``);
    for this machine's architecture unless ``arch`` says another (with ``wheel_cache``:
    the wheels PyPI lacks there, systemd/build_wheels.py's)."""
    src = tmp / f"src-{version}"
    ignore = shutil.ignore_patterns(
        ".*", "build", "dist", "var", "tests", "bench", "*.egg-info", "__pycache__"
    )
    shutil.copytree(REPO, src, ignore=ignore)
    pyproject = src / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', text, count=1))
    if broken:
        daemon = src / "http_shell" / "daemon" / "assembly.py"
        head, sep, tail = daemon.read_text().partition("from __future__ import annotations\n")
        daemon.write_text(head + sep + BROKEN_LINE + tail)
    if hangs:
        runner = src / "updater_fsm" / "runner" / "self_update.py"
        assert runner.read_text().count(HANG[0]) == 1
        runner.write_text(runner.read_text().replace(*HANG))
    out = tmp / "out"
    argv = [sys.executable, str(src / "systemd" / "bundle.py"), "--arch", arch, "-o", str(out)]
    if wheel_cache is not None:
        argv += ["--wheel-cache", str(wheel_cache)]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
    )
    assert proc.returncode == 0, f"bundle.py exited {proc.returncode}\n{proc.stderr}"
    (summary,) = json.loads(proc.stdout)
    return Path(summary["bundle"])


#: Built once per test process, whichever module asks first (the fixture is imported by
#: each module that uses it, which gives each its own session-scoped instance).
_built: list[Bundles] = []


@pytest.fixture(scope="session")
def updater_bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    """Bundles 0.1.0 (this tree), 0.2.0, the broken 0.3.0 and the hanging 0.4.0, for this
    machine's arch."""
    if ARCH not in ("x86_64", "aarch64", "armv7l"):
        pytest.skip(f"bundles are built for x86_64, aarch64, armv7l; this machine is {ARCH}")
    if not _built:
        if not pypi_reachable():
            pytest.skip("needs PyPI (pypi.org:443 unreachable): the bundles are built from it")
        tmp = tmp_path_factory.mktemp("self-update-bundles")
        _built.append(
            Bundles(
                base=build_bundle(tmp, BASE),
                new=build_bundle(tmp, NEW),
                broken=build_bundle(tmp, BROKEN, broken=True),
                hanging=build_bundle(tmp, HANGING, hangs=True),
            )
        )
    return _built[0]


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

    def log_event(self, name: str) -> dict[str, Any]:
        """The first log entry whose event is ``name``."""
        for line in self.site.log.read_text().splitlines():
            try:
                entry: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == name:
                return entry
        raise AssertionError(f"no {name!r} in {self.site.log}")

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


def install_device(
    bundle: Path, sandbox: SystemdSandbox, site: Site, device_api: DeviceApiStub
) -> Device:
    """install.sh --bundle ``bundle`` (updater 0.1.0) + device-api.service on factory 1.0.0,
    settle_s 1 s; the updater is running and answers /healthz as 0.1.0."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"needs {SYSTEM_PYTHON} (outside /root: the unit has ProtectHome=yes)")
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
        str(INSTALL), "--bundle", str(bundle),
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
    return dev
