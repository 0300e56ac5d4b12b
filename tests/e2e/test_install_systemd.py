"""End-to-end installs and rollbacks against a real systemd (contract §3-§4).

Every test drives the whole updater in-process (journal, engine, runner, ops) with real
package ZIPs from a real HTTP server, a real snapshot store with real symlinks, and a real
systemd (booted in private namespaces) running ``device-api.service`` from
``<root>/versions/current``. Which version runs is proven by what the live main process
reports (see :mod:`tests.e2e.units`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from http_shell.daemon.assembly import Updater, running_updater
from tests.e2e.units import (
    Rig,
    Timeline,
    broken_script,
    good_script,
    order_script,
    tree_digest,
    wait_for,
)
from tests.support.package_server import PackageServer
from tests.support.packages import HOSTILE_CASES, make_package
from tests.support.systemd_sandbox import SystemdSandbox
from updater_fsm.core import events as ev
from updater_fsm.core.table import State

pytestmark = pytest.mark.systemd

TERMINAL = (State.SUCCESS, State.FAILED)


@pytest.fixture
async def rig(
    tmp_path: Path, systemd_sandbox: SystemdSandbox, package_server: PackageServer
) -> AsyncIterator[Rig]:
    r = Rig(tmp_path, systemd_sandbox, package_server)
    r.setup()
    yield r


def start(rig: Rig) -> Any:
    return running_updater(rig.config, controller=rig.controller(), report=False)


async def download(u: Updater, rig: Rig, version: str, pkg: Path) -> None:
    decision = await u.engine.submit(ev.DownloadRequested(await rig.request(version, pkg)))
    assert decision.accepted, decision.reply
    data = await wait_for(u.engine, State.READY, State.FAILED)
    assert data["stage"] == "toInstall", data


async def install(u: Updater, rig: Rig, version: str, pkg: Path) -> dict[str, Any]:
    """Download, verify and install ``pkg``; return the final snapshot data."""
    timeline = Timeline(u.engine)
    await download(u, rig, version, pkg)
    decision = await u.engine.submit(ev.UpdateRequested(version))
    assert decision.accepted, decision.reply
    data = await wait_for(u.engine, *TERMINAL, timeout=30)
    await u.runner.idle()  # trailing effects: package removal, snapshot removal, GC
    await timeline.close()  # asserts progress never fell within a stage
    return data


async def attempt(u: Updater, rig: Rig, version: str, pkg: Path) -> dict[str, Any]:
    """Download ``pkg`` and, if it verifies, install it; the final snapshot data. What a
    package holds is judged when it is verified: a hostile one ends there."""
    decision = await u.engine.submit(ev.DownloadRequested(await rig.request(version, pkg)))
    assert decision.accepted, decision.reply
    data = await wait_for(u.engine, State.READY, State.FAILED)
    if data["stage"] == "toInstall":
        decision = await u.engine.submit(ev.UpdateRequested(version))
        assert decision.accepted, decision.reply
        data = await wait_for(u.engine, *TERMINAL, timeout=30)
    await u.runner.idle()
    return data


def assert_versions(
    data: dict[str, Any], current: str, previous: str | None, factory: str = "1.0.0"
) -> None:
    got = (data["current_version"], data["previous_version"], data["factory_version"])
    assert got == (current, previous, factory), data


# ---------------------------------------------------------------- 1. happy path


async def test_happy_path_switches_and_runs_the_new_version(rig: Rig) -> None:
    factory_before = tree_digest(rig.versions / "v1.0.0")
    assert rig.links() == {"current": "v1.0.0", "previous": None, "factory": "v1.0.0"}
    assert rig.running_version() == "1.0.0"
    async with start(rig) as u:
        timeline = Timeline(u.engine)
        data = await install(u, rig, "1.1.0", rig.package("1.1.0"))
        await timeline.close()
        assert data["stage"] == "success" and data["state"] == "success", data
        assert data["error"] is None and data["progress"] == 100, data
        assert_versions(data, "1.1.0", "1.0.0")
        assert timeline.states() == [
            "idle", "downloading", "verifying", "ready",
            "deploying", "switching", "health_check", "success",
        ]  # fmt: skip
        assert not any(rig.config.downloads_dir.iterdir()), "package not removed"
    assert rig.links() == {"current": "v1.1.0", "previous": "v1.0.0", "factory": "v1.0.0"}
    assert rig.running_version() == "1.1.0"
    assert tree_digest(rig.versions / "v1.0.0") == factory_before
    assert rig.listing() == ["current", "factory", "previous", "v1.0.0", "v1.1.0"]
    assert rig.leftovers() == []


# ---------------------------------------------------------------- 2. level-1 rollback


@pytest.mark.parametrize("delay_s", [0.0, 0.8], ids=["exits_at_once", "crashes_after_start"])
async def test_broken_new_version_rolls_back_to_the_running_one(
    tmp_path: Path, systemd_sandbox: SystemdSandbox, package_server: PackageServer, delay_s: float
) -> None:
    rig = Rig(tmp_path, systemd_sandbox, package_server)
    rig.setup(restart=delay_s > 0)  # the late crash is also restarted by systemd
    async with start(rig) as u:
        await install(u, rig, "1.1.0", rig.package("1.1.0"))
        assert rig.running_version() == "1.1.0"
        links_before = rig.links()
        data = await install(u, rig, "1.2.0", rig.package("1.2.0", broken_script("1.2.0", delay_s)))
    assert data["stage"] == "failed" and data["state"] == "failed", data
    assert data["error"].startswith("ROLLBACK_LEVEL_1_SUCCESS: v1.1.0"), data
    cause = "SERVICE_START_FAILED" if delay_s == 0 else "HEALTH_CHECK_FAILED"
    assert f"(cause: {cause}: device-api.service" in data["error"], data
    assert data["rollback_level"] == 1, data
    assert_versions(data, "1.1.0", "1.0.0")
    assert links_before == rig.links() == {
        "current": "v1.1.0", "previous": "v1.0.0", "factory": "v1.0.0",
    }  # fmt: skip
    assert rig.running_version() == "1.1.0"
    assert rig.listing() == ["current", "factory", "previous", "v1.0.0", "v1.1.0"]
    assert rig.leftovers() == []
    assert not any(rig.config.downloads_dir.iterdir())


# ---------------------------------------------------------------- 3./4. level 2 and beyond


@pytest.mark.parametrize("factory_broken", [False, True], ids=["to_factory", "factory_broken"])
async def test_broken_new_and_previous_escalate(rig: Rig, factory_broken: bool) -> None:
    async with start(rig) as u:
        await install(u, rig, "1.1.0", rig.package("1.1.0"))
        assert rig.running_version() == "1.1.0"
        # 1.1.0 keeps running, but it will refuse to start again: level 1 must fail.
        rig.flag("broken-1.1.0")
        if factory_broken:
            rig.flag("broken-1.0.0")
        timeline = Timeline(u.engine)
        data = await install(u, rig, "1.2.0", rig.package("1.2.0", broken_script("1.2.0")))
        await timeline.close()
    assert data["stage"] == "failed" and data["state"] == "failed", data
    assert data["rollback_level"] == 2, data
    states = timeline.states()
    assert states[-4:] == ["switching", "rollback_previous", "rollback_factory", "failed"]
    assert "SERVICE_START_FAILED: device-api.service" in data["error"], data
    # (The sandbox has no journald, so the details quote `systemctl status`, not stderr.)
    assert "; level 1: SERVICE_START_FAILED: device-api.service" in data["error"], data
    if factory_broken:
        assert data["error"].startswith("ROLLBACK_FAILED: manual intervention required"), data
        assert "; last rollback: SERVICE_START_FAILED: device-api.service" in data["error"], data
        assert rig.unit_props()["ActiveState"] == "failed"
        # Nothing runs; the links name the factory it tried last, and everything is kept
        # for the engineer: the failed snapshot and the package.
        assert rig.links() == {"current": "v1.0.0", "previous": "v1.0.0", "factory": "v1.0.0"}
        assert rig.listing() == [
            "current", "factory", "previous", "v1.0.0", "v1.1.0", "v1.2.0",
        ]  # fmt: skip
        assert len(list(rig.config.downloads_dir.iterdir())) == 1
    else:
        assert data["error"].startswith("ROLLBACK_LEVEL_2_SUCCESS: v1.0.0"), data
        assert rig.running_version() == "1.0.0"
        assert rig.links() == {"current": "v1.0.0", "previous": "v1.0.0", "factory": "v1.0.0"}
        assert_versions(data, "1.0.0", "1.0.0")
        # v1.1.0 failed to start and no link names it any more: collected as garbage.
        assert rig.listing() == ["current", "factory", "previous", "v1.0.0"]
        assert not any(rig.config.downloads_dir.iterdir())
    assert rig.leftovers() == []


# ---------------------------------------------------------------- 5. SIGTERM ignored


async def test_service_ignoring_sigterm_is_killed_after_the_stop_timeout(
    tmp_path: Path, systemd_sandbox: SystemdSandbox, package_server: PackageServer
) -> None:
    rig = Rig(tmp_path, systemd_sandbox, package_server, stop_timeout_s=1.5)
    rig.flags.mkdir()
    rig.flag("ignore-term")  # every version traps TERM, from the first start on
    rig.setup()
    async with start(rig) as u:
        timeline = Timeline(u.engine)
        data = await install(u, rig, "1.1.0", rig.package("1.1.0"))
        await timeline.close()
    assert data["stage"] == "success", data
    assert rig.running_version() == "1.1.0"
    switching = timeline.first(State.HEALTH_CHECK) - timeline.first(State.SWITCHING)
    # Graceful stop is waited out (1.5 s), then SIGKILL; the start adds ~0.3 s of confirming.
    assert 1.5 <= switching < 5.0, (switching, timeline.events)
    assert rig.links() == {"current": "v1.1.0", "previous": "v1.0.0", "factory": "v1.0.0"}


# ---------------------------------------------------------------- 6. post_cmds


async def test_failing_post_cmd_rolls_back(rig: Rig) -> None:
    marker = rig.tmp / "post-cmd-ran"
    post = [f"touch {marker}", "echo 'migration failed' >&2; exit 3"]
    async with start(rig) as u:
        data = await install(u, rig, "1.1.0", rig.package("1.1.0", post_cmds=post))
    assert marker.exists()
    assert data["stage"] == "failed", data
    assert data["error"].startswith("ROLLBACK_LEVEL_1_SUCCESS: v1.0.0"), data
    assert "POST_CMD_FAILED" in data["error"] and "migration failed" in data["error"], data
    assert rig.running_version() == "1.0.0"
    assert rig.links() == {"current": "v1.0.0", "previous": "v1.0.0", "factory": "v1.0.0"}
    assert_versions(data, "1.0.0", "1.0.0")
    assert rig.listing() == ["current", "factory", "previous", "v1.0.0"]
    assert rig.leftovers() == []


# ---------------------------------------------------------------- 7. hostile packages

HOSTILE = (
    "traversal_entry",
    "absolute_entry",
    "symlink_entry",
    "zip_bomb_ratio",
    "missing_src",
    "malformed_json",
    "version_mismatch",
)


async def test_hostile_packages_change_nothing_and_never_stop_the_service(rig: Rig) -> None:
    listing, links = rig.listing(), rig.links()
    props = rig.unit_props()
    assert rig.running_version() == "1.0.0"
    async with start(rig) as u:
        for name in HOSTILE:
            case = HOSTILE_CASES[name]
            pkg = case.build(rig.tmp / f"{name}.zip", "1.1.0")
            data = await attempt(u, rig, "1.1.0", pkg)
            assert data["stage"] == "failed" and data["state"] == "failed", (name, data)
            assert data["error"].startswith(f"{case.code}: "), (name, data)
            assert case.expect in data["error"], (name, data)
            assert data["rollback_level"] == 0, (name, data)  # no rollback needed
            assert_versions(data, "1.0.0", None)
            assert rig.listing() == listing, name
            assert rig.links() == links, name
            assert rig.leftovers() == [], name
            assert not any(rig.config.downloads_dir.iterdir()), name
    # The very same process ran throughout: never stopped, never restarted.
    assert rig.unit_props() == props
    assert rig.running_version() == "1.0.0"
    assert not Path("/etc/evil").exists()


# ---------------------------------------------------------------- 8. manual rollback


@pytest.mark.parametrize("target", ["previous", "factory"])
async def test_manual_rollback_after_success(rig: Rig, target: str) -> None:
    async with start(rig) as u:
        await install(u, rig, "1.1.0", rig.package("1.1.0"))
        assert rig.running_version() == "1.1.0"
        # No units named: the units of the last install are restarted.
        decision = await u.engine.submit(ev.RollbackRequested(target, u.engine.links))
        assert decision.accepted, decision.reply
        assert decision.record.state is State[f"ROLLBACK_{target.upper()}"]
        data = await wait_for(u.engine, State.IDLE, State.FAILED)
        await u.runner.idle()
    assert data["stage"] == "idle" and data["state"] == "idle", data
    assert data["error"] is None, data
    assert data["rollback_level"] == (1 if target == "previous" else 2), data
    assert data["message"] == "Rolled back to v1.0.0", data
    assert_versions(data, "1.0.0", "1.1.0")
    assert rig.links() == {"current": "v1.0.0", "previous": "v1.1.0", "factory": "v1.0.0"}
    assert rig.running_version() == "1.0.0"
    assert rig.listing() == ["current", "factory", "previous", "v1.0.0", "v1.1.0"]
    assert rig.leftovers() == []


# ---------------------------------------------------------------- 9. restart mid-install


async def test_restart_during_health_check_resumes_and_succeeds(rig: Rig) -> None:
    probe_runs = rig.tmp / "probe-runs"
    # A slow probe holds the health check open long enough to stop the updater in it.
    probe = {"command": f"echo run >> {probe_runs}; sleep 1.5", "timeout_s": 5}
    async with start(rig) as u:
        await download(u, rig, "1.1.0", rig.package("1.1.0", health=probe))
        await u.engine.submit(ev.UpdateRequested("1.1.0"))
        await wait_for(u.engine, State.HEALTH_CHECK)
        deadline = time.monotonic() + 5
        while not probe_runs.exists():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    # The updater is gone mid-check; the new version keeps running.
    assert rig.links() == {"current": "v1.1.0", "previous": "v1.0.0", "factory": "v1.0.0"}
    assert rig.running_version() == "1.1.0"
    async with start(rig) as u:
        assert u.engine.snapshot.state is State.HEALTH_CHECK
        data = await wait_for(u.engine, *TERMINAL)
        await u.runner.idle()
    assert data["stage"] == "success", data
    assert_versions(data, "1.1.0", "1.0.0")
    assert probe_runs.read_text() == "run\nrun\n"  # the check ran again, whole
    assert rig.running_version() == "1.1.0"
    assert rig.listing() == ["current", "factory", "previous", "v1.0.0", "v1.1.0"]
    assert rig.leftovers() == []
    assert not any(rig.config.downloads_dir.iterdir())


async def test_restart_while_stopping_a_stubborn_service_resumes_the_switch(
    tmp_path: Path, systemd_sandbox: SystemdSandbox, package_server: PackageServer
) -> None:
    rig = Rig(tmp_path, systemd_sandbox, package_server, stop_timeout_s=1.5)
    rig.flags.mkdir()
    rig.flag("ignore-term")  # the stop takes 1.5 s: time to pull the plug mid-switch
    rig.setup()
    async with start(rig) as u:
        await download(u, rig, "1.1.0", rig.package("1.1.0"))
        await u.engine.submit(ev.UpdateRequested("1.1.0"))
        await wait_for(u.engine, State.SWITCHING)
        await asyncio.sleep(0.5)
    assert rig.links()["current"] == "v1.0.0"  # stopped before the links moved
    async with start(rig) as u:
        assert u.engine.snapshot.state is State.SWITCHING
        data = await wait_for(u.engine, *TERMINAL)
        await u.runner.idle()
    assert data["stage"] == "success", data
    assert_versions(data, "1.1.0", "1.0.0")
    assert rig.links() == {"current": "v1.1.0", "previous": "v1.0.0", "factory": "v1.0.0"}
    assert rig.running_version() == "1.1.0"
    assert rig.leftovers() == []


async def test_restart_after_the_links_switched_while_the_unit_starts(rig: Rig) -> None:
    rig.flag("slow-start")  # ExecStartPre holds the start 1.5 s: pull the plug inside it
    async with start(rig) as u:
        await download(u, rig, "1.1.0", rig.package("1.1.0"))
        await u.engine.submit(ev.UpdateRequested("1.1.0"))
        await wait_for(u.engine, State.SWITCHING)
        deadline = time.monotonic() + 5
        while rig.unit_props()["ActiveState"] != "activating":
            assert time.monotonic() < deadline, rig.unit_props()
            await asyncio.sleep(0.05)
        assert u.engine.snapshot.state is State.SWITCHING
    assert rig.links() == {"current": "v1.1.0", "previous": "v1.0.0", "factory": "v1.0.0"}
    (rig.flags / "slow-start").unlink()
    async with start(rig) as u:
        assert u.engine.snapshot.state is State.SWITCHING
        data = await wait_for(u.engine, *TERMINAL)
        await u.runner.idle()
    assert data["stage"] == "success", data
    assert_versions(data, "1.1.0", "1.0.0")
    assert rig.links() == {"current": "v1.1.0", "previous": "v1.0.0", "factory": "v1.0.0"}
    assert rig.running_version() == "1.1.0"
    assert rig.leftovers() == []


async def test_restart_during_rollback_completes_it(
    tmp_path: Path, systemd_sandbox: SystemdSandbox, package_server: PackageServer
) -> None:
    rig = Rig(tmp_path, systemd_sandbox, package_server)
    rig.setup(restart=True)
    async with start(rig) as u:
        await download(u, rig, "1.1.0", rig.package("1.1.0", broken_script("1.1.0", 0.8)))
        await u.engine.submit(ev.UpdateRequested("1.1.0"))
        await wait_for(u.engine, State.ROLLBACK_PREVIOUS)
        await asyncio.sleep(0.4)  # inside the rollback's own health check
        assert u.engine.snapshot.state is State.ROLLBACK_PREVIOUS
    async with start(rig) as u:
        assert u.engine.snapshot.state is State.ROLLBACK_PREVIOUS
        data = await wait_for(u.engine, *TERMINAL)
        await u.runner.idle()
    assert data["stage"] == "failed", data
    assert data["error"].startswith("ROLLBACK_LEVEL_1_SUCCESS: v1.0.0"), data
    assert "HEALTH_CHECK_FAILED: device-api.service" in data["error"], data
    assert rig.links() == {"current": "v1.0.0", "previous": "v1.0.0", "factory": "v1.0.0"}
    assert rig.running_version() == "1.0.0"
    assert rig.listing() == ["current", "factory", "previous", "v1.0.0"]
    assert rig.leftovers() == []
    assert not any(rig.config.downloads_dir.iterdir())


# ---------------------------------------------------------------- restart_order


async def test_units_stop_in_descending_and_start_in_ascending_restart_order(
    tmp_path: Path, systemd_sandbox: SystemdSandbox, package_server: PackageServer
) -> None:
    rig = Rig(tmp_path, systemd_sandbox, package_server)
    rig.setup(extra={f"bin/{n}": order_script(n, "1.0.0") for n in ("svc-a", "svc-b")})
    rig.add_unit("svc-a", "bin/svc-a")
    rig.add_unit("svc-b", "bin/svc-b")
    pkg = make_package(
        tmp_path / "multi.zip",
        "1.1.0",
        {
            "bin/device-api": (good_script("1.1.0"), 0o755),
            "bin/svc-a": (order_script("svc-a", "1.1.0"), 0o755),
            "bin/svc-b": (order_script("svc-b", "1.1.0"), 0o755),
        },
        root=rig.root,
        module_overrides={
            "bin/device-api": {"process_name": "device-api", "restart_order": 3},
            "bin/svc-a": {"process_name": "svc-a", "restart_order": 2},
            "bin/svc-b": {"process_name": "svc-b.service", "restart_order": 1},
        },
    )
    async with start(rig) as u:
        data = await install(u, rig, "1.1.0", pkg)
    assert data["stage"] == "success", data
    assert rig.running_version() == "1.1.0"
    assert (tmp_path / "order.log").read_text().splitlines() == [
        "start svc-a 1.0.0",
        "start svc-b 1.0.0",
        "stop svc-a 1.0.0",  # descending restart_order: 2 before 1
        "stop svc-b 1.0.0",
        "start svc-b 1.1.0",  # ascending: 1 before 2
        "start svc-a 1.1.0",
    ]


# ---------------------------------------------------------------- probes belong to a version


async def test_failing_probe_of_the_new_version_rolls_back_to_level_1(rig: Rig) -> None:
    """The new version ships a self-test its own probe runs; the old version has none.

    The rollback must judge the old version by its units (and not by the failed version's
    probe, which cannot pass on a version that does not ship the probe's program).
    """
    selftest = f"{rig.versions}/current/bin/selftest"
    failing = b"#!/bin/sh\necho 'self-test: db schema too new' >&2\nexit 1\n"
    pkg = make_package(
        rig.tmp / "probe.zip",
        "1.1.0",
        {
            "bin/device-api": (good_script("1.1.0"), 0o755),
            "bin/selftest": (failing, 0o755),
        },
        root=rig.root,
        module_overrides={
            "bin/device-api": {
                "process_name": "device-api",
                "health": {"command": selftest, "timeout_s": 2},
            }
        },
    )
    async with start(rig) as u:
        data = await install(u, rig, "1.1.0", pkg)
    assert data["stage"] == "failed", data
    assert data["error"].startswith("ROLLBACK_LEVEL_1_SUCCESS: v1.0.0"), data
    assert "HEALTH_CHECK_FAILED: device-api.service: command probe" in data["error"], data
    assert "db schema too new" in data["error"], data
    assert rig.running_version() == "1.0.0"
    assert rig.links() == {"current": "v1.0.0", "previous": "v1.0.0", "factory": "v1.0.0"}
    assert rig.listing() == ["current", "factory", "previous", "v1.0.0"]
    assert rig.leftovers() == []


async def test_unit_unknown_to_systemd_fails_the_install_but_not_the_rollback(rig: Rig) -> None:
    """A package names a service whose unit file is not installed: the start fails, and
    going back to the version that never had that service must still succeed."""
    pkg = make_package(
        rig.tmp / "ghost.zip",
        "1.1.0",
        {
            "bin/device-api": (good_script("1.1.0"), 0o755),
            "bin/ghost": (b"#!/bin/sh\nexec sleep 600\n", 0o755),
        },
        root=rig.root,
        module_overrides={
            "bin/device-api": {"process_name": "device-api"},
            "bin/ghost": {"process_name": "ghost", "restart_order": 5},
        },
    )
    async with start(rig) as u:
        data = await install(u, rig, "1.1.0", pkg)
    assert data["stage"] == "failed", data
    assert data["error"].startswith("ROLLBACK_LEVEL_1_SUCCESS: v1.0.0"), data
    assert "SERVICE_START_FAILED: ghost.service" in data["error"], data
    assert rig.running_version() == "1.0.0"
    assert rig.links() == {"current": "v1.0.0", "previous": "v1.0.0", "factory": "v1.0.0"}
    assert rig.listing() == ["current", "factory", "previous", "v1.0.0"]
    assert rig.leftovers() == []
