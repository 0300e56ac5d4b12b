"""The ``arm`` tier (issue 25): the offline bundle installs and runs a whole update cycle on
emulated aarch64 and armv7l, and natively on x86_64 (the control and the figures' baseline).

``./dev.sh arm`` runs it (``.ci/run`` does, after ``./dev.sh test``); it needs root,
``qemu-user-static``, ``mmdebstrap``, ``gcc-arm-linux-gnueabihf``, Linux ≥ 6.7, PyPI and
Debian's mirror. Under ``.ci/run`` (``TOPE_ARM_TIER=required``) a missing piece fails it,
naming the piece; elsewhere the test skips with the reason.

**Set-up, per architecture, once per run** (under the test's temporary area; nothing is
cached between runs): a Debian 12 root (systemd/debian_root.py: ``mmdebstrap
--variant=extract``, nothing emulated); for armv7l the two wheels PyPI lacks, cross-compiled
by systemd/build_wheels.py against that same root (``bundle.py`` first names them:
exit 3, then complete); three release bundles by systemd/bundle.py from PyPI, as the
x86_64 self-update tests build them (tests/support/self_update.py): 0.1.0 (this tree),
0.2.0, and 0.3.0 broken on purpose (``serve`` dies at import).

**What runs emulated** (qemu-user-static through a binfmt_misc handler private to the
test's user namespace, in a chroot of that root; tests/support/emulation.py), on Debian's
own CPython 3.11 for the architecture:

* ``install.sh --bundle`` with the network unshared (``unshare --net`` + ``PIP_NO_INDEX``):
  the bundle's manifest and SHA-256 checks (armv7l: the ``built`` wheels' libffi.so.8 and
  glibc), ``python3 -m venv`` (ensurepip), pip installing the bundle's wheels offline,
  ``tope-updater init --from`` (the factory snapshot), the config, ``verify-setup``;
* ``tope-updater serve`` from the slot (``service_control = "none"``, ``trusted_key`` set),
  driven through the HTTP API by the crash harness's client (tests/crash/harness.py) and
  checked with its invariants after every step: a signed full package 1.1.0 (Ed25519
  verified on ARM), the delta 1.1.0 → 1.2.0 (zstd patches applied on ARM;
  tests/crash/test_delta_crash.py's), a package signed by an untrusted key refused
  (``SIGNATURE_INVALID``), a broken package rolled back (``ROLLBACK_LEVEL_1_SUCCESS``),
  a 50 MB package (the figures), the busy gate (tests/e2e/test_busy_gate.py's printer:
  the install waits while the probe says busy, nothing staged, then completes), a
  self-update to 0.2.0 (the running updater builds the new slot under emulation: venv +
  offline pip; exit 75; the guard ``updater-guard.sh`` before every start, a restart after
  every failed exit, as the unit's ``ExecStartPre=``/``Restart=on-failure`` would; the new
  updater proves itself and confirms) and one to the broken 0.3.0 (three failed starts,
  the guard's rollback to 0.2.0, ``UPDATER_ROLLBACK`` reported once). Health probes, post
  commands and the busy probe are ARM ``/bin/sh`` scripts.

**What does not run here, x86_64 systemd sandbox only** (tests/e2e/test_bundle.py,
test_install_systemd.py, test_self_update.py, test_socket_activation.py …): systemd itself
(cannot be PID 1 under user-mode emulation): the units, ``Type=notify``, the watchdog,
socket activation and idle exit, ``systemctl`` stop/start of device services, the
probation's transient timer (``systemd-run``), ``Restart=``/``ExecStartPre=`` as systemd
does them (here the test plays that part).

**Figures** (printed; docs/PERFORMANCE.md): cold start to the first ``/progress`` answer
and the install of a 50 MB package, emulated, as ratios to the same steps on x86_64 in
the same test (the x86_64 bundle installed natively by the same install.sh, the same
package and client), RSS absolute (under emulation that of qemu's process: the guest plus
the emulator), and the tier's own times.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.crash import harness as h
from tests.crash.test_delta_crash import BASE as DELTA_BASE
from tests.crash.test_delta_crash import NEW as DELTA_NEW
from tests.crash.test_delta_crash import REMOVED as DELTA_REMOVED
from tests.crash.test_delta_crash import _base_scenario, serve_delta
from tests.e2e.test_busy_gate import WAITING, Printer
from tests.support.emulation import (
    ARCHES,
    NATIVE,
    Device,
    Supervised,
    Target,
    check_requirements,
    host_handlers,
    make_root,
    timed_install,
)
from tests.support.package_server import ThreadedPackageServer
from tests.support.self_update import BASE, BROKEN, NEW, build_bundle
from updater_fsm.package.builder import build_package, generate_keypair, sign_file

pytestmark = [pytest.mark.arm, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
#: Per step of the cycle under emulation (a slot build alone takes a minute or two).
STEP_TIMEOUT_S = 600.0
BIG_BYTES = 50 * 1000 * 1000
Tree = dict[str, tuple[bytes, int]]
HELLO = b'#!/bin/sh\n[ "$1" = serve ] && exec sleep 600\necho hello %s\n'


def cross_build_wheels(work: Path, root: Path) -> Path:
    """The armv7l wheels PyPI lacks, as a release build makes them: ``bundle.py`` names
    them (exit 3), ``build_wheels.py`` cross-compiles them against ``root`` (the emulated
    armhf root is its sysroot); returns the wheel cache."""
    cache = work / "wheel-cache"
    first = work / "first-pass"
    proc = _run(
        [
            sys.executable,
            str(REPO / "systemd" / "bundle.py"),
            "--arch",
            "armv7l",
            "--wheel-cache",
            str(cache),
            "-o",
            str(first),
        ]
    )
    assert proc.returncode == 3, f"bundle.py exited {proc.returncode}, not 3\n{proc.stderr}"
    (summary,) = json.loads(proc.stdout)
    pins = sorted(f"{m['name']}=={m['version']}" for m in summary["missing"])
    assert [p.split("==")[0] for p in pins] == ["backports-zstd", "cffi"], pins
    proc = _run(
        [
            sys.executable,
            str(REPO / "systemd" / "build_wheels.py"),
            "--cache",
            str(cache),
            "--sysroot",
            str(root),
            *pins,
        ]
    )
    assert proc.returncode == 0, f"build_wheels.py exited {proc.returncode}\n{proc.stderr}"
    return cache


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=1200, check=False)


def signed(device: Device, pkg: Path, sc: h.Scenario, key: Path) -> None:
    """Serve ``pkg`` as the device's package for ``sc``, signed with ``key``."""
    device.serve(pkg, sc)
    device.request = {**device.request, "package_signature": sign_file(pkg, key)}


def installed(tree: Tree, sc: h.Scenario) -> Tree:
    """The device's tree (beyond the factory's) once ``sc`` succeeded."""
    out = {**tree, **sc.files}
    for rel in sc.removed:
        out.pop(rel, None)
    return out


def run_update(device: Device, proc: Any, floor: str | None = None) -> dict[str, Any]:
    """Drive the served update to its end and check the harness's invariants."""
    final = h.drive(device, proc, timeout=STEP_TIMEOUT_S)
    assert final is not None, f"the updater died: {proc.log_tail()}"
    h.check_invariants(device, final, settle_s=60, floor=floor)
    return final


def wait_progress(device: Device, until: Any, what: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    data: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            data = device.progress()
        except (OSError, ValueError):
            data = {}
        if data and until(data):
            return data
        time.sleep(0.1)
    raise AssertionError(f"not {what} after {timeout} s: {data}")


def updater_package(
    device: Device, version: str, bundle: Path, tree: Tree
) -> tuple[Path, h.Scenario]:
    """A package of bin/hello ``version`` carrying the updater ``bundle`` (the builder's
    ``--updater-bundle``), with the modules' metadata ``package_for`` gives."""
    src = device.base / f"src-{version}"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "hello").write_bytes(HELLO % version.encode())
    (src / "bin" / "hello").chmod(0o755)
    health = json.dumps(f"{device.root}/versions/current/bin/hello")
    modules = device.base / f"modules-{version}.toml"
    modules.write_text(
        '[modules."*"]\nprocess_name = "hello"\npost_cmds = ["true"]\n'
        f"health = {{ command = {health} }}\n"
    )
    built = build_package(
        src,
        version=version,
        output=device.base / f"update-{version}.zip",
        root=device.root,
        modules_config=modules,
        updater_bundle=bundle,
    )
    files = {"bin/hello": (HELLO % version.encode(), 0o755)}
    sc = h.Scenario("self-update", version, files, "success", "", version, ("true",), tree)
    return built.path, sc


def big_scenario(version: str, tree: Tree) -> h.Scenario:
    blob = random.Random(50).randbytes(BIG_BYTES)  # incompressible: 50 MB on the wire
    files = {"bin/hello": (HELLO % version.encode(), 0o755), "lib/big.bin": (blob, 0o644)}
    return h.Scenario("big", version, files, "success", "", version, ("true",), base_files=tree)


@pytest.fixture
def server() -> Iterator[ThreadedPackageServer]:
    with ThreadedPackageServer() as srv:
        yield srv


def native_figures(
    work: Path, server: ThreadedPackageServer, keys: Path, bundle: Path
) -> dict[str, Any]:
    """The figures' steps on x86_64, natively: the same install.sh, package and client."""
    device = Device(
        work,
        big_scenario("1.4.0", {}),
        server,
        target=NATIVE,
        bundle=bundle,
        trusted_key=keys / "release.pem",
    )
    try:
        proc = device.start()
        idle = proc.memory_kb()["VmRSS"]
        proc.terminate()
        proc = device.start()
        device.request = {
            **device.request,
            "package_signature": sign_file(device.package_file, keys / "release.key"),
        }
        times = timed_install(device, STEP_TIMEOUT_S)
        peak = proc.memory_kb()["VmHWM"]
        assert proc.terminate() == 0
    finally:
        device.close()
    return {
        "install_sh_s": device.install_s,
        "ready_s": device.ready_s,
        **times,
        "rss_idle_kb": idle,
        "rss_peak_kb": peak,
    }


#: ``./dev.sh arm`` runs two workers (``--dist loadgroup``): armv7l (the longest: it also
#: cross-compiles two wheels) alone on one; aarch64, x86_64 and the armv7l screen
#: (tests/e2e/test_arm_screen.py, same group) on the other.
@pytest.mark.parametrize(
    "machine",
    [
        pytest.param("aarch64", marks=pytest.mark.xdist_group("arm-a")),
        pytest.param("armv7l", marks=pytest.mark.xdist_group("arm-b")),
        pytest.param("x86_64", marks=pytest.mark.xdist_group("arm-a")),
    ],
)
def test_bundle_installs_offline_and_runs_a_whole_cycle(
    machine: str, tmp_path: Path, server: ThreadedPackageServer
) -> None:
    began = time.monotonic()
    arch = ARCHES.get(machine)
    check_requirements(arch)
    assert host_handlers() == [], "binfmt handlers of an earlier run left on this machine"
    times: dict[str, float] = {}
    target = NATIVE
    cache = None
    if arch is not None:
        root, times["root_s"] = make_root(tmp_path / "roots", arch)
        target = Target(machine, root, arch)
        if machine == "armv7l":
            started = time.monotonic()
            cache = cross_build_wheels(tmp_path / "wheels", root)
            times["cross_build_s"] = time.monotonic() - started
    started = time.monotonic()
    bundles = {
        version: build_bundle(
            tmp_path / "bundles", version, broken=version == BROKEN, arch=machine, wheel_cache=cache
        )
        for version in (BASE, NEW, BROKEN)
    }
    times["bundles_s"] = time.monotonic() - started
    with tarfile.open(bundles[BASE]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/manifest.json"))
        manifest = json.load(tar.extractfile(member))  # type: ignore[arg-type]
    assert (manifest["arch"], manifest["missing"]) == (machine, []), manifest
    keys = tmp_path / "keys"
    keys.mkdir()
    generate_keypair(keys / "release.key", keys / "release.pem")
    generate_keypair(keys / "stranger.key", keys / "stranger.pem")

    # --- install.sh --bundle, offline; then a signed full package (the delta's base) -----
    first = _base_scenario()
    device = Device(
        tmp_path / "device",
        first,
        server,
        target=target,
        bundle=bundles[BASE],
        trusted_key=keys / "release.pem",
    )
    figures: dict[str, Any] = {"install_sh_s": device.install_s}
    try:
        assert device.slot_links() == (f"versions/{BASE}", None)
        proc = device.start()
        figures["rss_idle_kb"] = proc.memory_kb()["VmRSS"]
        health = device.healthz()
        assert health is not None and health["updater_version"] == BASE, health
        signed(device, device.package_file, first, keys / "release.key")
        run_update(device, proc)
        tree = installed({}, first)

        # --- the delta 1.1.0 → 1.2.0 ---------------------------------------------------
        delta = serve_delta(device)
        signed(device, delta, device.sc, keys / "release.key")
        run_update(device, proc)
        tree = installed(tree, device.sc)
        assert tree == {
            k: v for k, v in {**DELTA_BASE, **DELTA_NEW}.items() if k not in DELTA_REMOVED
        }

        # --- signed by a key the device does not trust: refused at verify ------------
        stranger = h.Scenario(
            "stranger",
            "1.2.1",
            {"bin/hello": (HELLO % b"1.2.1", 0o755)},
            "failed",
            "SIGNATURE_INVALID",
            "1.2.0",
            base_files=tree,
        )
        signed(device, device.package_for(stranger), stranger, keys / "stranger.key")
        assert device.call("POST", "/download", device.request)["code"] == 200
        data = wait_progress(device, lambda d: d["stage"] == "failed", "refused")
        assert data["error"].startswith("SIGNATURE_INVALID: signature of"), data
        assert device.links().current == "1.2.0"

        # --- a broken package: health check fails, rolled back to 1.2.0 ---------------
        broken = h.Scenario(
            "broken",
            "1.3.0",
            {"bin/hello": (b"#!/bin/sh\nexit 1\n", 0o755)},
            "failed",
            "ROLLBACK_LEVEL_1_SUCCESS",
            "1.2.0",
            base_files=tree,
        )
        signed(device, device.package_for(broken), broken, keys / "release.key")
        run_update(device, proc, floor="1.2.0")

        # --- the figures' 50 MB package ------------------------------------------------
        big = big_scenario("1.4.0", tree)
        signed(device, device.package_for(big), big, keys / "release.key")
        figures.update(timed_install(device, STEP_TIMEOUT_S))
        figures["rss_peak_kb"] = proc.memory_kb()["VmHWM"]
        h.check_invariants(device, device.progress(), settle_s=60)
        tree = installed(tree, big)

        # --- the busy gate: restarted with a busy probe (an ARM /bin/sh script) ----------
        assert proc.terminate() == 0
        printer = Printer(device.base / "printing", device.base / "probe-runs")
        printer.busy()
        device.env.update(
            {"TOPE_UPDATER_BUSY_PROBE": printer.probe, "TOPE_UPDATER_BUSY_POLL_S": "0.5"}
        )
        proc = device.start()
        gated = h.Scenario(
            "gated",
            "1.5.0",
            {"bin/hello": (HELLO % b"1.5.0", 0o755)},
            "success",
            "",
            "1.5.0",
            ("true",),
            base_files=tree,
        )
        signed(device, device.package_for(gated), gated, keys / "release.key")
        assert device.call("POST", "/download", device.request)["code"] == 200
        wait_progress(device, lambda d: d["state"] == "ready", "verified")
        assert device.call("POST", "/update", {"version": "1.5.0"})["code"] == 200
        data = wait_progress(device, lambda d: d["state"] == "waiting_idle", "waiting")
        asked = printer.probed
        assert h.wait_until(lambda: printer.probed >= asked + 3, 60), printer.probed
        data = device.progress()
        assert data["state"] == "waiting_idle", data
        assert data["message"] == WAITING, data
        assert device.links().current == "1.4.0"
        assert not list((device.root / "versions").glob("v1.5.0*"))  # nothing staged
        printer.free()
        run_update(device, proc)
        tree = installed(tree, gated)
        assert proc.terminate() == 0

        # --- self-update to 0.2.0: the slot built on the device, the guard, probation ---
        supervised = Supervised(device)
        pkg, sc = updater_package(device, "1.6.0", bundles[NEW], tree)
        signed(device, pkg, sc, keys / "release.key")
        run_update(device, supervised)
        health = device.healthz()
        assert health is not None and health["updater_version"] == NEW, health
        assert device.slot_links() == (f"versions/{NEW}", f"versions/{BASE}")
        assert (device.prefix / "versions" / NEW / ".tope-slot-complete").is_file()
        assert not (device.prefix / "probation").exists()
        assert supervised.exits == [75], supervised.exits
        staged = [
            json.loads(line)
            for line in device.state.joinpath("logs", "updater.log").read_text().splitlines()
            if '"updater.staged"' in line
        ]
        figures["slot_build_s"] = staged[-1]["build_s"]
        tree = installed(tree, sc)

        # --- self-update to the broken 0.3.0: three failed starts, the guard puts 0.2.0
        # back, UPDATER_ROLLBACK reported once; the device's 1.7.0 stays ---------------
        pkg, sc = updater_package(device, "1.7.0", bundles[BROKEN], tree)
        sc = h.Scenario(
            "broken-updater",
            "1.7.0",
            sc.files,
            "failed",
            "UPDATER_ROLLBACK",
            "1.7.0",
            base_files=tree,
        )
        signed(device, pkg, sc, keys / "release.key")
        final = h.drive(device, supervised, timeout=STEP_TIMEOUT_S)
        assert final is not None, supervised.log_tail()
        expected = f"UPDATER_ROLLBACK: {BROKEN} failed to start (exited 3 times during probation"
        assert final["stage"] == "failed" and final["error"].startswith(expected), final
        assert final["current_version"] == "1.7.0", final
        assert supervised.exits == [75, 75, 1, 1, 1], supervised.exits
        assert any(f"updater {BROKEN} failed" in line for line in supervised.guard_said)
        health = device.healthz()
        assert health is not None and health["updater_version"] == NEW, health
        assert device.slot_links()[0] == f"versions/{NEW}"
        assert h.wait_until(lambda: not (device.prefix / "updater-rollback").exists(), 60)
        assert h.wait_until(lambda: not (device.prefix / "versions" / BROKEN).exists(), 60), (
            os.listdir(device.prefix / "versions")
        )
        rollbacks = [
            r for r in device.device_api.reports if (r.get("error") or "").startswith(expected)
        ]
        assert len(rollbacks) == 1, device.device_api.reports
        assert supervised.terminate() == 0
        figures["ready_s"] = device.ready_s
    finally:
        device.close()
    assert host_handlers() == [], "binfmt handlers left on this machine"
    times["cycle_s"] = time.monotonic() - began - sum(times.values())

    report: dict[str, Any] = {"machine": machine, "emulated": target.emulated, **figures}
    if target.emulated:
        baseline_bundle = build_bundle(tmp_path / "bundles-x86_64", BASE, arch="x86_64")
        x86 = native_figures(tmp_path / "x86_64", server, keys, baseline_bundle)
        report["x86_64"] = x86
        report["ratios"] = {
            "install_sh": figures["install_sh_s"] / x86["install_sh_s"],
            "cold_start": figures["ready_s"][0] / x86["ready_s"][0],
            "download_verify_50MB": figures["download_verify_s"] / x86["download_verify_s"],
            "install_50MB": figures["install_s"] / x86["install_s"],
        }
    times["total_s"] = time.monotonic() - began
    report["times"] = times
    print(f"arm tier figures {machine}: {json.dumps(_rounded(report))}")


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value
