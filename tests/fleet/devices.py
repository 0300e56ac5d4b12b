"""Simulated fleet devices: a crash-harness rig (real ``tope-updater serve``, factory root,
device-api stand-in) registered as a hawkBit target and configured to poll it."""

from __future__ import annotations

import shlex
import time
import uuid
from pathlib import Path
from typing import Any

import attrs

from tests.crash import harness as h
from tests.support.hawkbit import HawkbitServer
from tests.support.package_server import ThreadedPackageServer
from tests.support.packages import make_package

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
    register: bool = True,
) -> Device:
    """A device with its own root, port, controller id and target token, known to ``hb``
    (unless not ``register``: it must then register itself, with a gateway token)."""
    cid = controller_id or f"t-{uuid.uuid4().hex[:12]}"
    token = uuid.uuid4().hex
    if register:
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
            # A poll that failed (hawkBit slow under a loaded CI) backs off, doubling from the
            # floor: capped here, so a test's device finds its action within seconds.
            "TOPE_UPDATER_DDI_POLL_MAX_S": "4",
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
    hb: HawkbitServer,
    cid: str,
    action_id: str,
    timeout: float = 90.0,
    *,
    device: Device | None = None,
) -> dict[str, Any]:
    """The action's last status once hawkBit shows it closed (``finished``, ``error``,
    ``canceled``, or ``downloaded`` for a download-only action). When it stays open, the
    failure names what ``device`` (if given) saw: its fleet poller's figures, its job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        action = hb.action(cid, action_id)
        if action["status"] == "finished":
            history = hb.action_statuses(cid, action_id)
            last: dict[str, Any] = history[-1]
            return last
        time.sleep(0.2)
    seen = ""
    if device is not None:
        try:
            health = device.rig.call("GET", "/healthz")["data"]
            seen = f"; device: fleet {health.get('fleet')}, progress {device.rig.progress()}"
        except Exception as exc:  # the device may be the reason: say so, keep the failure
            seen = f"; device not answering: {exc!r}"
        if device.rig.procs:
            seen += f"; log: {device.rig.procs[-1].log_tail(20)}"
    raise AssertionError(
        f"action {action_id} of {cid} still open after {timeout} s: "
        f"{hb.action_statuses(cid, action_id)[-5:]}{seen}"
    )


# --------------------------------------------------------------------------- a whole fleet

#: Where every printer of the simulated fleet has its install root, as real printers of one
#: model all have ``/opt/tope``: each device's process runs in its own mount namespace with
#: its own root bind-mounted here, so one release (whose ``dst`` paths are absolute) fits all.
FLEET_ROOT = Path("/tmp/tope-fleet-device-root")


def fleet_package(path: Path, scenario: str, version: str | None = None) -> Path:
    """A release for :data:`FLEET_ROOT` devices with ``scenario``'s files (good or bad),
    as the scenario's version or ``version``."""
    sc = h.scenario(scenario)
    return make_package(
        path,
        version or sc.version,
        sc.files,
        root=FLEET_ROOT,
        process_name="hello",
        health={"command": f"{FLEET_ROOT}/versions/current/bin/hello"},
        post_cmds=list(sc.post_cmds),
    )


class NamespacedUpdater(h.UpdaterProcess):
    """``tope-updater serve`` of a fleet device: its own mount namespace in which its rig's
    root is bind-mounted on :data:`FLEET_ROOT` (``unshare`` execs, so the pid is the
    updater's own and a SIGKILL is a power cut)."""

    def __init__(self, rig: h.Rig) -> None:
        serve = h.serve_argv(rig, FLEET_ROOT)
        script = (
            f"mount --bind {shlex.quote(str(rig.root))} {shlex.quote(str(FLEET_ROOT))}"
            f" && exec {shlex.join(serve)}"
        )
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
        self._spawn(rig, argv, h.updater_env(rig))
        rig.procs.append(self)


def fleet_of(
    base: Path,
    hb: HawkbitServer,
    server: ThreadedPackageServer,
    count: int,
    prefix: str,
) -> list[Device]:
    """``count`` devices named ``<prefix>-00``… (a rollout selects them by that prefix),
    each with its own root, state, port, device-api stand-in, controller id and token."""
    FLEET_ROOT.mkdir(exist_ok=True)
    return [
        fleet_device(base / f"d{i:02}", hb, server, "good", controller_id=f"{prefix}-{i:02}")
        for i in range(count)
    ]
