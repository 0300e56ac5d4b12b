"""One printer as a hawkBit device (issue 14): a real ``tope-updater serve`` polls a real
hawkBit, installs what a fleet operator assigned and reports back through DDI; the outcome
is read back through hawkBit's Management API."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.crash import harness as h
from tests.fleet.devices import Device, fleet_device, release_for, wait_action_end
from tests.support.hawkbit import HawkbitServer
from tests.support.package_server import ThreadedPackageServer


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedPackageServer]:
    with h.package_server() as srv:
        yield srv


def test_a_good_release_installs_and_ends_finished(
    tmp_path: Path, hawkbit: HawkbitServer, server: ThreadedPackageServer
) -> None:
    device = fleet_device(tmp_path, hawkbit, server, "good")
    try:
        device.start()
        action = hawkbit.assign_action(release_for(hawkbit, device), device.controller_id)
        final = wait_action_end(hawkbit, device.controller_id, action, device=device)
        assert final["type"] == "finished", final
        assert final["messages"] == ["Update to v1.1.0 complete", "running 1.1.0"]
        h.check_invariants(device.rig, device.rig.progress())
        types = [s["type"] for s in hawkbit.action_statuses(device.controller_id, action)]
        assert "running" in types and types.count("finished") == 1, types
        # configData: the device's attributes, sent when asked (first poll, after success).
        assert h.wait_until(
            lambda: (
                hawkbit.target_attributes(device.controller_id).get("current_version") == "1.1.0"
            ),
            10,
        ), hawkbit.target_attributes(device.controller_id)
        attrs = hawkbit.target_attributes(device.controller_id)
        assert attrs["model"] == "TOPE X1" and attrs["factory_version"] == "1.0.0", attrs
        assert attrs["previous_version"] == "1.0.0" and attrs["updater_version"], attrs
        fleet = device.rig.call("GET", "/healthz")["data"]["fleet"]
        assert fleet["controller_id"] == device.controller_id and fleet["polls"] >= 1, fleet
        assert fleet["failed_polls"] == 0 and fleet["feedback_sent"] >= 3, fleet
    finally:
        device.rig.close()


def test_a_broken_release_rolls_back_and_ends_in_error_with_our_text(
    tmp_path: Path, hawkbit: HawkbitServer, server: ThreadedPackageServer
) -> None:
    device = fleet_device(tmp_path, hawkbit, server, "bad")
    try:
        device.start()
        action = hawkbit.assign_action(release_for(hawkbit, device), device.controller_id)
        final = wait_action_end(hawkbit, device.controller_id, action, device=device)
        assert final["type"] == "error", final
        error, running = final["messages"]
        assert error.startswith("ROLLBACK_LEVEL_1_SUCCESS"), error
        assert running == "running 1.0.0"
        h.check_invariants(device.rig, device.rig.progress())
        assert hawkbit.target(device.controller_id)["updateStatus"] == "error"
    finally:
        device.rig.close()


def _signed_release(hb: HawkbitServer, device: Device, key: Ed25519PrivateKey | None) -> int:
    """The device's package as a module, with ``<package>.zip.sig`` beside it when ``key``
    signs it (Ed25519 over the raw SHA-256 digest, base64: device-api's package_signature)."""
    data = device.package
    module = hb.create_software_module(f"signed-{uuid.uuid4().hex[:8]}", "1.1.0")
    hb.upload_artifact(module, "update-1.1.0.zip", data)
    if key is not None:
        signature = base64.b64encode(key.sign(hashlib.sha256(data).digest()))
        hb.upload_artifact(module, "update-1.1.0.zip.sig", signature)
    return hb.create_distribution_set(f"signed-{uuid.uuid4().hex[:8]}", "1.1.0", [module])


def test_signed_releases_install_and_unsigned_ones_are_refused_with_a_trusted_key(
    tmp_path: Path, hawkbit: HawkbitServer, server: ThreadedPackageServer
) -> None:
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    env = {"TOPE_UPDATER_TRUSTED_KEY": public}
    signed = fleet_device(tmp_path / "signed", hawkbit, server, "good", env=env)
    unsigned = fleet_device(tmp_path / "unsigned", hawkbit, server, "good", env=env)
    forged = fleet_device(tmp_path / "forged", hawkbit, server, "good", env=env)
    try:
        for device in (signed, unsigned, forged):
            device.start()
        outcomes = {
            "signed": (signed, _signed_release(hawkbit, signed, key)),
            "unsigned": (unsigned, _signed_release(hawkbit, unsigned, None)),
            "forged": (forged, _signed_release(hawkbit, forged, Ed25519PrivateKey.generate())),
        }
        finals = {}
        for name, (device, ds) in outcomes.items():
            action = hawkbit.assign_action(ds, device.controller_id)
            finals[name] = wait_action_end(hawkbit, device.controller_id, action, device=device)
        assert finals["signed"]["type"] == "finished", finals
        assert signed.rig.links().current == "1.1.0"
        assert finals["unsigned"]["type"] == "error"
        assert finals["unsigned"]["messages"][0].startswith("SIGNATURE_REQUIRED"), finals
        assert finals["forged"]["type"] == "error"
        assert finals["forged"]["messages"][0].startswith("SIGNATURE_INVALID"), finals
        for device in (unsigned, forged):
            assert device.rig.links().current == h.FACTORY_VERSION
    finally:
        for device in (signed, unsigned, forged):
            device.rig.close()


def test_verify_setup_polls_the_fleet_server_once_as_this_device(
    tmp_path: Path, hawkbit: HawkbitServer, server: ThreadedPackageServer
) -> None:
    device = fleet_device(tmp_path, hawkbit, server, "good")
    rig = device.rig

    def verify(token: str) -> tuple[int, dict[str, Any]]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOPE_UPDATER_")}
        env.update(rig.env, TOPE_UPDATER_DDI_TOKEN=token, PYTHONPATH=str(h.REPO))
        argv = [sys.executable, "-m", "http_shell.cli", "verify-setup", "--json"]
        argv += ["--root", str(rig.root), "--state-dir", str(rig.state)]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        return proc.returncode, json.loads(proc.stdout)

    try:
        code, report = verify(device.token)
        assert code == 0 and report["ok"], report
        assert report["fleet"]["controller_id"] == device.controller_id
        assert report["fleet"]["sleep_s"] == 1.0 and report["fleet"]["problem"] is None
        code, report = verify("not-the-token")
        assert code == 1 and not report["ok"], report
        assert "refused this device's credentials (HTTP 401)" in report["problems"][0]
    finally:
        rig.close()


def test_a_device_with_the_gateway_token_registers_itself_and_installs(
    tmp_path: Path, hawkbit: HawkbitServer, server: ThreadedPackageServer
) -> None:
    """No target made beforehand and no target token: the tenant's gateway token lets the
    device appear in hawkBit on its first poll (auto-registration), under its own id."""
    gateway = uuid.uuid4().hex
    hawkbit.mgmt(
        "PUT", "/rest/v1/system/configs/authentication.gatewaytoken.key", {"value": gateway}
    )
    hawkbit.mgmt(
        "PUT", "/rest/v1/system/configs/authentication.gatewaytoken.enabled", {"value": True}
    )
    controller_id = f"gw-{uuid.uuid4().hex[:10]}"
    device = fleet_device(
        tmp_path,
        hawkbit,
        server,
        "good",
        controller_id=controller_id,
        env={"TOPE_UPDATER_DDI_TOKEN": "", "TOPE_UPDATER_DDI_GATEWAY_TOKEN": gateway},
        register=False,
    )
    try:
        device.start()
        assert h.wait_until(
            lambda: hawkbit.mgmt("GET", f"/rest/v1/targets/{controller_id}").status == 200, 15
        )
        action = hawkbit.assign_action(release_for(hawkbit, device), controller_id)
        assert wait_action_end(hawkbit, controller_id, action)["type"] == "finished"
        assert device.rig.links().current == "1.1.0"
    finally:
        device.rig.close()
        hawkbit.mgmt(
            "PUT", "/rest/v1/system/configs/authentication.gatewaytoken.enabled", {"value": False}
        )


@pytest.mark.parametrize(("scenario", "running"), [("good", "1.1.0"), ("bad", "1.0.0")])
def test_the_target_attributes_show_the_running_version_once_an_action_ends(
    tmp_path: Path,
    hawkbit: HawkbitServer,
    server: ThreadedPackageServer,
    scenario: str,
    running: str,
) -> None:
    """Right after the final feedback, not when hawkBit next asks: the device polls once an
    hour here, and hawkBit holds stale attributes it does not ask to refresh (never after a
    failure), so only the attributes sent with the outcome can put the running version
    there — after a success the new one, after a rollback the one rolled back to."""
    device = fleet_device(
        tmp_path,
        hawkbit,
        server,
        scenario,
        env={"TOPE_UPDATER_DDI_POLL_MIN_S": "3600", "TOPE_UPDATER_DDI_POLL_MAX_S": "3600"},
    )
    cid = device.controller_id
    try:
        # Stale attributes, as a device would have left them: hawkBit stops asking for more.
        hawkbit.ddi_put_attributes(cid, device.token, {"current_version": "0.9.0"})
        base = hawkbit.ddi_get(hawkbit.ddi_url(cid), device.token).json()
        assert "configData" not in base.get("_links", {}), base
        action = hawkbit.assign_action(release_for(hawkbit, device), cid)
        device.start()  # its first poll finds the action; the next is an hour away
        final = wait_action_end(hawkbit, cid, action)
        assert final["type"] == ("finished" if scenario == "good" else "error"), final
        assert final["messages"][-1] == f"running {running}", final
        assert h.wait_until(
            lambda: hawkbit.target_attributes(cid).get("current_version") == running, 10
        ), hawkbit.target_attributes(cid)
        attributes = hawkbit.target_attributes(cid)
        assert attributes["factory_version"] == "1.0.0", attributes
        assert device.rig.links().current == running
        fleet = device.rig.call("GET", "/healthz")["data"]["fleet"]
        assert fleet["polls"] == 1, fleet  # the attributes came with the outcome, not a poll
    finally:
        device.rig.close()
