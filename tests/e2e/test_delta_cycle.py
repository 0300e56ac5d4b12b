"""Delta packages end to end: built by our builder, served over HTTP, installed over the API.

Sandbox roots without systemd (``service_control = "none"``), as in test_sandbox_cycle.py:
a full 1.1.0 is installed, then the delta 1.1.0 → 1.2.0; its snapshot must equal what the
full 1.2.0 gives (less the files the delta removes, which a full package cannot remove).
A delta on the wrong base fails with DELTA_BASE_MISMATCH and touches nothing.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from http_shell.api.app import create_app
from http_shell.daemon.assembly import running_updater
from tests.e2e.test_sandbox_cycle import install_over_http, sandbox
from tests.support.package_server import PackageServer
from updater_fsm.config import Config
from updater_fsm.package.builder import build_package

V1 = {
    "bin/app": b"#!/bin/sh\necho 1.1.0\n",
    "lib/core.py": b"".join(b"def f%d(x):\n    return x * %d\n" % (i, i) for i in range(4000)),
    "lib/same.py": b"print('unchanged')\n" * 100,
    "lib/gone.py": b"removed in 1.2.0\n",
}
V2 = {
    "bin/app": b"#!/bin/sh\necho 1.2.0\n",
    "lib/core.py": V1["lib/core.py"].replace(b"return x * 7\n", b"return x * 7 + 1\n"),
    "lib/same.py": V1["lib/same.py"],
    "lib/new.py": b"print('new in 1.2.0')\n",
}


def _tree(path: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
        (path / rel).chmod(0o755 if rel.startswith("bin/") else 0o644)
    return path


def _files(snapshot: Path) -> dict[str, tuple[int, bytes]]:
    return {
        p.relative_to(snapshot).as_posix(): (stat.S_IMODE(p.stat().st_mode), p.read_bytes())
        for p in sorted(snapshot.rglob("*"))
        if p.is_file()
    }


async def _install(
    config: Config, server: PackageServer, client_factory: Any, pkg: Path, version: str, u: Any
) -> dict[str, Any]:
    client = await client_factory(create_app(config, u.engine))
    return await install_over_http(client, server, pkg, version, u)


async def test_delta_installs_the_same_tree_as_the_full_package(
    tmp_path: Path, package_server: PackageServer, aiohttp_client: Any
) -> None:
    a = sandbox(tmp_path / "a")
    b = sandbox(tmp_path / "b")
    v1, v2 = _tree(tmp_path / "v1", V1), _tree(tmp_path / "v2", V2)
    full1 = build_package(v1, version="1.1.0", output=tmp_path / "full-1.1.0.zip", root=a.root)
    full2 = build_package(v2, version="1.2.0", output=tmp_path / "full-1.2.0.zip", root=a.root)
    delta = build_package(
        v2,
        version="1.2.0",
        output=tmp_path / "delta-1.2.0.zip",
        root=a.root,
        delta_from=full1.path,
    )
    assert delta.size < full2.size / 3
    # The second device takes the full packages; dst paths name its own root.
    b_full1 = build_package(v1, version="1.1.0", output=tmp_path / "b1.zip", root=b.root)
    b_full2 = build_package(v2, version="1.2.0", output=tmp_path / "b2.zip", root=b.root)

    async with running_updater(a, report=False) as u:
        for pkg, version in ((full1.path, "1.1.0"), (delta.path, "1.2.0")):
            envelope = await _install(a, package_server, aiohttp_client, pkg, version, u)
            assert envelope["data"]["stage"] == "success", envelope
    async with running_updater(b, report=False) as u:
        for pkg, version in ((b_full1.path, "1.1.0"), (b_full2.path, "1.2.0")):
            envelope = await _install(b, package_server, aiohttp_client, pkg, version, u)
            assert envelope["data"]["stage"] == "success", envelope

    assert os.readlink(a.root / "versions/current") == "v1.2.0"
    assert os.readlink(a.root / "versions/previous") == "v1.1.0"
    by_delta = _files(a.root / "versions/current")
    by_full = _files(b.root / "versions/current")
    assert "lib/gone.py" in by_full  # a full package overlays, it never removes
    del by_full["lib/gone.py"]
    assert by_delta == by_full
    assert by_delta["lib/core.py"][1] == V2["lib/core.py"]
    assert _files(a.root / "versions/v1.1.0") == _files(b.root / "versions/v1.1.0")


async def test_delta_on_the_wrong_base_is_refused_and_nothing_is_touched(
    tmp_path: Path, package_server: PackageServer, aiohttp_client: Any
) -> None:
    config = sandbox(tmp_path)  # runs the factory 1.0.0
    v1, v2 = _tree(tmp_path / "v1", V1), _tree(tmp_path / "v2", V2)
    full1 = build_package(v1, version="1.1.0", output=tmp_path / "full.zip", root=config.root)
    delta = build_package(
        v2,
        version="1.2.0",
        output=tmp_path / "delta.zip",
        root=config.root,
        delta_from=full1.path,
    )
    listing = sorted(p.name for p in (config.root / "versions").iterdir())
    async with running_updater(config, report=False) as u:
        envelope = await _install(config, package_server, aiohttp_client, delta.path, "1.2.0", u)
    assert envelope["code"] == 500, envelope
    assert envelope["msg"] == (
        "Update failed: DELTA_BASE_MISMATCH: the delta is against v1.1.0, the device runs v1.0.0"
    )
    assert envelope["data"]["rollback_level"] == 0
    assert envelope["data"]["current_version"] == "1.0.0"
    assert sorted(p.name for p in (config.root / "versions").iterdir()) == listing
    assert not any(config.downloads_dir.iterdir())
