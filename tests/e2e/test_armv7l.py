"""The armv7l release bundle is complete and works there (issue 25), under qemu-user.

Opt-in (``slow``) and off CI's per-run path: it needs what ``systemd/build_wheels.py``
leaves in its cache (the Debian 12 armhf sysroot and the wheels PyPI lacks for armv7l),
``qemu-arm-static`` (apt-get install qemu-user-static; no binfmt_misc handler is needed,
the emulator is called directly with ``-L SYSROOT``) and PyPI (the bundle is built from
it). Each missing piece skips with the reason. The cache is ``$TOPE_WHEEL_CACHE``, else
``build/wheel-cache``::

    python3 systemd/build_wheels.py --cache build/wheel-cache cffi==2.1.1 backports-zstd==1.8.1
    .venv/bin/pytest -m slow tests/e2e/test_armv7l.py

Inside the emulated Debian 12 armhf CPython 3.11: a venv as a slot is built, and pip,
running on the emulated interpreter, installs the bundle into it offline (``--no-index
--find-links <bundle>/wheels``, so pip picks wheels by the emulated interpreter's tags),
then tests/e2e/armv7l_probe.py verifies an Ed25519 signature and applies a zstd delta
patch with the updater's code, and ``tope-updater --version`` runs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pip
import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLE_PY = REPO / "systemd" / "bundle.py"
PROBE = Path(__file__).with_name("armv7l_probe.py")
CACHE = Path(os.environ.get("TOPE_WHEEL_CACHE", REPO / "build" / "wheel-cache"))
SYSROOT = CACHE / "sysroot-armhf"
QEMU = shutil.which("qemu-arm-static") or shutil.which("qemu-arm")
BUILD_TIMEOUT_S = 1200
EMULATED_TIMEOUT_S = 900  # pip under qemu-user on 2 shared cores
# The module fixture's build counts against the first test's timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT_S + 2 * EMULATED_TIMEOUT_S)]


def pypi_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=10):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def armv7l_bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The armv7l bundle built with ``--wheel-cache``, unpacked."""
    if not (SYSROOT / ".tope-sysroot.json").exists() or not any(CACHE.glob("wheels/*.whl")):
        pytest.skip(f"no wheel cache at {CACHE}: run systemd/build_wheels.py (see this module)")
    if QEMU is None:
        pytest.skip("needs qemu-arm-static (apt-get install qemu-user-static)")
    if not pypi_reachable():
        pytest.skip("needs PyPI (pypi.org:443 unreachable): the bundle is built from it")
    out = tmp_path_factory.mktemp("armv7l")
    proc = subprocess.run(
        [sys.executable, str(BUNDLE_PY), "--arch", "armv7l", "--wheel-cache", str(CACHE),
         "-o", str(out)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"bundle.py exited {proc.returncode}\n{proc.stderr}"
    (summary,) = json.loads(proc.stdout)
    with tarfile.open(summary["bundle"]) as tar:
        tar.extractall(out / "unpacked", filter="data")
    (top,) = (out / "unpacked").iterdir()
    yield top


def emulated(
    python: Path, *args: str, pythonpath: Path | None = None
) -> subprocess.CompletedProcess[str]:
    assert QEMU is not None
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [QEMU, "-L", str(SYSROOT), str(python), *args],
        capture_output=True, text=True, timeout=EMULATED_TIMEOUT_S, check=False, env=env,
    )  # fmt: skip


def test_armv7l_bundle_is_complete(armv7l_bundle: Path) -> None:
    manifest = json.loads((armv7l_bundle / "manifest.json").read_text())
    assert (manifest["arch"], manifest["missing"]) == ("armv7l", [])
    assert not (armv7l_bundle / "MISSING.txt").exists()
    built = {b["name"]: b for b in manifest["built"]}
    assert set(built) == {"cffi", "backports-zstd"}
    files = {w["file"] for w in manifest["wheels"]}
    assert {b["file"] for b in built.values()} <= files
    assert built["cffi"]["needs"] == ["libffi.so.8"]
    assert all("cross-compiled" in b["how"] for b in built.values())


def test_armv7l_bundle_works_emulated(armv7l_bundle: Path, tmp_path: Path) -> None:
    version = json.loads((armv7l_bundle / "manifest.json").read_text())["version"]
    # As a slot is built (install.sh, self-update): a venv, then pip offline from the bundle.
    # The sysroot has no ensurepip (and pip's own subprocesses would need binfmt_misc), so
    # the venv is made --without-pip and pip (pure Python) comes from this test's venv.
    venv = tmp_path / "venv"
    made = emulated(
        SYSROOT / "usr" / "bin" / "python3.11", "-m", "venv", "--without-pip", str(venv)
    )
    assert made.returncode == 0, made.stdout + made.stderr
    pip_only = tmp_path / "pip-only"
    pip_only.mkdir()
    (pip_only / "pip").symlink_to(Path(pip.__file__).parent)
    python = venv / "bin" / "python"
    install = emulated(
        python, "-m", "pip", "install", "--no-index", "--find-links",
        str(armv7l_bundle / "wheels"), "--disable-pip-version-check",
        "--root-user-action=ignore", f"tope-updater=={version}", pythonpath=pip_only,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    probe = emulated(python, str(PROBE))
    assert probe.returncode == 0, probe.stdout + probe.stderr
    result = json.loads(probe.stdout.splitlines()[-1])
    assert result["machine"] == "armv7l"
    assert result["signature"] == "verified"
    assert result["wrong_signature"] == "UpdaterError"
    assert "arm-linux-gnueabihf" in result["cffi_backend"]
    cli = emulated(python, str(venv / "bin" / "tope-updater"), "--version")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert cli.stdout.strip() == f"tope-updater {version}"
