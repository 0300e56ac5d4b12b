"""A package that carries an updater is refused before any service is stopped when the
updater could not switch to it: a bundle for another architecture, or an updater that does
not run from a slot. In process, on a sandbox root (``service_control = "none"``), with
real packages over real HTTP; the systemd cases are in tests/e2e/test_self_update.py."""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

import attrs

from http_shell.daemon.assembly import running_updater
from tests.e2e.test_sandbox_cycle import request_for, sandbox, wait_for
from tests.support.package_server import PackageServer
from tests.support.packages import Entry, make_manifest, write_zip
from updater_fsm.core import events as ev
from updater_fsm.core.table import State

MACHINE = platform.machine()
OTHER_ARCH = "armv7l" if MACHINE != "armv7l" else "aarch64"


def package_with_updater(tmp_path: Path, root: Path, arch: str) -> Path:
    bundle = b"a bundle (refused before it is ever opened)"
    manifest = make_manifest("1.1.0", {"bin/app": b"app 1.1.0"}, root=root)
    manifest["updater"] = {
        "src": "updater/tope-updater-0.2.0.tar.gz",
        "version": "0.2.0",
        "arch": arch,
        "sha256": hashlib.sha256(bundle).hexdigest(),
        "size": len(bundle),
    }
    entries = [
        Entry("modules/bin/app", b"app 1.1.0"),
        Entry("updater/tope-updater-0.2.0.tar.gz", bundle),
    ]
    return write_zip(tmp_path / f"pkg-{arch}.zip", entries, manifest=manifest)


async def test_a_bundle_for_another_arch_fails_before_anything_is_stopped(
    tmp_path: Path, package_server: PackageServer
) -> None:
    config = attrs.evolve(sandbox(tmp_path), updater_prefix=tmp_path / "prefix")
    pkg = package_with_updater(tmp_path, config.root, OTHER_ARCH)
    async with running_updater(config, report=False) as u:
        await u.engine.submit(ev.DownloadRequested(await request_for(package_server, pkg, "1.1.0")))
        await wait_for(u.engine, State.READY, State.FAILED)
        await u.engine.submit(ev.UpdateRequested("1.1.0"))
        await wait_for(u.engine, State.FAILED)
        await u.runner.idle()
        snap = u.engine.snapshot.data()
    assert snap["error"].startswith(
        f"UPDATER_ARCH_MISMATCH: the package's updater 0.2.0 is built for {OTHER_ARCH},"
        f" this device is {MACHINE}"
    ), snap
    assert snap["rollback_level"] == 0 and snap["current_version"] == "1.0.0", snap
    assert os.readlink(config.root / "versions" / "current") == "v1.0.0"
    assert not (config.root / "versions" / "v1.1.0").exists()
    assert not (tmp_path / "prefix").exists()  # no slot, no probation


async def test_an_updater_outside_a_slot_refuses_a_package_that_carries_one(
    tmp_path: Path, package_server: PackageServer
) -> None:
    config = sandbox(tmp_path)  # the test runner's venv: not <prefix>/versions/<version>
    pkg = package_with_updater(tmp_path, config.root, MACHINE)
    async with running_updater(config, report=False) as u:
        await u.engine.submit(ev.DownloadRequested(await request_for(package_server, pkg, "1.1.0")))
        await wait_for(u.engine, State.READY, State.FAILED)
        await u.engine.submit(ev.UpdateRequested("1.1.0"))
        await wait_for(u.engine, State.FAILED)
        await u.runner.idle()
        snap = u.engine.snapshot.data()
    assert snap["error"].startswith("UPDATER_NOT_SLOTTED: the package carries the updater 0.2.0")
    assert snap["current_version"] == "1.0.0" and snap["rollback_level"] == 0, snap
    assert not (config.root / "versions" / "v1.1.0").exists()
