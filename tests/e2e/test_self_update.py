"""The updater updates itself, under a real systemd, with real release bundles (issue 15).

The device runs what ``install.sh --bundle`` installs from a bundle built by
``systemd/bundle.py`` from this tree (updater 0.1.0): the shipped units (``Type=notify``,
``Restart=on-failure``, the hardening; ``tope-updater.socket`` holding the port), the guard
``updater-guard.sh`` as ``ExecStartPre``, the updater in the slot
``<prefix>/versions/0.1.0``. The new updaters are bundles built the same
way from a copy of this tree with another version in ``pyproject.toml`` (0.2.0), one of them
broken on purpose (0.3.0: ``http_shell/daemon/assembly.py`` raises at import, so ``serve``
dies at every start). Packages are built by the installed ``tope-updater package build
--updater-bundle``, served over HTTP and installed through the API like device-api does.

**Needs PyPI** to build the bundles (once per session; skipped when unreachable).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.e2e.deploy_site import UNIT, DeviceApiStub, Poller, Site, show
from tests.e2e.deploy_site import device_api as device_api  # the fixture
from tests.e2e.deploy_site import site as site  # the fixture
from tests.support.package_server import ThreadedPackageServer
from tests.support.self_update import (
    BASE,
    BROKEN,
    HANGING,
    NEW,
    Bundles,
    Device,
    install_device,
)
from tests.support.self_update import updater_bundles as updater_bundles  # the fixture
from tests.support.systemd_sandbox import SystemdSandbox

pytestmark = pytest.mark.systemd


@pytest.fixture
def device(
    updater_bundles: Bundles,
    systemd_sandbox: SystemdSandbox,
    site: Site,
    device_api: DeviceApiStub,
) -> Iterator[Device]:
    yield install_device(updater_bundles.base, systemd_sandbox, site, device_api)


def test_a_good_self_update_then_the_next_update_runs_on_the_new_updater(
    device: Device, updater_bundles: Bundles
) -> None:
    pkg = device.package("1.1.0", bundle=updater_bundles.new)
    # device-api polls /progress every 200 ms through the hand-over (exit 75, RestartSec=2,
    # the guard, the new updater's start): tope-updater.socket holds the port meanwhile, so
    # no connection is refused, answers only come slower.
    poller = Poller(device.port)
    with ThreadedPackageServer() as server:
        device.install(pkg, "1.1.0", server)
        poller.start()
        try:
            data = device.wait(lambda d: d["stage"] == "success", "self-updated", timeout=120)
        finally:
            poller.stop()
        assert poller.refused == [], poller.refused
        assert len(poller.other_errors) <= 1, poller.other_errors  # one in flight at exit
        assert poller.slowest_s >= 1.0, poller  # one waited in the queue through RestartSec
        print(f"poller through the hand-over: {poller.answers} answers,"
              f" slowest {poller.slowest_s:.2f} s")  # fmt: skip
        health = device.healthz()
        assert health is not None and health["updater_version"] == NEW, health
        took = device.seconds_between("updater.switching", "updater.confirmed")
        print(f"switching the updater -> new updater confirmed: {took:.1f} s")
        print(f"building the slot {NEW}: {device.log_event('updater.staged')['build_s']} s")
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
    device: Device, updater_bundles: Bundles
) -> None:
    pkg = device.package("1.1.0", bundle=updater_bundles.broken)
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


def test_an_updater_that_never_confirms_is_put_back_after_its_deadline(
    device: Device, updater_bundles: Bundles
) -> None:
    """It starts, serves and pings the watchdog, but never ends its probation: the transient
    timer the old updater armed restarts the unit past the deadline, and the guard judges."""
    with (device.site.config_dir / "config.toml").open("a") as fh:
        fh.write("updater_probation_s = 10.0\n")
    device.sandbox.systemctl("restart", UNIT, check=True)
    pkg = device.package("1.1.0", bundle=updater_bundles.hanging)
    with ThreadedPackageServer() as server:
        device.install(pkg, "1.1.0", server)
        data = device.wait(lambda d: d["stage"] == "failed", "back on the old updater", 90)
    expected = f"UPDATER_ROLLBACK: {HANGING} failed to start (not confirmed before its"
    assert data["error"].startswith(expected), data
    health = device.healthz()
    assert health is not None and health["updater_version"] == BASE, health
    assert device.links()[0] == f"versions/{BASE}"
    assert device.log_event("updater.probation_timer_armed")["in_s"] == 15
    took = device.seconds_between("updater.switching", "updater.rolled_back")
    print(f"never-confirming updater {HANGING} -> old updater back: {took:.1f} s (deadline 10 s)")
    assert 10 <= took < 40, took


def test_a_device_that_fails_its_health_check_never_switches_the_updater(
    device: Device, updater_bundles: Bundles
) -> None:
    pkg = device.package("1.1.0", bundle=updater_bundles.new, healthy=False)
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
