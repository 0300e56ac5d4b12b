"""A fleet on one machine (issue 14): ten ``tope-updater serve`` processes — own roots,
ports, state, device-api stand-ins and controller ids — and hawkBit rollouts in groups of
two with a success threshold (100 %: the next group starts when all of a group succeeded)
and an error threshold (20 %: the rollout pauses). A good release reaches all ten; a broken
one stops after the first group, whose devices roll back, and leaves the other eight
untouched and idle.

Every device has its root at the same path (its own mount namespace), like printers of one
model, so one release fits all (``dst`` paths are absolute).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.crash import harness as h
from tests.fleet.devices import (
    Device,
    NamespacedUpdater,
    final_statuses,
    fleet_of,
    fleet_package,
)
from tests.support.hawkbit import HawkbitServer
from tests.support.package_server import ThreadedPackageServer

DEVICES = 10
GROUPS = 5

#: Like the systemd tests: root (as in CI) for the devices' mount namespaces, else a reason.
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the fleet's devices need mount namespaces (root)"
)


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedPackageServer]:
    with h.package_server() as srv:
        yield srv


def _wait_rollout(hb: HawkbitServer, rollout: int, status: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hb.rollout(rollout)["status"] == status:
            return
        time.sleep(0.3)
    raise AssertionError(f"rollout {rollout} not {status} after {timeout} s: {hb.rollout(rollout)}")


def _groups(hb: HawkbitServer, rollout: int) -> list[list[str]]:
    """The controller ids of each deployment group, in order."""
    groups = hb.mgmt("GET", f"/rest/v1/rollouts/{rollout}/deploygroups?limit=100").json()
    out = []
    for group in sorted(groups["content"], key=lambda g: g["id"]):
        targets = hb.mgmt(
            "GET", f"/rest/v1/rollouts/{rollout}/deploygroups/{group['id']}/targets?limit=100"
        ).json()
        out.append(sorted(t["controllerId"] for t in targets["content"]))
    return out


def _actions_of(hb: HawkbitServer, device: Device) -> list[dict[str, Any]]:
    return sorted(hb.target_actions(device.controller_id), key=lambda a: int(a["id"]))


def test_a_good_rollout_reaches_all_and_a_broken_one_stops_after_the_first_group(
    tmp_path: Path, hawkbit: HawkbitServer, server: ThreadedPackageServer
) -> None:
    prefix = f"roll-{uuid.uuid4().hex[:6]}"
    devices = fleet_of(tmp_path, hawkbit, server, DEVICES, prefix)
    try:
        procs = [NamespacedUpdater(d.rig) for d in devices]
        for proc in procs:
            assert proc.wait_ready(60), proc.log_tail()

        good = fleet_package(tmp_path / "good.zip", "good").read_bytes()
        ds = hawkbit.release(f"{prefix}-good", "1.1.0", "update-1.1.0.zip", good)
        rollout = hawkbit.create_rollout(f"{prefix}-good", ds, f"controllerId=={prefix}-*", GROUPS)
        hawkbit.start_rollout(rollout)
        _wait_rollout(hawkbit, rollout, "finished", 180)
        for device in devices:
            assert device.rig.links().current == "1.1.0", device.controller_id
            (action,) = _actions_of(hawkbit, device)
            finals = final_statuses(hawkbit, device.controller_id, str(action["id"]))
            assert [s["type"] for s in finals] == ["finished"], finals

        bad = fleet_package(tmp_path / "bad.zip", "bad").read_bytes()
        ds_bad = hawkbit.release(f"{prefix}-bad", "1.2.0", "update-1.2.0.zip", bad)
        broken = hawkbit.create_rollout(
            f"{prefix}-bad", ds_bad, f"controllerId=={prefix}-*", GROUPS, error_percent=20
        )
        hawkbit.start_rollout(broken)
        _wait_rollout(hawkbit, broken, "paused", 120)
        first, *rest = _groups(hawkbit, broken)
        assert len(first) == DEVICES // GROUPS and sum(map(len, rest)) == DEVICES - len(first)
        h.wait_until(lambda: False, 3.0)  # several polls: nobody else may start
        for device in devices:
            actions = _actions_of(hawkbit, device)
            assert len(actions) == 2, actions
            newest = str(actions[-1]["id"])
            progress = device.rig.progress()
            assert device.rig.links().current == "1.1.0", device.controller_id
            if device.controller_id in first:
                (final,) = final_statuses(hawkbit, device.controller_id, newest)
                assert final["type"] == "error", final
                assert final["messages"][0].startswith("ROLLBACK_LEVEL_1_SUCCESS"), final
                assert final["messages"][1] == "running 1.1.0", final
            else:
                # Untouched: hawkBit holds its action back (scheduled: inactive, so the
                # Management API lists it as not pending, with an empty history) and the
                # device never saw it — it sits on the good release.
                assert hawkbit.action_statuses(device.controller_id, newest) == []
                assert (progress["stage"], progress["version"]) == ("success", "1.1.0")
    finally:
        for device in devices:
            device.rig.close()
