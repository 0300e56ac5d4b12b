"""Kill -9 at every step of the updater's self-switch, under a real systemd.

One device (``install.sh --bundle``, the shipped units: ``Restart=on-failure``, the guard)
goes through one self-update per kill point, alternating between the updaters 0.2.0 and
0.1.0 (both real bundles, see :mod:`tests.support.self_update`), each with a new device
version. Each trial runs with ``TOPE_UPDATER_CRASH_AT=<point>`` and
``TOPE_UPDATER_CRASH_ONCE=<file>`` in a drop-in: the first process to reach the point is
killed with SIGKILL, systemd starts the unit again (with the same environment, which the
one-shot file makes harmless), and the update must end as if nothing had happened:

* ``success`` for the new device version, reported to device-api;
* ``/healthz`` answers with the target updater's version, ``current``/``previous`` name the
  target and the other slot, both complete;
* no probation, no start counter, no guard record, no other slot left behind;
* and the kill did happen (the one-shot file exists).

The points are the ``updater:*`` crash points of ``updater_fsm/runner/self_update.py`` and
``updater_fsm/ops/self_update.py`` (each of its durable writes has a ``:before_rename`` and
an ``:after_rename``); ``updater:*_begun`` come right after the transition that asks for the
step is journaled (``engine:journaled`` of that transition). The first trial also records a
trace of every point the whole self-update passes, which must be exactly this list.

Also in the crash matrix: tests/crash/test_crash_points.py (the subprocess harness) for the
device's own install; docs/RELIABILITY.md lists both.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.e2e.deploy_site import UNIT, DeviceApiStub, Site, show
from tests.e2e.deploy_site import device_api as device_api  # the fixture
from tests.e2e.deploy_site import site as site  # the fixture
from tests.support.package_server import ThreadedPackageServer
from tests.support.self_update import BASE, NEW, Bundles, Device, install_device
from tests.support.self_update import updater_bundles as updater_bundles  # the fixture
from tests.support.systemd_sandbox import SystemdSandbox

# Crash matrix without the subprocess harness (so tests/conftest.py cannot derive `crash`).
pytestmark = [pytest.mark.systemd, pytest.mark.crash]

#: Every crash point of a self-update, in the order a run reaches them. ``slot_built`` is
#: reached only when the slot is new: the first trial (0.2.0) builds it.
SELF_UPDATE_KILL_POINTS = (
    "updater:slot_built",
    "updater:stage_begun",
    "updater:switch_begun",
    "updater:probation:before_rename",
    "updater:probation:after_rename",
    "updater:probation_written",
    "updater:previous:before_rename",
    "updater:previous:after_rename",
    "updater:current:before_rename",
    "updater:current:after_rename",
    "updater:switched",
    "updater:probation_begun",
    "updater:confirmed",
    "updater:collect_begun",
)


def arm(device: Device, point: str, once: Path, trace: Path) -> None:
    """Restart the updater with the kill armed at ``point`` (a drop-in)."""
    dropin = device.sandbox.unit_dir / f"{UNIT}.d"
    dropin.mkdir(exist_ok=True)
    (dropin / "crash.conf").write_text(
        # Many trials restart the unit far more often than a device ever does.
        "[Unit]\nStartLimitIntervalSec=0\n"
        "[Service]\n"
        f"Environment=TOPE_UPDATER_CRASH_AT={point}\n"
        f"Environment=TOPE_UPDATER_CRASH_ONCE={once}\n"
        f"Environment=TOPE_UPDATER_CRASH_TRACE={trace}\n"
    )
    device.sandbox.daemon_reload()
    restarted = device.sandbox.systemctl("restart", UNIT)
    status = device.sandbox.systemctl("status", "--no-pager", "-n", "30", UNIT).stdout
    assert restarted.returncode == 0, f"{point}: {status}\n{device.api.log_tail()}"


def test_kill_at_every_step_of_the_self_switch(
    updater_bundles: Bundles,
    systemd_sandbox: SystemdSandbox,
    site: Site,
    device_api: DeviceApiStub,
) -> None:
    device = install_device(updater_bundles.base, systemd_sandbox, site, device_api)
    state = site.root / ".updater"
    bundle_of = {NEW: updater_bundles.new, BASE: updater_bundles.base}
    running = BASE
    with ThreadedPackageServer() as server:
        for trial, point in enumerate(SELF_UPDATE_KILL_POINTS):
            target = NEW if running == BASE else BASE
            version = f"1.{trial + 1}.0"
            once, trace = state / f"crash-once-{trial}", state / f"crash-trace-{trial}"
            arm(device, point, once, trace)
            pkg = device.package(version, bundle=bundle_of[target])
            device.install(pkg, version, server)
            data = device.wait(
                lambda d, v=version: d["version"] == v and d["stage"] in ("success", "failed"),
                f"v{version} with the updater {target} (killed at {point})",
                timeout=120,
            )
            where = f"trial {trial}, killed at {point}"
            assert once.exists(), f"{where}: the kill never happened"
            assert data["stage"] == "success" and data["error"] is None, (where, data)
            assert data["current_version"] == version, (where, data)
            health = device.healthz()
            assert health is not None and health["updater_version"] == target, (where, health)
            assert device.links() == (f"versions/{target}", f"versions/{running}"), where
            for slot in (BASE, NEW):
                assert (site.prefix / "versions" / slot / ".tope-slot-complete").is_file()
            assert sorted(os.listdir(site.prefix / "versions")) == [BASE, NEW], where
            for leftover in ("probation", "probation.starts", "updater-rollback"):
                assert not (site.prefix / leftover).exists(), (where, leftover)
            assert not list(site.prefix.glob(".*.tmp")), where
            # A restarted updater re-reports the outcome once it runs; with the socket holding
            # the port, /progress may answer (from the new updater) before that report left.
            deadline = time.monotonic() + 10
            while True:
                finals = [r for r in device_api.reports if r["version"] == f"v{version}"]
                if (finals and finals[-1]["stage"] == "success") or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert finals and finals[-1]["stage"] == "success", (where, finals)
            assert show(device.sandbox, UNIT)["ActiveState"] == "active", where
            if trial == 0:
                reached = [p for p in trace.read_text().splitlines() if p.startswith("updater:")]
                assert sorted(set(reached)) == sorted(SELF_UPDATE_KILL_POINTS), reached
            running = target
