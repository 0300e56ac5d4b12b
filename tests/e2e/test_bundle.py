"""Offline release bundles: ``systemd/bundle.py`` builds one, ``install.sh --bundle``
installs it with no network under a real systemd (issue 15).

**Needs PyPI**: the bundle is built once per test session from PyPI (``pip download
--platform …``, generous timeout) for this machine's architecture; every test here skips
with the reason when PyPI cannot be reached. The install itself runs inside ``unshare -n``
(a network namespace with only a down loopback: no route anywhere) with ``PIP_NO_INDEX=1``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.deploy_site import SYSTEM_PYTHON, UNIT, Site, show
from tests.e2e.deploy_site import site as site  # the fixture
from tests.support.serve_port import free_port
from tests.support.systemd_sandbox import SystemdSandbox

REPO = Path(__file__).resolve().parents[2]
BUNDLE_PY = REPO / "systemd" / "bundle.py"
INSTALL = REPO / "systemd" / "install.sh"
ARCH = platform.machine()
BUILD_TIMEOUT_S = 1200  # a cold pip cache downloads ~10 MB of wheels


def pypi_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=10):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``tope-updater-<version>-<this arch>.tar.gz``, built once per session from PyPI."""
    if ARCH not in ("x86_64", "aarch64", "armv7l"):
        pytest.skip(f"bundles are built for x86_64, aarch64, armv7l; this machine is {ARCH}")
    if not pypi_reachable():
        pytest.skip("needs PyPI (pypi.org:443 unreachable): the bundle is built from it")
    out = tmp_path_factory.mktemp("bundle")
    proc = subprocess.run(
        [sys.executable, str(BUNDLE_PY), "--arch", ARCH, "-o", str(out)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"bundle.py exited {proc.returncode}\n{proc.stderr}"
    (summary,) = json.loads(proc.stdout)
    yield Path(summary["bundle"])


def unpack(bundle: Path, dest: Path) -> Path:
    with tarfile.open(bundle) as tar:
        tar.extractall(dest, filter="data")
    (top,) = dest.iterdir()
    return top


def test_bundle_contents(bundle: Path, tmp_path: Path) -> None:
    top = unpack(bundle, tmp_path)
    manifest = json.loads((top / "manifest.json").read_text())
    assert (manifest["arch"], manifest["python"], manifest["missing"]) == (ARCH, "cp311", [])
    assert top.name == f"tope-updater-{manifest['version']}-{ARCH}"
    files = {w["file"]: w for w in manifest["wheels"]}
    assert set(files) == {p.name for p in (top / "wheels").iterdir()}
    for name, entry in files.items():
        assert hashlib.sha256((top / "wheels" / name).read_bytes()).hexdigest() == entry["sha256"]
    names = {name.split("-")[0].lower() for name in files}
    assert {"tope_updater", "aiohttp", "cryptography", "cffi", "pyzstd", "backports_zstd"} <= names
    assert "pygame_ce" not in names  # the screen extra only with --with-screen
    for path in ("systemd/install.sh", "systemd/uninstall.sh", "systemd/tope-updater.service",
                 "systemd/tope-updater.socket", "systemd/tope-updater-screen.service",
                 "systemd/busy-probe-moonraker.sh", "docs/DEPLOYMENT.md"):  # fmt: skip
        assert (top / path).is_file(), path


def install_argv(site: Site, bundle: Path, unit_dir: Path, systemctl: str) -> list[str]:
    # The installed updater serves on a free port (never the default 12315, which a
    # developer's `./dev.sh run` may hold) and reports to a device-api nobody runs.
    return [
        str(INSTALL), "--bundle", str(bundle),
        *("--root", str(site.root), "--prefix", str(site.prefix)),
        *("--config-dir", str(site.config_dir), "--unit-dir", str(unit_dir)),
        *("--bin-links", str(site.bin_links), "--version", "1.0.0"),
        *("--port", str(free_port()), "--device-api-url", f"http://127.0.0.1:{free_port()}"),
        *("--python", str(SYSTEM_PYTHON), "--systemctl", systemctl, "--no-enable"),
    ]  # fmt: skip


def test_install_refuses_another_arch_and_a_corrupt_wheel(bundle: Path, tmp_path: Path) -> None:
    top = unpack(bundle, tmp_path / "unpacked")
    manifest_path = top / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    site = Site(tmp_path / "site")
    argv = [*install_argv(site, top, tmp_path / "units", "true"), "--no-start"]

    other = "armv7l" if ARCH != "armv7l" else "aarch64"
    manifest_path.write_text(json.dumps(manifest | {"arch": other}))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert f"this bundle is for {other}, this machine is {ARCH}" in proc.stderr, proc.stderr
    assert not site.prefix.exists()  # refused before anything was made

    manifest_path.write_text(json.dumps(manifest))
    wheel = top / "wheels" / manifest["project_wheel"]
    wheel.write_bytes(wheel.read_bytes() + b"x")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "SHA-256 does not match" in proc.stderr, proc.stderr
    assert not site.prefix.exists()


@pytest.mark.systemd
def test_offline_install_from_bundle(
    bundle: Path, systemd_sandbox: SystemdSandbox, site: Site
) -> None:
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"needs {SYSTEM_PYTHON} (outside /root: the unit has ProtectHome=yes)")
    version = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if version != "True":
        pytest.skip(f"the bundle's wheels are for CPython 3.11; {SYSTEM_PYTHON} is not")
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a network namespace")
    sandbox = systemd_sandbox
    # No network at all: a new network namespace (loopback down, no route), and pip told
    # to use no index on top.
    offline = ["env", "PIP_NO_INDEX=1", "unshare", "--net", "--"]
    probe = subprocess.run(
        [*offline, str(SYSTEM_PYTHON), "-c",
         "import socket; socket.create_connection(('151.101.0.223', 443), timeout=3)"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert probe.returncode != 0 and "unreachable" in probe.stderr.lower(), probe.stderr

    argv = install_argv(site, bundle, sandbox.unit_dir, " ".join(sandbox.systemctl_prefix))
    started = time.monotonic()
    proc = subprocess.run([*offline, *argv], capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, (
        f"install.sh exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    assert "setup OK" in proc.stdout, proc.stdout
    print(f"offline install from {bundle.name} ({bundle.stat().st_size / 1e6:.1f} MB): "
          f"{elapsed:.1f} s")  # fmt: skip

    props = show(sandbox, UNIT)
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    verify = subprocess.run(
        [str(site.updater), "verify-setup", "--config", str(site.config_dir / "config.toml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verify.returncode == 0 and "setup OK" in verify.stdout, verify.stdout + verify.stderr
    assert (site.prefix / "docs" / "DEPLOYMENT.md").is_file()
    assert (site.prefix / "uninstall.sh").is_file()
    # The bundle's socket unit, listening where the new config says the API is.
    port = next(
        line.split("=")[1].strip()
        for line in (site.config_dir / "config.toml").read_text().splitlines()
        if line.startswith("port =")
    )
    socket_unit = (sandbox.unit_dir / "tope-updater.socket").read_text()
    assert f"\nListenStream=127.0.0.1:{port}\n" in socket_unit, socket_unit
    assert show(sandbox, "tope-updater.socket")["ActiveState"] == "active"
