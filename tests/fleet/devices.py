"""Simulated fleet devices: a crash-harness rig (real ``tope-updater serve``, factory root,
device-api stand-in) registered as a hawkBit target and configured to poll it."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import attrs

from tests.crash import harness as h
from tests.support.hawkbit import HawkbitServer
from tests.support.package_server import ThreadedPackageServer

#: Status types that end an action in hawkBit's history.
FINAL_TYPES = ("finished", "error", "canceled")


@attrs.define
class Device:
    rig: h.Rig
    controller_id: str
    token: str

    @property
    def package(self) -> bytes:
        return (self.rig.base / self.rig.package_name).read_bytes()

    def start(self, **kw: Any) -> h.UpdaterProcess:
        return self.rig.start(**kw)


def fleet_device(
    base: Path,
    hb: HawkbitServer,
    server: ThreadedPackageServer,
    scenario: str = "good",
    *,
    controller_id: str | None = None,
    env: dict[str, str] | None = None,
    post_cmds: list[str] | None = None,
) -> Device:
    """A device with its own root, port, controller id and target token, known to ``hb``."""
    cid = controller_id or f"t-{uuid.uuid4().hex[:12]}"
    token = uuid.uuid4().hex
    hb.create_target(cid, token)
    base.mkdir(parents=True, exist_ok=True)
    rig = h.Rig(
        base,
        h.scenario(scenario),
        server,
        post_cmds=post_cmds,
        env={
            "TOPE_UPDATER_DDI_URL": hb.base_url,
            "TOPE_UPDATER_DDI_CONTROLLER_ID": cid,
            "TOPE_UPDATER_DDI_TOKEN": token,
            "TOPE_UPDATER_DDI_POLL_MIN_S": "0.5",
            "TOPE_UPDATER_DEVICE_MODEL": "TOPE X1",
            **(env or {}),
        },
    )
    return Device(rig, cid, token)


def release_for(hb: HawkbitServer, device: Device, name: str | None = None) -> int:
    """The device's package (its scenario's version) as a distribution set."""
    version = device.rig.sc.version
    return hb.release(
        name or f"fw-{uuid.uuid4().hex[:8]}", version, f"update-{version}.zip", device.package
    )


def final_statuses(hb: HawkbitServer, cid: str, action_id: str) -> list[dict[str, Any]]:
    return [s for s in hb.action_statuses(cid, action_id) if s["type"] in FINAL_TYPES]


def wait_action_end(
    hb: HawkbitServer, cid: str, action_id: str, timeout: float = 60.0
) -> dict[str, Any]:
    """The action's final status once hawkBit shows it closed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        action = hb.action(cid, action_id)
        if action["status"] == "finished":
            finals = final_statuses(hb, cid, action_id)
            assert finals, hb.action_statuses(cid, action_id)
            return finals[-1]
        time.sleep(0.2)
    raise AssertionError(
        f"action {action_id} of {cid} still open after {timeout} s: "
        f"{hb.action_statuses(cid, action_id)[-5:]}"
    )
