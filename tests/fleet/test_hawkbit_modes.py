"""What a fleet operator can ask of a device beyond "install this" (issue 14): cancel
before and after the switch, download only, maintenance windows, and device-api's jobs
sharing the one machine — each against a real hawkBit, read back through its Management
API."""

from __future__ import annotations

import datetime as dt
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crash import harness as h
from tests.fleet.devices import Device, fleet_device, release_for, wait_action_end
from tests.support.hawkbit import HawkbitServer
from tests.support.package_server import ThreadedPackageServer
from tests.support.packages import make_package


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedPackageServer]:
    with h.package_server() as srv:
        yield srv


def busy_device(
    tmp_path: Path, hb: HawkbitServer, server: ThreadedPackageServer
) -> tuple[Device, Path]:
    """A device whose busy probe says "printing" while the returned flag file exists."""
    flag = tmp_path / "printing"
    flag.touch()
    probe = f'test ! -e {shlex.quote(str(flag))} || {{ echo "printing benchy"; exit 1; }}'
    env = {"TOPE_UPDATER_BUSY_PROBE": probe, "TOPE_UPDATER_BUSY_POLL_S": "0.3"}
    return fleet_device(tmp_path, hb, server, "good", env=env), flag


def messages(hb: HawkbitServer, device: Device, action: str) -> list[str]:
    statuses = hb.action_statuses(device.controller_id, action)
    return [m for s in statuses for m in s["messages"] if m is not None]


def test_cancel_before_the_switch_is_confirmed_and_nothing_is_installed(
    tmp_path: Path, hawkbit: HawkbitServer, server: ThreadedPackageServer
) -> None:
    device, _flag = busy_device(tmp_path, hawkbit, server)
    try:
        device.start()
        action = hawkbit.assign_action(release_for(hawkbit, device), device.controller_id)
        assert h.wait_until(lambda: device.rig.progress()["state"] == "waiting_idle", 30)
        hawkbit.cancel(device.controller_id, action)
        final = wait_action_end(hawkbit, device.controller_id, action)
        assert final["type"] == "canceled", final
        assert any("cancelled in waiting_idle" in m for m in messages(hawkbit, device, action))
        assert h.wait_until(lambda: device.rig.progress()["state"] == "idle", 10)
        assert device.rig.links().current == h.FACTORY_VERSION
        assert not list((device.rig.state / "downloads").iterdir())  # the package is gone
        types = [s["type"] for s in hawkbit.action_statuses(device.controller_id, action)]
        assert "error" not in types and "finished" not in types, types
    finally:
        device.rig.close()


def test_cancel_after_the_switch_is_rejected_and_the_action_finishes(
    tmp_path: Path, hawkbit: HawkbitServer, server: ThreadedPackageServer
) -> None:
    device = fleet_device(tmp_path, hawkbit, server, "good", post_cmds=["sleep 3"])
    try:
        device.start()
        action = hawkbit.assign_action(release_for(hawkbit, device), device.controller_id)
        assert h.wait_until(lambda: device.rig.progress()["state"] == "switching", 30)
        hawkbit.cancel(device.controller_id, action)
        final = wait_action_end(hawkbit, device.controller_id, action)
        assert final["type"] == "finished", final
        said = messages(hawkbit, device, action)
        assert any(m.startswith("cannot cancel: the switch to v1.1.0 has begun") for m in said)
        assert device.rig.links().current == "1.1.0"
    finally:
        device.rig.close()


def test_download_only_verifies_and_closes_without_installing(
    tmp_path: Path, hawkbit: HawkbitServer, server: ThreadedPackageServer
) -> None:
    device = fleet_device(tmp_path, hawkbit, server, "good")
    try:
        device.start()
        action = hawkbit.assign_action(
            release_for(hawkbit, device), device.controller_id, type="downloadonly"
        )
        final = wait_action_end(hawkbit, device.controller_id, action)
        assert final["type"] == "downloaded", final
        assert "download only: not installed" in final["messages"][0]
        progress = device.rig.progress()
        assert progress["state"] == "ready" and progress["version"] == "1.1.0", progress
        assert device.rig.links().current == h.FACTORY_VERSION
    finally:
        device.rig.close()


def _assign_with_window(hb: HawkbitServer, device: Device, opens_in: dt.timedelta) -> str:
    """Assign the device's release (forced) with a daily one-hour maintenance window that
    opens ``opens_in`` from now (UTC; negative: it is open now); the action id."""
    start = dt.datetime.now(dt.UTC) + opens_in
    window = {
        "schedule": f"{start.second} {start.minute} {start.hour} ? * *",
        "duration": "01:00:00",
        "timezone": "+00:00",
    }
    return hb.assign_action(
        release_for(hb, device), device.controller_id, type="forced", maintenanceWindow=window
    )


@pytest.mark.parametrize("window", ["closed", "open"])
def test_a_maintenance_window_gates_the_install_not_the_download(
    tmp_path: Path, hawkbit: HawkbitServer, server: ThreadedPackageServer, window: str
) -> None:
    device = fleet_device(tmp_path, hawkbit, server, "good")
    try:
        device.start()
        if window == "open":
            action = _assign_with_window(hawkbit, device, -dt.timedelta(minutes=1))
            assert wait_action_end(hawkbit, device.controller_id, action)["type"] == "finished"
            assert device.rig.links().current == "1.1.0"
            return
        action = _assign_with_window(hawkbit, device, dt.timedelta(hours=6))
        assert h.wait_until(
            lambda: any(
                "waiting for the maintenance window" in m for m in messages(hawkbit, device, action)
            ),
            30,
        )
        h.wait_until(lambda: False, 2.0)  # several polls: still not installed
        assert device.rig.progress()["state"] == "ready"
        assert device.rig.links().current == h.FACTORY_VERSION
        assert hawkbit.action(device.controller_id, action)["status"] == "pending"
    finally:
        device.rig.close()


def test_device_api_and_the_fleet_share_one_machine(
    tmp_path: Path, hawkbit: HawkbitServer, server: ThreadedPackageServer
) -> None:
    """device-api's install waits for the printer; the fleet's action waits for it (409
    rules), says so, and runs once device-api's job is done; device-api's own request
    during the fleet's job is refused with 409."""
    device, flag = busy_device(tmp_path, hawkbit, server)
    rig = device.rig
    fleet_pkg = make_package(
        tmp_path / "fleet-1.2.0.zip",
        "1.2.0",
        {"bin/hello": (b'#!/bin/sh\n[ "$1" = serve ] && exec sleep 600\necho 1.2.0\n', 0o755)},
        root=rig.root,
        process_name="hello",
        health={"command": f"{rig.root}/versions/current/bin/hello"},
    )
    try:
        device.start()
        assert rig.call("POST", "/download", rig.request)["code"] == 200
        assert h.wait_until(lambda: rig.progress()["state"] == "ready", 30)
        assert rig.call("POST", "/update", {"version": "1.1.0"})["code"] == 200
        assert h.wait_until(lambda: rig.progress()["state"] == "waiting_idle", 10)

        ds = hawkbit.release("fw-share", "1.2.0", "update-1.2.0.zip", fleet_pkg.read_bytes())
        action = hawkbit.assign_action(ds, device.controller_id)
        assert h.wait_until(
            lambda: any(
                "device is busy with another job" in m for m in messages(hawkbit, device, action)
            ),
            15,
        ), messages(hawkbit, device, action)
        assert rig.progress()["version"] == "1.1.0"  # device-api's job is untouched

        flag.unlink()  # the print ends: device-api's install runs, then the fleet's
        final = wait_action_end(hawkbit, device.controller_id, action)
        assert final["type"] == "finished", final
        assert rig.links().current == "1.2.0" and rig.links().previous == "1.1.0"
        assert any(r["stage"] == "success" for r in rig.device_api.terminal_reports("1.1.0"))

        flag.touch()  # and device-api cannot take over a running fleet job
        ds2 = hawkbit.release("fw-share-2", "1.1.0", "update-1.1.0.zip", device.package)
        hawkbit.assign_action(ds2, device.controller_id)
        assert h.wait_until(lambda: rig.progress()["state"] == "waiting_idle", 30)
        other = dict(rig.request, package_name="other.zip")
        assert rig.call("POST", "/download", other)["code"] == 409
    finally:
        rig.close()
