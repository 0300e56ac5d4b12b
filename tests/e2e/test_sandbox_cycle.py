"""A full OTA cycle on a sandbox root without systemd (``service_control = "none"``).

Real package ZIPs served by a real HTTP server, real files and symlinks; health is judged
by the manifest's command probes, which is what the quick start and the demo rely on.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from http_shell.api.app import create_app
from http_shell.daemon.assembly import running_updater
from tests.support.package_server import PackageServer
from tests.support.packages import make_package
from updater_fsm.config import Config
from updater_fsm.core import events as ev
from updater_fsm.core.table import State
from updater_fsm.engine import Engine
from updater_fsm.ops import snapshot_staging, snapshot_store
from updater_fsm.ops.verify import hash_file

API = "/api/v1.0"


async def wait_for(engine: Engine, *states: State, timeout: float = 20.0) -> None:
    async def poll() -> None:
        while engine.snapshot.state not in states:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


def sandbox(tmp_path: Path) -> Config:
    root = tmp_path / "root"
    snapshot_store.init_layout(root, "1.0.0")
    return Config(root=root, state_dir=tmp_path / "state", service_control="none", settle_s=0.1)


async def request_for(server: PackageServer, path: Path, version: str) -> ev.DownloadRequest:
    data = path.read_bytes()
    url = server.add(path.name, data)
    digests = await hash_file(path)
    return ev.DownloadRequest(version, url, path.name, len(data), digests.md5, digests.sha256)


async def install_over_http(
    client: Any, server: PackageServer, package: Path, version: str, u: Any
) -> dict[str, Any]:
    """As device-api does: POST /download, then /update once verified; the final /progress."""
    req = await request_for(server, package, version)
    body = {k: v for k, v in attrs.asdict(req).items() if v is not None}
    assert (await (await client.post(f"{API}/download", json=body)).json())["code"] == 200
    await wait_for(u.engine, State.READY, State.FAILED)
    update = await client.post(f"{API}/update", json={"version": version})
    assert (await update.json())["code"] == 200
    await wait_for(u.engine, State.SUCCESS, State.FAILED)
    await u.runner.idle()
    envelope: dict[str, Any] = await (await client.get(f"{API}/progress")).json()
    return envelope


def hello_package(tmp_path: Path, root: Path, version: str, script: bytes) -> Path:
    """A package whose ``bin/hello`` is ``script``; the unit's probe runs the current one."""
    return make_package(
        tmp_path / f"hello-{version}.zip",
        version,
        {"bin/hello": (script, 0o755)},
        root=root,
        process_name="hello",
        health={"command": f"{root}/versions/current/bin/hello"},
    )


async def test_update_then_broken_update_rolls_back(
    tmp_path: Path, package_server: PackageServer
) -> None:
    config = sandbox(tmp_path)
    root = config.root
    good = hello_package(tmp_path, root, "1.1.0", b"#!/bin/sh\necho hello 1.1.0\n")
    bad = hello_package(tmp_path, root, "1.2.0", b"#!/bin/sh\nexit 1\n")
    async with running_updater(config, report=False) as u:
        engine = u.engine
        d = await engine.submit(
            ev.DownloadRequested(await request_for(package_server, good, "1.1.0"))
        )
        assert d.accepted
        await wait_for(engine, State.READY, State.FAILED)
        assert engine.snapshot.data()["stage"] == "toInstall", engine.snapshot
        d = await engine.submit(ev.UpdateRequested("1.1.0"))
        assert d.accepted
        await wait_for(engine, State.SUCCESS, State.FAILED)
        await u.runner.idle()  # SUCCESS is journaled before its effects (DiscardPackage) run
        snap = engine.snapshot.data()
        assert snap["stage"] == "success", snap
        assert os.readlink(root / "versions/current") == "v1.1.0"
        assert os.readlink(root / "versions/previous") == "v1.0.0"
        assert (root / "versions/current/bin/hello").stat().st_mode & 0o111
        assert not any(config.downloads_dir.iterdir())

        await engine.submit(ev.DownloadRequested(await request_for(package_server, bad, "1.2.0")))
        await wait_for(engine, State.READY, State.FAILED)
        await engine.submit(ev.UpdateRequested("1.2.0"))
        await wait_for(engine, State.FAILED)
        await u.runner.idle()
        snap = engine.snapshot.data()
        assert snap["error"].startswith("ROLLBACK_LEVEL_1_SUCCESS: v1.1.0"), snap
        assert snap["current_version"] == "1.1.0" and snap["previous_version"] == "1.0.0"
        assert not (root / "versions/v1.2.0").exists()
        assert sorted(p.name for p in (root / "versions").iterdir()) == [
            "current",
            "factory",
            "previous",
            "v1.0.0",
            "v1.1.0",
        ]

    # A restart reports the finished outcome again and keeps it.
    async with running_updater(config, report=False) as u:
        assert u.engine.snapshot.state is State.FAILED
        assert u.engine.snapshot.data()["error"].startswith("ROLLBACK_LEVEL_1_SUCCESS")


async def test_downgrade_refused_over_http_when_configured(
    tmp_path: Path, package_server: PackageServer, aiohttp_client: Any
) -> None:
    """``allow_downgrade = false``: an older package downloads and verifies, but the install
    fails with DOWNGRADE_REFUSED before anything is stopped, staged or switched."""
    config = attrs.evolve(sandbox(tmp_path), allow_downgrade=False)
    root = config.root
    for version in ("1.2.0", "1.1.0"):
        make_package(tmp_path / f"{version}.zip", version, {"bin/v": version.encode()}, root=root)
    async with running_updater(config, report=False) as u:
        client = await aiohttp_client(create_app(config, u.engine))

        async def install(version: str) -> dict[str, Any]:
            package = tmp_path / f"{version}.zip"
            return await install_over_http(client, package_server, package, version, u)

        assert (await install("1.2.0"))["data"]["stage"] == "success"
        listing = sorted(p.name for p in (root / "versions").iterdir())
        envelope = await install("1.1.0")
    assert envelope["code"] == 500, envelope
    assert envelope["msg"] == (
        "Update failed: DOWNGRADE_REFUSED: v1.1.0 is older than the running v1.2.0"
        " (allow_downgrade is off)"
    )
    assert envelope["data"]["rollback_level"] == 0
    assert envelope["data"]["current_version"] == "1.2.0"
    assert sorted(p.name for p in (root / "versions").iterdir()) == listing
    assert not any(config.downloads_dir.iterdir())  # the refused package is gone too


async def test_a_factory_rollback_does_not_reopen_old_releases(
    tmp_path: Path, package_server: PackageServer, aiohttp_client: Any
) -> None:
    """The rollback floor: after 1.2.0 ran, a rollback to factory (1.0.0) does not let an
    older release (1.0.5) in again, across a restart; 1.2.0 itself, and a manual rollback,
    still work (before: 1.0.5 installed once the device ran 1.0.0)."""
    config = attrs.evolve(sandbox(tmp_path), allow_downgrade=False)
    root = config.root
    for version in ("1.2.0", "1.0.5"):
        make_package(tmp_path / f"{version}.zip", version, {"bin/v": version.encode()}, root=root)

    async def install(client: Any, u: Any, version: str) -> dict[str, Any]:
        package = tmp_path / f"{version}.zip"
        return await install_over_http(client, package_server, package, version, u)

    async with running_updater(config, report=False) as u:
        client = await aiohttp_client(create_app(config, u.engine))
        versions = await (await client.get(f"{API}/versions")).json()
        assert versions["data"]["rollback_floor"] == "1.0.0"  # started from what runs
        assert (await install(client, u, "1.2.0"))["data"]["stage"] == "success"
        env = await (await client.post(f"{API}/rollback", json={"target": "factory"})).json()
        assert env["code"] == 200, env
        await wait_for(u.engine, State.IDLE)
        await u.runner.idle()
        assert os.readlink(root / "versions/current") == "v1.0.0"
        versions = await (await client.get(f"{API}/versions")).json()
        assert versions["data"]["rollback_floor"] == "1.2.0", versions
    async with running_updater(config, report=False) as u:  # a restart keeps it
        client = await aiohttp_client(create_app(config, u.engine))
        envelope = await install(client, u, "1.0.5")
        assert envelope["msg"] == (
            "Update failed: DOWNGRADE_REFUSED: 1.0.5 is below 1.2.0, the highest version"
            " this device has run"
        ), envelope
        assert envelope["data"]["current_version"] == "1.0.0"
        assert envelope["data"]["rollback_level"] == 0
        assert (await install(client, u, "1.2.0"))["data"]["stage"] == "success"


async def test_signing_keys_rotate_old_then_both_then_new_only(
    tmp_path: Path, package_server: PackageServer, aiohttp_client: Any
) -> None:
    """The rotation procedure of docs/DEPLOYMENT.md, step by step over the HTTP API: a
    device trusting the old key; a release that adds the new key (both trusted) installs a
    package signed by the new key; a release that drops the old key refuses a package
    signed by it (SIGNATURE_INVALID) and installs one signed by the new key."""
    from updater_fsm.package.builder import generate_keypair, sign_file

    keys = tmp_path / "keys"
    keys.mkdir()
    generate_keypair(keys / "old.key", keys / "old.pem")
    generate_keypair(keys / "new.key", keys / "new.pem")
    base = sandbox(tmp_path)
    root = base.root
    for version in ("1.1.0", "1.2.0", "1.3.0"):
        make_package(tmp_path / f"{version}.zip", version, {"bin/v": version.encode()}, root=root)

    async def install(config: Config, version: str, signed_by: str) -> dict[str, Any]:
        package = tmp_path / f"{version}.zip"
        async with running_updater(config, report=False) as u:
            client = await aiohttp_client(create_app(config, u.engine))
            req = attrs.evolve(
                await request_for(package_server, package, version),
                package_signature=sign_file(package, keys / f"{signed_by}.key"),
            )
            body = {k: v for k, v in attrs.asdict(req).items() if v is not None}
            assert (await (await client.post(f"{API}/download", json=body)).json())["code"] == 200
            await wait_for(u.engine, State.READY, State.FAILED)
            if u.engine.snapshot.state is State.READY:
                await client.post(f"{API}/update", json={"version": version})
                await wait_for(u.engine, State.SUCCESS, State.FAILED)
            await u.runner.idle()
            return dict(u.engine.snapshot.data())

    old_only = attrs.evolve(base, trusted_key=(str(keys / "old.pem"),))
    both = attrs.evolve(base, trusted_key=(str(keys / "old.pem"), str(keys / "new.pem")))
    new_only = attrs.evolve(base, trusted_key=(str(keys / "new.pem"),))
    assert (await install(old_only, "1.1.0", "old"))["stage"] == "success"
    refused = await install(old_only, "1.2.0", "new")  # the new key is not trusted yet
    assert refused["error"].startswith("SIGNATURE_INVALID: signature of 1.2.0.zip"), refused
    assert (await install(both, "1.2.0", "new"))["stage"] == "success"
    refused = await install(new_only, "1.3.0", "old")
    assert refused["error"] == "SIGNATURE_INVALID: signature of 1.3.0.zip does not match the key"
    assert refused["current_version"] == "1.2.0"
    assert (await install(new_only, "1.3.0", "new"))["stage"] == "success"
    assert os.readlink(root / "versions/current") == "v1.3.0"


async def _verify_only(
    config: Config, server: PackageServer, package: Path, version: str
) -> dict[str, Any]:
    """Download ``package`` asking for ``version``; the snapshot once verified or failed."""
    async with running_updater(config, report=False) as u:
        await u.engine.submit(ev.DownloadRequested(await request_for(server, package, version)))
        await wait_for(u.engine, State.READY, State.FAILED)
        await u.runner.idle()
        return dict(u.engine.snapshot.data())


async def test_what_a_package_holds_is_judged_at_verify_not_at_the_install(
    tmp_path: Path, package_server: PackageServer
) -> None:
    """Known once downloaded, refused before "ready to install" (before: "verified, ready
    to install", then failed only at POST /update): a package of another version than the
    one asked for, one whose dst lies outside the device's root (built without --root)."""
    config = sandbox(tmp_path)
    other = make_package(tmp_path / "a.zip", "1.1.0", {"bin/v": b"1"}, root=config.root)
    snap = await _verify_only(config, package_server, other, "1.2.0")
    assert snap["state"] == "failed" and snap["stage"] == "failed", snap
    assert snap["error"] == "VERSION_MISMATCH: package is 1.1.0, requested 1.2.0", snap
    outside = make_package(tmp_path / "b.zip", "1.1.0", {"bin/v": b"1"}, root=Path("/opt/tope"))
    snap = await _verify_only(config, package_server, outside, "1.1.0")
    assert snap["error"].startswith("INVALID_MANIFEST: modules[0].dst: "), snap
    assert not any(config.downloads_dir.iterdir())  # refused packages are deleted
    assert sorted(p.name for p in (config.root / "versions").iterdir()) == [
        "current",
        "factory",
        "v1.0.0",
    ]


async def test_a_package_for_another_model_is_refused_at_verify(
    tmp_path: Path, package_server: PackageServer
) -> None:
    """``compatible``: a device naming its model refuses a package for another model, and
    one naming none unless ``allow_incompatible``; the device's own model installs."""
    config = attrs.evolve(sandbox(tmp_path), compatible="tope-x1")
    root = config.root

    def package(name: str, model: str | None) -> Path:
        extra = {"compatible": model} if model else None
        return make_package(
            tmp_path / name, "1.1.0", {"bin/v": b"1"}, root=root, manifest_extra=extra
        )

    snap = await _verify_only(config, package_server, package("x2.zip", "tope-x2"), "1.1.0")
    assert snap["error"] == "INCOMPATIBLE_DEVICE: package is for tope-x2, this device is tope-x1"
    assert snap["current_version"] == "1.0.0"
    snap = await _verify_only(config, package_server, package("none.zip", None), "1.1.0")
    assert snap["error"].startswith("INCOMPATIBLE_DEVICE: package names no device model"), snap
    migrating = attrs.evolve(config, allow_incompatible=True)
    snap = await _verify_only(migrating, package_server, package("none2.zip", None), "1.1.0")
    assert snap["state"] == "ready", snap
    snap = await _verify_only(config, package_server, package("x1.zip", "tope-x1"), "1.1.0")
    assert snap["state"] == "ready", snap
    async with running_updater(config, report=False) as u:
        await u.engine.submit(ev.UpdateRequested("1.1.0"))
        await wait_for(u.engine, State.SUCCESS, State.FAILED)
        assert u.engine.snapshot.data()["stage"] == "success"


async def test_rollback_target_failing_its_own_probe_escalates_to_factory(
    tmp_path: Path, package_server: PackageServer
) -> None:
    """1.1.0 was installed with a self-test probe. By the time 1.2.0 fails, 1.1.0 would fail
    its own self-test too (here: its marker is gone): level 1 must not be called a success;
    the ladder goes on to the factory version."""
    config = sandbox(tmp_path)
    root, marker = config.root, tmp_path / "healthy-1.1.0"
    marker.touch()
    good = hello_package(tmp_path, root, "1.1.0", f'#!/bin/sh\ntest -e "{marker}"\n'.encode())
    bad = hello_package(tmp_path, root, "1.2.0", b"#!/bin/sh\nexit 1\n")
    async with running_updater(config, report=False) as u:
        engine = u.engine
        for path, version in ((good, "1.1.0"), (bad, "1.2.0")):
            if version == "1.2.0":
                marker.unlink()
            req = await request_for(package_server, path, version)
            assert (await engine.submit(ev.DownloadRequested(req))).accepted
            await wait_for(engine, State.READY, State.FAILED)
            assert (await engine.submit(ev.UpdateRequested(version))).accepted
            await wait_for(engine, State.SUCCESS, State.FAILED)
            await u.runner.idle()
        snap = engine.snapshot.data()
    assert snap["error"].startswith("ROLLBACK_LEVEL_2_SUCCESS: v1.0.0"), snap
    assert "; level 1: HEALTH_CHECK_FAILED: hello.service: exit 1)" in snap["error"], snap
    assert snap["rollback_level"] == 2
    assert os.readlink(root / "versions/current") == "v1.0.0"


async def test_cancel_while_staging_leaves_no_snapshot_or_staging_behind(
    tmp_path: Path, package_server: PackageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel cannot interrupt the staging thread mid-copy; it must wait for it and then
    remove whatever it built — a half-built ``.staging`` or a finished, unlinked snapshot."""
    config = sandbox(tmp_path)
    root = config.root
    real_stage, real_discard = snapshot_staging.stage_snapshot, snapshot_staging.discard_staging
    staged, stage_over = threading.Event(), threading.Event()
    discarded_while_staging: list[bool] = []

    def slow_stage(*args: Any, **kwargs: Any) -> Path:
        try:
            built = real_stage(*args, **kwargs)
            staged.set()
            time.sleep(0.5)  # the tail of a long copy: the cancel arrives meanwhile
            return built
        finally:
            stage_over.set()

    def watched_discard(*args: Any, **kwargs: Any) -> None:
        discarded_while_staging.append(not stage_over.is_set())
        real_discard(*args, **kwargs)

    monkeypatch.setattr(snapshot_staging, "stage_snapshot", slow_stage)
    monkeypatch.setattr(snapshot_staging, "discard_staging", watched_discard)
    pkg = make_package(tmp_path / "p.zip", "1.1.0", {"bin/v": b"1.1.0"}, root=root)
    async with running_updater(config, report=False) as u:
        engine = u.engine
        req = await request_for(package_server, pkg, "1.1.0")
        assert (await engine.submit(ev.DownloadRequested(req))).accepted
        await wait_for(engine, State.READY)
        assert (await engine.submit(ev.UpdateRequested("1.1.0"))).accepted
        await asyncio.to_thread(staged.wait, 10)
        assert (await engine.submit(ev.Cancel())).accepted
        await u.runner.idle()
        assert engine.snapshot.state is State.IDLE
        assert engine.snapshot.data()["error"].startswith("CANCELLED"), engine.snapshot
    assert sorted(p.name for p in (root / "versions").iterdir()) == [
        "current",
        "factory",
        "v1.0.0",
    ]
    assert os.readlink(root / "versions/current") == "v1.0.0"
    assert not any(config.downloads_dir.iterdir())
    assert discarded_while_staging == [False]  # the clean-up waited for the thread


async def test_extra_root_dst_escaping_through_a_symlink_fails_the_stage_not_the_switch(
    tmp_path: Path, package_server: PackageServer
) -> None:
    """A dst under an extra root whose directory is a symlink out of it: the install must
    fail while staging (nothing stopped, no rollback), not at the switch after the units
    were stopped; nothing is written outside and the running version stays."""
    extra, elsewhere = tmp_path / "etc-tope", tmp_path / "elsewhere"
    extra.mkdir()
    elsewhere.mkdir()
    (extra / "conf.d").symlink_to(elsewhere)
    config = attrs.evolve(sandbox(tmp_path), extra_roots=(extra,))
    root = config.root
    package = make_package(
        tmp_path / "escape.zip",
        "1.1.0",
        {"bin/hello": (b"#!/bin/sh\n", 0o755), f"{extra}/conf.d/hello.conf": b"x=1\n"},
        root=root,
        process_name="hello",
    )
    versions_before = sorted(p.name for p in (root / "versions").iterdir())
    async with running_updater(config, report=False) as u:
        engine = u.engine
        seen: list[State] = []
        subscription = engine.subscribe()

        async def watch() -> None:
            async for snapshot in subscription:
                seen.append(snapshot.state)

        watcher = asyncio.create_task(watch())
        req = await request_for(package_server, package, "1.1.0")
        assert (await engine.submit(ev.DownloadRequested(req))).accepted
        await wait_for(engine, State.READY, State.FAILED)
        assert (await engine.submit(ev.UpdateRequested("1.1.0"))).accepted
        await wait_for(engine, State.SUCCESS, State.FAILED)
        await u.runner.idle()
        snap = engine.snapshot.data()
        await asyncio.sleep(0.05)
        watcher.cancel()
    assert snap["error"] == (
        f"INVALID_MANIFEST: modules[1].dst: {extra}/conf.d resolves to {elsewhere},"
        f" outside the extra roots ({extra})"
    ), snap
    assert snap["rollback_level"] == 0
    assert State.DEPLOYING in seen and State.SWITCHING not in seen, seen
    assert os.readlink(root / "versions/current") == "v1.0.0"
    assert sorted(p.name for p in (root / "versions").iterdir()) == versions_before
    assert list(elsewhere.iterdir()) == []
    assert not config.backups_dir.exists() or not any(config.backups_dir.iterdir())
